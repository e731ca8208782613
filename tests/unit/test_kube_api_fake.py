"""The fake Kubernetes API server's own patch logic (tests/support/kube_api.py), tested as what it is.

The Kubernetes sink's tests (test_kube_sink.py) run against this fake because no API server can run
here. What the fake does with a PATCH is the fake's logic, not the sink's, so it is checked here,
against the semantics it copies: RFC 7386 for a JSON merge patch (its appendix A examples), and the
API server's strategic merge patch for a Node's conditions (patchMergeKey `type`, patchStrategy
merge, as k8s.io/api/core/v1 declares them).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from nodeguard.events.kube import STRATEGIC_MERGE
from tests.support.kube_api import (
    MERGE_PATCH,
    NODE,
    NODE_MERGE_KEYS,
    FakeApi,
    apply_patch,
    json_merge_patch,
    node_object,
    serving,
    strategic_merge,
)

READY = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
OURS = {"type": "NodeGuardCompliant", "status": "True", "reason": "NoOpenDrift", "message": "no open drift",
        "lastHeartbeatTime": "t0", "lastTransitionTime": "t0"}


# RFC 7386, appendix A: (target, patch, result).
RFC_7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7386_EXAMPLES)
def test_json_merge_patch_is_rfc_7386(target: Any, patch: Any, result: Any) -> None:
    assert json_merge_patch(target, patch) == result


def test_a_json_merge_patch_replaces_the_conditions_list() -> None:
    node = {"status": {"conditions": [READY]}}
    assert json_merge_patch(node, {"status": {"conditions": [OURS]}}) == {"status": {"conditions": [OURS]}}


def test_strategic_merge_keys_conditions_by_type() -> None:
    node = {"status": {"conditions": [READY], "capacity": {"cpu": "2"}}}
    added = strategic_merge(node, {"status": {"conditions": [OURS]}}, NODE_MERGE_KEYS)
    assert added == {"status": {"conditions": [READY, OURS], "capacity": {"cpu": "2"}}}
    # The same type again updates that item in place; fields the patch leaves out are kept.
    changed = strategic_merge(added, {"status": {"conditions": [
        {"type": OURS["type"], "status": "False", "reason": "DriftOpen"}]}}, NODE_MERGE_KEYS)
    assert changed["status"]["conditions"] == [READY, {**OURS, "status": "False", "reason": "DriftOpen"}]
    assert node == {"status": {"conditions": [READY], "capacity": {"cpu": "2"}}}  # the target is not changed


def test_strategic_merge_replaces_lists_without_a_merge_key_and_null_deletes() -> None:
    event = {"count": 1, "message": "m", "related": ["a"], "source": {"component": "x", "host": "h"}}
    patched = strategic_merge(event, {"count": 2, "related": ["b"], "source": {"host": None}})
    assert patched == {"count": 2, "message": "m", "related": ["b"], "source": {"component": "x"}}


def test_apply_patch_dispatches_on_the_content_type() -> None:
    node = {"status": {"conditions": [READY]}}
    patch = {"status": {"conditions": [OURS]}}
    assert apply_patch(node, patch, STRATEGIC_MERGE, NODE_MERGE_KEYS) == {"status": {"conditions": [READY, OURS]}}
    assert apply_patch(node, patch, MERGE_PATCH, NODE_MERGE_KEYS) == {"status": {"conditions": [OURS]}}
    assert apply_patch(node, [{"op": "add"}], "application/json-patch+json") is None


def _patch(port: int, path: str, body: Any, content_type: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), method="PATCH",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_applies_a_node_status_patch_by_its_content_type() -> None:
    api = FakeApi(node_object())
    api.gate.set()
    path = f"/api/v1/nodes/{NODE}/status"
    with serving(api) as server:
        port = server.server_address[1]
        assert _patch(port, path, {"status": {"conditions": [OURS]}}, STRATEGIC_MERGE) == 200
        assert [c["type"] for c in api.node["status"]["conditions"]] == ["Ready", OURS["type"]]
        assert _patch(port, path, [{"op": "remove", "path": "/status"}], "application/json-patch+json") == 415
        # A JSON merge patch is applied too, as the API server would: the kubelet's Ready is gone.
        assert _patch(port, path, {"status": {"conditions": [OURS]}}, MERGE_PATCH) == 200
        assert api.node["status"]["conditions"] == [OURS]
        assert api.node["metadata"] == {"name": NODE}
