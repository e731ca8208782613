"""The OCSF output: every drift event is a valid Compliance Finding (class 2003) per py-ocsf-models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from py_ocsf_models import OCSF_VERSION as MODELS_OCSF_VERSION
from py_ocsf_models.events.findings.compliance_finding import ComplianceFinding

from nodeguard.events.aggregate import Aggregator
from nodeguard.events.files import ocsf_exporter
from nodeguard.events.model import EventName, event_for_finding, lifecycle_event
from nodeguard.events.ocsf import OCSF_VERSION, is_finding, to_ocsf
from nodeguard.events.spool import Spool
from nodeguard.structs import Finding, Mode, Severity, Status

HOST = {"host.name": "node-1", "host.id": "0123456789abcdef0123456789abcdef"}


def finding(subject: str | None = "bob") -> Finding:
    return Finding(control="docker-group", rule="member-allowed", status=Status.FAIL, severity=Severity.HIGH,
                   message="bob is in the docker group", cis="1.1.2", observed=["bob"], expected=[],
                   path="/etc/group", subject=subject, mode=Mode.ENFORCE)


def assert_no_nulls(value: Any, where: str = "") -> None:
    assert value is not None, f"null at {where}"
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_nulls(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_no_nulls(v, f"{where}[{i}]")


def assert_valid(doc: dict[str, Any]) -> ComplianceFinding:
    assert_no_nulls(doc)
    # py-ocsf-models makes two of the device's *recommended* attributes required (ip, region); the
    # OCSF 1.5 schema requires only type_id. A node agent has no region and no one IP, so they are
    # filled here for the model only; everything else is validated as sent.
    assert "type_id" in doc["device"]
    model = ComplianceFinding.model_validate({**doc, "device": {"ip": "192.0.2.1", "region": "-", **doc["device"]}})
    # Nothing we send is outside what the schema model knows (pydantic ignores unknown keys by default),
    # except `actor`: the host profile (metadata.profiles) adds it, and py-ocsf-models has no profiles
    # (test_actor_attributes_map_to_ocsf_actor checks its shape).
    known = set(ComplianceFinding.model_fields) | {"actor"}
    assert set(doc) <= known, set(doc) - known
    return model


def test_ocsf_version_is_the_one_the_validating_models_implement() -> None:
    assert OCSF_VERSION == MODELS_OCSF_VERSION


@pytest.mark.parametrize(("name", "activity", "compliance_status"), [
    (EventName.DRIFT_DETECTED, 1, 3),
    (EventName.DRIFT_FLAPPING, 2, 3),
    (EventName.DRIFT_REVERT_FAILED, 2, 3),
    (EventName.DRIFT_REVERTED, 3, 1),
    (EventName.DRIFT_RESOLVED, 3, 1),
])
def test_each_drift_event_is_a_valid_compliance_finding(name: EventName, activity: int,
                                                        compliance_status: int) -> None:
    event = event_for_finding(name, finding(), outcome=name.value.rsplit(".", 1)[1])
    doc = to_ocsf(event, HOST)
    model = assert_valid(doc)
    assert model.class_uid == 2003 and model.category_uid == 2
    assert model.activity_id == activity and model.type_uid == 200300 + activity
    assert model.metadata.version == OCSF_VERSION
    assert model.metadata.uid == event.id
    assert model.compliance.requirements == ["1.1.2"]
    assert model.compliance.status_id == compliance_status
    assert model.severity_id == 4  # high
    assert model.time == event.time_unix_nano // 1_000_000
    assert {"type": "file", "name": "/etc/group", "uid": "/etc/group"} in doc["resources"]
    # The CIS id where SIEM compliance views look for it, with the benchmark's version and title.
    assert doc["compliance"]["control"] == "1.1.2" and doc["compliance"]["checks"][0]["uid"] == "1.1.2"
    assert doc["compliance"]["checks"][0]["name"] == "Ensure only trusted users are allowed to control Docker daemon"
    assert doc["compliance"]["standards"] == ["CIS Docker Benchmark v1.6.0"]
    assert doc["compliance"]["status"] == ("Fail" if compliance_status == 3 else "Pass")
    assert model.device is not None and doc["device"]["type_id"] == 1 and doc["device"]["hostname"] == "node-1"
    assert doc["metadata"]["profiles"] == ["host"]
    assert "gpasswd -d" in doc["remediation"]["desc"]
    assert doc["unmapped"]["attributes"]["nodeguard.subject"] == "bob"


def test_one_finding_keeps_one_uid_from_create_to_close() -> None:
    detected = to_ocsf(event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected"), HOST)
    reverted = to_ocsf(event_for_finding(EventName.DRIFT_REVERTED, finding(), outcome="reverted"), HOST)
    other = to_ocsf(event_for_finding(EventName.DRIFT_DETECTED, finding("carol"), outcome="detected"), HOST)
    assert detected["finding_info"]["uid"] == reverted["finding_info"]["uid"] != other["finding_info"]["uid"]


def test_file_output_skips_lifecycle_and_carries_chain_and_aggregates(tmp_path: Path) -> None:
    out = tmp_path / "ocsf.jsonl"
    spool = Spool(tmp_path / "spool", ["ocsf-file"])
    exporter = ocsf_exporter(str(out), HOST)
    emitted = []
    agg = Aggregator(60, lambda e: emitted.append(spool.append(e)))
    agg.offer(lifecycle_event(EventName.AGENT_STARTED, "nodeguard started"))
    for _ in range(4):
        agg.offer(event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected"))
    agg.flush_all()
    assert exporter.export(emitted)
    exporter.shutdown()
    spool.close()
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(docs) == 2 and not is_finding(emitted[0])
    for doc in docs:
        assert_valid(doc)
    assert [d["metadata"]["sequence"] for d in docs] == [2, 3]
    summary = docs[1]
    assert summary["unmapped"]["attributes"]["nodeguard.aggregate.count"] == 3
    assert summary["finding_info"]["first_seen_time"] <= summary["finding_info"]["last_seen_time"]


def test_created_time_is_the_findings_first_seen_and_modified_time_the_update() -> None:
    opened = 1_700_000_000_000_000_000
    detected = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected", first_seen_unix_nano=opened)
    later = event_for_finding(EventName.DRIFT_REVERT_FAILED, finding(), outcome="revert_failed",
                              first_seen_unix_nano=opened)
    later.time_unix_nano = detected.time_unix_nano + 5_000_000_000
    a, b = to_ocsf(detected, HOST), to_ocsf(later, HOST)
    assert a["finding_info"]["created_time"] == b["finding_info"]["created_time"] == opened // 1_000_000
    assert "modified_time" not in a["finding_info"]
    assert b["finding_info"]["modified_time"] == later.time_unix_nano // 1_000_000
    assert_valid(a)
    assert_valid(b)


def test_no_null_on_a_host_without_machine_id_and_a_rule_without_cis() -> None:
    f = Finding(control="firewall", rule="jump-present", status=Status.FAIL, severity=Severity.CRITICAL,
                message="jump missing", observed=None, expected=None)
    doc = to_ocsf(event_for_finding(EventName.DRIFT_DETECTED, f, outcome="detected"), {"host.name": "node-2"})
    assert_valid(doc)
    assert doc["resources"][0] == {"type": "host", "name": "node-2", "uid": "node-2"}
    assert doc["compliance"]["control"] == "firewall/jump-present"
    assert doc["compliance"]["standards"] == ["nodeguard policy"]
    assert doc["severity_id"] == 5
    assert "nodeguard.observed" not in doc["unmapped"]["attributes"]


def test_actor_attributes_map_to_ocsf_actor() -> None:
    event = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected", extra={
        "process.pid": 4242, "process.executable.path": "/usr/bin/chmod", "process.executable.name": "chmod",
        "process.command_line": "chmod 666 /var/run/docker.sock", "user.name": "mallory", "user.id": "1001"})
    doc = to_ocsf(event, HOST)
    assert_valid(doc)
    assert doc["actor"] == {"process": {"pid": 4242, "name": "chmod", "cmd_line": "chmod 666 /var/run/docker.sock",
                                        "file": {"path": "/usr/bin/chmod", "name": "chmod"}},
                            "user": {"name": "mallory", "uid": "1001"}}
    assert "actor" not in to_ocsf(event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected"), HOST)


def test_the_file_keeps_created_time_without_the_engines_first_seen(tmp_path: Path) -> None:
    out = tmp_path / "ocsf.jsonl"
    exporter = ocsf_exporter(str(out), HOST)
    detected = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected")
    failed = event_for_finding(EventName.DRIFT_REVERT_FAILED, finding(), outcome="revert_failed")
    resolved = event_for_finding(EventName.DRIFT_RESOLVED, finding(), outcome="resolved")
    again = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected")
    for n, ev in enumerate((detected, failed, resolved, again)):
        ev.time_unix_nano = detected.time_unix_nano + n * 7_000_000_000
    assert exporter.export([detected, failed, resolved, again])
    exporter.shutdown()
    docs = [json.loads(line)["finding_info"] for line in out.read_text().splitlines()]
    opened = detected.time_unix_nano // 1_000_000
    assert [d["created_time"] for d in docs[:3]] == [opened] * 3
    assert docs[2]["modified_time"] == resolved.time_unix_nano // 1_000_000
    assert docs[3]["created_time"] == again.time_unix_nano // 1_000_000  # closed, then a new finding
