"""nodeguard.validation: the policy's msgspec conversion keeps what pydantic accepted and said.

Each case is a policy document as a file holds it, and what `policy validate` printed for it when
the models were pydantic's (issue 13 moved them to msgspec): the same values accepted, every problem
named at once with its line and field, in the same words.
"""

from __future__ import annotations

import msgspec
import pytest

from nodeguard.policy import API_VERSION, KIND, Policy, PolicyError, load_policy, parse_policy
from nodeguard.validation import Invalid, convert

HEAD = f"apiVersion: {API_VERSION}\nkind: {KIND}\n"


def parsed(body: str) -> Policy:
    return parse_policy(HEAD + body, "p.yaml")


def problems(body: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PolicyError) as exc_info:
        parsed(body)
    return exc_info.value.problems


@pytest.mark.parametrize(("written", "enabled"), [("off", False), ("no", False), ("On", True), ("y", True),
                                                  ("'true'", True), ("0", False), ("1.0", True)])
def test_booleans_as_pydantic_read_them(written: str, enabled: bool) -> None:
    pol = parsed(f"spec: {{agent: {{attribution: {{enabled: {written}}}}}}}\n")
    assert pol.spec.agent.attribution.enabled is enabled


@pytest.mark.parametrize(("written", "value"), [("'7'", 7), ("' 7 '", 7), ("'+7'", 7), ("'1_000'", 1000),
                                                ("7.0", 7), ("true", 1)])
def test_numbers_as_pydantic_read_them(written: str, value: int) -> None:
    assert parsed(f"spec: {{agent: {{coalesceMs: {written}}}}}\n").spec.agent.coalesce_ms == value


def test_values_are_normalised_by_their_checks() -> None:
    pol = parsed("spec:\n  controls:\n    firewall: {ports: [{port: 22, allow: ['10.1.2.3/8']}]}\n"
                 "    runtime: {allowedCapabilities: [cap_net_admin]}\n")
    assert pol.spec.controls.firewall.ports[0].allow == ["10.0.0.0/8"]
    assert pol.spec.controls.firewall.ports[0].action == "drop"  # a list item's own default
    assert pol.spec.controls.runtime.allowed_capabilities == ["NET_ADMIN"]


@pytest.mark.parametrize(("body", "expected"), [
    ("spec: {agent: {resyncSeconds: .nan}}\n", (3, "spec.agent.resyncSeconds", "Input should be a finite number")),
    ("spec: {agent: {coalesceMs: x}}\n",
     (3, "spec.agent.coalesceMs", "Input should be a valid integer, unable to parse string as an integer")),
    ("spec: {agent: {coalesceMs: 1.5}}\n",
     (3, "spec.agent.coalesceMs", "Input should be a valid integer, got a number with a fractional part")),
    ("spec: {agent: {flapping: {threshold: 0}}}\n",
     (3, "spec.agent.flapping.threshold", "Input should be greater than or equal to 1")),
    ("spec: {agent: {flapping: 5}}\n",
     (3, "spec.agent.flapping", "Input should be a valid dictionary or instance of Flapping")),
    ("spec: {agent: {attribution: {enabled: maybe}}}\n",
     (3, "spec.agent.attribution.enabled", "Input should be a valid boolean, unable to interpret input")),
    ("spec: {controls: {socket: {fileMode: \"0600\\n\"}}}\n",  # a trailing newline is not a mode
     (3, "spec.controls.socket.fileMode", "String should match pattern '^0?[0-7]{3,4}$'")),
    ("spec: {controls: {runtime: {minEngineVersion: v24}}}\n",
     (3, "spec.controls.runtime.minEngineVersion", "String should match pattern '^[0-9]+(\\.[0-9]+){0,2}$'")),
    ("spec: {controls: {firewall: {ports: [{port: 22, action: accept}]}}}\n",
     (3, "spec.controls.firewall.ports[0].action", "Input should be 'drop' or 'reject', got 'accept'")),
    ("spec: {controls: {firewall: {ports: [{port: 22}, {port: 22}]}}}\n",
     (3, "spec.controls.firewall", "port(s) [22] listed more than once")),
    ("spec: {controls: {daemonFiles: {extra: [{path: /etc/x}]}}}\n",
     (3, "spec.controls.daemonFiles.extra[0].fileMode", "Field required")),
    ("spec: {controls: {dockerGroup: {allowedMembers: bob}}}\n",
     (3, "spec.controls.dockerGroup.allowedMembers", "Input should be a valid list")),
    ("metadata: {labels: {1: a}}\n", (3, "metadata.labels[1].[key]", "Input should be a valid string")),
])
def test_a_problem_in_pydantic_words(body: str, expected: tuple[int, str, str]) -> None:
    assert problems(body) == [expected]


def test_every_problem_of_a_document_at_once_each_on_its_line() -> None:
    found = problems("spec:\n  agent:\n    coalesceMs: -1\n    resyncSeconds: .inf\n"
                     "  controls:\n    socket: {fileMode: '9', allowedAcl: [x], colour: blue}\n"
                     "    firewall: {ports: [{port: 70000, allow: [x]}]}\n")
    assert [(line, fld) for line, fld, _ in found] == [
        (5, "spec.agent.coalesceMs"), (6, "spec.agent.resyncSeconds"), (8, "spec.controls.socket.fileMode"),
        (8, "spec.controls.socket.allowedAcl"), (8, "spec.controls.socket.colour"),
        (9, "spec.controls.firewall.ports[0].port"), (9, "spec.controls.firewall.ports[0].allow")]


def test_a_word_read_as_a_boolean_gives_the_policy_a_true_false_gives() -> None:
    assert parsed("spec: {agent: {attribution: {enabled: off}}}\n") == parsed(
        "spec: {agent: {attribution: {enabled: false}}}\n")


def test_convert_alone_names_every_problem_with_its_path() -> None:
    data = msgspec.to_builtins(load_policy())
    data["spec"]["agent"]["coalesceMs"] = "soon"
    data["spec"]["controls"]["firewall"]["ports"][1]["port"] = 0
    with pytest.raises(Invalid) as exc_info:
        convert(data, Policy, unknown_key="unknown")
    assert [loc for loc, _ in exc_info.value.problems] == [
        ("spec", "agent", "coalesceMs"), ("spec", "controls", "firewall", "ports", 1, "port")]
