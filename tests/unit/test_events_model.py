"""The event shape a SIEM reads: OTel severity ranges, security_rule.*, one id key, no nulls, who spoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk.resources import Resource

from nodeguard.events.files import jsonl_exporter
from nodeguard.events.model import ATTR_RECORD_UID, Event, EventName, event_for_finding, lifecycle_event
from nodeguard.events.options import ExportOptions
from nodeguard.events.otlp import OtlpExporter
from nodeguard.events.spool import Spool
from nodeguard.events.verify import verify_file
from nodeguard.structs import Finding, Severity, Status


def finding(severity: Severity = Severity.CRITICAL, cis: str | None = "3.16") -> Finding:
    return Finding(control="socket", rule="socket-mode", status=Status.FAIL, severity=severity, cis=cis,
                   message="docker.sock is 0666", observed="0666", expected=None, path="/var/run/docker.sock")


@pytest.mark.parametrize(("severity", "text", "number"), [
    (Severity.INFO, "INFO", 9), (Severity.LOW, "WARN", 13), (Severity.MEDIUM, "WARN", 13),
    (Severity.HIGH, "ERROR", 17), (Severity.CRITICAL, "CRITICAL", 20),
])
def test_finding_severity_maps_below_fatal(severity: Severity, text: str, number: int) -> None:
    ev = event_for_finding(EventName.DRIFT_DETECTED, finding(severity), outcome="detected")
    assert (ev.severity, ev.severity_number) == (text, number)
    assert ev.severity_number < 21  # FATAL is for an emitter that died, never a finding


def test_security_rule_attributes_beside_nodeguard_keys() -> None:
    attrs = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected").attributes
    assert attrs["security_rule.name"] == attrs["nodeguard.rule"] == "socket-mode"
    assert attrs["security_rule.ruleset.name"] == "CIS Docker Benchmark v1.6.0"
    assert attrs["security_rule.reference"].startswith("https://")
    assert attrs["security_rule.category"] == "socket"
    assert attrs["security_rule.description"] == "docker.sock no more permissive than 0660"
    own = event_for_finding(EventName.DRIFT_DETECTED, Finding(
        control="firewall", rule="jump-present", status=Status.FAIL, severity=Severity.CRITICAL, message="m"),
        outcome="detected").attributes
    assert own["security_rule.ruleset.name"] == "nodeguard"
    assert "nodeguard.cis" not in own


def test_no_null_attribute_is_made() -> None:
    ev = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected", extra={"nodeguard.diff": None})
    assert None not in ev.attributes.values()
    assert "nodeguard.expected" not in ev.attributes and "nodeguard.diff" not in ev.attributes
    assert None not in lifecycle_event(EventName.AGENT_STARTED, "x", reason=None).attributes.values()


def test_otlp_records_carry_the_same_id_key_severity_and_no_nulls() -> None:
    # `records` is what goes on the wire: the transport encodes exactly these (encode_logs).
    exporter = OtlpExporter(ExportOptions(host_root=Path("/"), otlp_endpoint="http://127.0.0.1:9/v1/logs"),
                            Resource.create({"host.name": "n1"}))
    # An event spooled by an older version may still hold a null: it is left out on the wire.
    old = Event(EventName.DRIFT_DETECTED, "ERROR", "b", {"nodeguard.observed": None, "nodeguard.rule": "r"})
    ev = event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected")
    try:
        recs = exporter.records([ev, old])
        wire = encode_logs(recs)
    finally:
        exporter.shutdown()
    assert len(wire.resource_logs[0].scope_logs[0].log_records) == 2
    attrs = [dict(r.log_record.attributes or {}) for r in recs]
    assert attrs[0][ATTR_RECORD_UID] == ev.id and attrs[1][ATTR_RECORD_UID] == old.id
    assert "nodeguard.observed" not in attrs[1]
    assert recs[0].log_record.severity_number is not None and recs[0].log_record.severity_number.value == 20
    assert recs[0].log_record.severity_text == "CRITICAL"
    assert attrs[0]["security_rule.name"] == "socket-mode"


def test_json_lines_carry_the_id_key_and_the_resource_and_still_verify(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    spool = Spool(tmp_path / "spool", ["events-file"])
    resource = {"service.name": "nodeguard", "host.name": "node-1", "host.id": "abc", "k8s.node.name": "node-1"}
    exporter = jsonl_exporter(str(out), resource)
    events = [spool.append(lifecycle_event(EventName.AGENT_STARTED, "started")),
              spool.append(event_for_finding(EventName.DRIFT_DETECTED, finding(), outcome="detected"))]
    assert exporter.export(events)
    exporter.shutdown()
    spool.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for line, ev in zip(lines, events, strict=True):
        assert line["event.id"] == line["attributes"][ATTR_RECORD_UID] == ev.id
        assert line["resource"] == resource
        assert None not in line["attributes"].values()
        assert Event.from_record(line).attributes == ev.attributes  # the id key is not kept twice
    report = verify_file(out)
    assert report.ok and report.events == 2, report
