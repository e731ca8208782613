"""The Kubernetes sink keys drifts by the one finding identity (reconcile.finding_key).

The identity an event carries (`event_finding_key`) is the engine's `finding_key` of the finding
the event was built from, whatever the subject holds; the Node shows it as `control/rule[subject]`
(`drift_name`); and the open drifts a sink keeps from the events are those identities, so a
`drift.resolved` closes exactly the drift its `drift.detected` opened. (In the agent the open drifts
are the engine's own keys, the same identities: test_kube_sink.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from nodeguard.events.kube import KubeSink, drift_name
from nodeguard.events.model import EventName, event_for_finding
from nodeguard.reconcile import event_finding_key, finding_key, split_key
from nodeguard.structs import Finding, Severity, Status
from tests.support.kube_api import NODE, FakeApi, fake_core_api


def finding(control: str, rule: str, subject: str | None) -> Finding:
    return Finding(control, rule, Status.FAIL, Severity.HIGH, f"{rule} drifted", subject=subject)


CASES = [
    finding("socket", "socket-mode", None),
    finding("socket", "socket-mode", ""),
    finding("docker-group", "member-allowed", "bob"),
    finding("daemon-files", "file-mode", "/etc/docker/daemon.json"),  # a subject with slashes
    finding("listeners", "port-allowed", "tcp/[::]:2375"),  # slashes and brackets
]


@pytest.mark.parametrize("f", CASES, ids=lambda f: f"{f.control}/{f.rule}/{f.subject}")
def test_an_events_identity_is_its_findings(f: Finding) -> None:
    event = event_for_finding(EventName.DRIFT_DETECTED, f, outcome="detected")
    assert event_finding_key(event.attributes) == finding_key(f)
    assert split_key(event_finding_key(event.attributes)) == f.key


def test_the_node_shows_control_rule_and_subject_in_brackets() -> None:
    assert drift_name(finding_key(CASES[0])) == "socket/socket-mode"
    assert drift_name(finding_key(CASES[2])) == "docker-group/member-allowed[bob]"
    assert drift_name(finding_key(CASES[3])) == "daemon-files/file-mode[/etc/docker/daemon.json]"
    assert drift_name(finding_key(CASES[4])) == "listeners/port-allowed[tcp/[::]:2375]"


@pytest.fixture
def core() -> Iterator[tuple[FakeApi, client.CoreV1Api]]:
    with fake_core_api() as pair:
        yield pair


def test_the_sink_keeps_identities(core: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, v1 = core
    sink = KubeSink(v1, NODE)
    try:
        for f in CASES[:4]:  # CASES[0] and CASES[1] are one finding: no subject
            sink.emit(event_for_finding(EventName.DRIFT_DETECTED, f, outcome="detected"))
        assert sink.open_drifts == ["daemon-files/file-mode[/etc/docker/daemon.json]",
                                    "docker-group/member-allowed[bob]", "socket/socket-mode"]
        for f in CASES[:4]:
            sink.emit(event_for_finding(EventName.DRIFT_RESOLVED, f, outcome="resolved"))
        assert sink.flush()
        assert sink.open_drifts == []
        cond = api.condition()
        assert cond is not None and cond["status"] == "True"
        sink.emit(event_for_finding(EventName.DRIFT_DETECTED, CASES[4], outcome="detected"))
        assert sink.flush()
        cond = api.condition()
        assert cond is not None and cond["message"] == "1 open drift(s): listeners/port-allowed[tcp/[::]:2375]"
        assert sink.open_drifts == [drift_name(finding_key(CASES[4]))]
    finally:
        sink.close()
    events = {e["message"] for e in api.events.values()}
    assert "listeners/port-allowed[tcp/[::]:2375]: port-allowed drifted" in events
