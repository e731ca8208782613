"""rbac.restrictToOwnNode: the rendered ValidatingAdmissionPolicy's CEL, evaluated on admission requests.

No API server can run here, so this plays its part, and only that part: it evaluates the policy's
matchConditions, variables (in order, as `variables.<name>`) and validations exactly as rendered,
with cel-python (a CEL implementation of the spec Kubernetes' cel-go follows), on the
`request`/`object`/`oldObject` a PATCH of nodes/status produces. What the agent's own patch looks
like is taken from nodeguard/events/kube.py's condition, so a change there that the policy would deny
fails here.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest

from nodeguard.events.kube import CONDITION_TYPE, Condition
from tests.support.chart import objects, one

AGENT = "system:serviceaccount:nodeguard:ng-nodeguard"
NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"


def policy() -> dict[str, Any]:
    spec: dict[str, Any] = one(objects({"rbac": {"restrictToOwnNode": True}}), "ValidatingAdmissionPolicy")["spec"]
    return spec


def node(name: str) -> dict[str, Any]:
    """A Node as the kubelet keeps it: the status fields a stolen token would like to change."""
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "7Gi", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"kubeletVersion": "v1.30.2", "machineID": "0123"},
        },
    }


def with_our_condition(obj: dict[str, Any], open_drifts: list[str]) -> dict[str, Any]:
    """`obj` after the agent's strategic-merge patch of its condition (nodeguard/events/kube.py)."""
    c = Condition.for_open(open_drifts)
    out = copy.deepcopy(obj)
    conditions = [x for x in out["status"]["conditions"] if x["type"] != CONDITION_TYPE]
    conditions.append({"type": CONDITION_TYPE, "status": c.status, "reason": c.reason, "message": c.message,
                       "lastTransitionTime": "2026-11-30T02:00:00Z", "lastHeartbeatTime": "2026-11-30T02:00:00Z"})
    out["status"]["conditions"] = conditions
    return out


def request(user: str, token_node: str | None) -> dict[str, Any]:
    extra = {NODE_NAME_CLAIM: [token_node]} if token_node is not None else {}
    return {"operation": "UPDATE", "subResource": "status", "resource": {"group": "", "version": "v1",
                                                                          "resource": "nodes"},
            "userInfo": {"username": user, "groups": ["system:serviceaccounts"], "extra": extra}}


def admit(req: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, list[str]]:
    """(allowed, denial messages) as the API server would decide for this policy."""
    spec = policy()
    env = celpy.Environment()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    activation: dict[str, Any] = {"request": celpy.json_to_cel(req), "object": celpy.json_to_cel(new),
                                  "oldObject": celpy.json_to_cel(old)}
    if not all(bool(evaluate(m["expression"], activation)) for m in spec["matchConditions"]):
        return True, []  # the policy does not apply to this request
    variables: dict[Any, Any] = {}
    for v in spec["variables"]:  # in order: each may read the ones before it
        activation["variables"] = celpy.celtypes.MapType(variables)
        variables[celpy.celtypes.StringType(v["name"])] = evaluate(v["expression"], activation)
    activation["variables"] = celpy.celtypes.MapType(variables)
    denied = []
    for rule in spec["validations"]:
        result = evaluate(rule["expression"], activation)
        assert isinstance(result, celpy.celtypes.BoolType), (rule["expression"], result)  # no evaluation error
        if not result:
            denied.append(str(evaluate(rule["messageExpression"], activation)) if "messageExpression" in rule
                          else rule["message"])
    return not denied, denied


def test_the_agent_may_set_its_condition_on_its_own_node() -> None:
    before = node("node-a")
    allowed, why = admit(request(AGENT, "node-a"), before, with_our_condition(before, ["socket/socket-mode"]))
    assert allowed, why
    # And flip it back to True later (the condition already there).
    drifting = with_our_condition(before, ["socket/socket-mode"])
    allowed, why = admit(request(AGENT, "node-a"), drifting, with_our_condition(drifting, []))
    assert allowed, why


def test_another_nodes_status_is_refused() -> None:
    before = node("node-b")
    allowed, why = admit(request(AGENT, "node-a"), before, with_our_condition(before, []))
    assert not allowed
    assert why == ["nodeguard may patch only the status of its own node (node-a), not node-b"]


def test_a_token_without_the_node_name_claim_is_refused() -> None:
    before = node("node-a")
    allowed, why = admit(request(AGENT, None), before, with_our_condition(before, []))
    assert not allowed and "its token names none" in why[0]


@pytest.mark.parametrize("tamper", ["ready", "drop-ready", "addresses", "capacity", "kubelet-port"])
def test_nothing_but_its_own_condition_may_change(tamper: str) -> None:
    before = node("node-a")
    after = with_our_condition(before, [])
    status = after["status"]
    if tamper == "ready":
        status["conditions"][1]["status"] = "False"
    elif tamper == "drop-ready":
        del status["conditions"][1]
    elif tamper == "addresses":
        status["addresses"][0]["address"] = "198.51.100.66"
    elif tamper == "capacity":
        status["capacity"]["pods"] = "0"
    elif tamper == "kubelet-port":
        status["daemonEndpoints"]["kubeletEndpoint"]["Port"] = 1
    allowed, why = admit(request(AGENT, "node-a"), before, after)
    assert not allowed, tamper
    assert len(why) == 1


def test_other_users_are_not_this_policys_business() -> None:
    before = node("node-b")
    after = copy.deepcopy(before)
    after["status"]["conditions"][1]["status"] = "False"
    assert admit(request("system:node:node-b", None), before, after) == (True, [])
    assert admit(request("system:serviceaccount:other:ng-nodeguard", "node-a"), before, after) == (True, [])
