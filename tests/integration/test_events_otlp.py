"""Events and metrics over real OTLP (gRPC and HTTP/protobuf) to a receiver built on opentelemetry-proto.

What the receiver decodes is what went over the wire: names, severities, attributes, the
resource, counts, and the hash chain recomputed from the decoded records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from nodeguard.events import metrics
from nodeguard.events.chain import ATTR_HASH, ATTR_PREV, ATTR_SEQ, GENESIS, event_hash
from nodeguard.events.model import Event, EventName, event_for_finding, lifecycle_event
from nodeguard.events.options import ExportOptions, OtlpProtocol
from nodeguard.events.pipeline import EventPipeline, build_pipeline
from nodeguard.events.resource import SCHEMA_URL
from nodeguard.structs import Finding, Mode, Severity, Status
from tests.support.otlp_receiver import ReceivedLog, otlp_receiver
from tests.support.sandbox import Sandbox
from tests.support.tlsca import make_tls

MACHINE_ID = "5f1e0c2a9b8d4e7f8a6b5c4d3e2f1a0b"


@pytest.fixture
def host(sandbox: Sandbox) -> Sandbox:
    sandbox.write("/etc/machine-id", MACHINE_ID + "\n")
    sandbox.write("/etc/hostname", "worker-7\n")
    return sandbox


@pytest.fixture
def k8s_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The downward API variables the Helm chart sets.
    monkeypatch.setenv("NODE_NAME", "worker-7")
    monkeypatch.setenv("POD_NAME", "nodeguard-x2k9q")
    monkeypatch.setenv("POD_NAMESPACE", "security")


def socket_finding(subject: str = "/var/run/docker.sock") -> Finding:
    return Finding(control="socket", rule="socket-mode", status=Status.FAIL, severity=Severity.HIGH,
                   message="docker.sock is 0666: every local user is root", cis="3.16", observed="0666",
                   expected="0660", path="/var/run/docker.sock", subject=subject, mode=Mode.ENFORCE)


def verify_received_chain(logs: dict[str, ReceivedLog]) -> list[ReceivedLog]:
    """Recompute each record's hash from what was decoded and link them in sequence order."""
    ordered = sorted(logs.values(), key=lambda r: r.attributes[ATTR_SEQ])
    prev = GENESIS
    for expected_seq, rec in enumerate(ordered, start=1):
        attrs = {k: v for k, v in rec.attributes.items() if k != "log.record.uid"}
        assert attrs[ATTR_SEQ] == expected_seq, f"seq {expected_seq} never arrived"
        assert attrs[ATTR_PREV] == prev, f"seq {expected_seq} does not link to its predecessor"
        assert event_hash(event_id=rec.attributes["log.record.uid"], time_unix_nano=rec.time_unix_nano,
                          name=rec.event_name, severity=rec.severity_text, body=rec.body,
                          attributes=attrs) == attrs[ATTR_HASH], f"seq {expected_seq} altered on the way"
        prev = attrs[ATTR_HASH]
    return ordered


@pytest.fixture
def pipelines() -> Iterator[list[EventPipeline]]:
    made: list[EventPipeline] = []
    try:
        yield made
    finally:
        for p in made:
            p.close()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out.setdefault(m.name, []).append((dict(p.attributes or {}), getattr(p, "value", None)))
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_events_and_metrics_reach_a_real_otlp_receiver(protocol: str, host: Sandbox, k8s_env: None,
                                                        tmp_path: Path, pipelines: list[EventPipeline]) -> None:
    with otlp_receiver(protocol) as rx:
        opts = ExportOptions(host_root=host.root, otlp_endpoint=rx.endpoint, otlp_protocol=OtlpProtocol(
            rx.otel_protocol), otlp_headers={"x-scope-orgid": "tenant-a"}, metrics_interval=0.2,
            events_file=str(tmp_path / "events.jsonl"))
        pipeline = build_pipeline(opts, tmp_path / "state")
        pipelines.append(pipeline)
        sent: list[Event] = [
            lifecycle_event(EventName.AGENT_STARTED, "nodeguard started", version="test"),
            event_for_finding(EventName.DRIFT_DETECTED, socket_finding(), outcome="detected"),
            event_for_finding(EventName.DRIFT_REVERTED, socket_finding(), outcome="reverted",
                              extra={"nodeguard.diff": ["-0666", "+0660"]}),
            event_for_finding(EventName.DRIFT_DETECTED, socket_finding("/run/other.sock"), outcome="detected"),
        ]
        for ev in sent:
            pipeline.emit(ev)
        metrics.record_reconcile("socket", 0.0042)
        assert rx.wait_for(lambda r: len(r.logs) >= len(sent), 20), f"received {len(rx.logs)} of {len(sent)}"
        assert rx.wait_for(lambda r: {"nodeguard.drift.detected", "nodeguard.reconcile.duration"} <=
                           {m.name for m in r.metrics}, 20), {m.name for m in rx.metrics}

        got = rx.snapshot()
        assert len(got) == len(sent), "each event exactly once"
        by_uid = rx.unique_by_uid()
        assert set(by_uid) == {e.id for e in sent}
        for ev in sent:
            rec = by_uid[ev.id]
            assert rec.event_name == ev.name.value  # the record's top-level EventName, not an attribute
            assert rec.severity_text == ev.severity and rec.severity_number == ev.severity_number
            assert rec.body == ev.body and rec.time_unix_nano == ev.time_unix_nano
            assert rec.scope_name == "nodeguard"
            assert rec.resource_schema_url == SCHEMA_URL
            for key, value in ev.attributes.items():
                assert rec.attributes[key] == value, key
        detected = by_uid[sent[1].id].attributes
        assert detected["nodeguard.control"] == "socket" and detected["nodeguard.rule"] == "socket-mode"
        assert detected["nodeguard.cis"] == "3.16" and detected["file.path"] == "/var/run/docker.sock"
        assert by_uid[sent[2].id].attributes["nodeguard.diff"] == ["-0666", "+0660"]

        res = got[0].resource
        assert res["service.name"] == "nodeguard" and res["service.version"]
        assert res["host.id"] == MACHINE_ID and res["host.name"] == "worker-7"
        assert (res["k8s.node.name"], res["k8s.pod.name"], res["k8s.namespace.name"]) == (
            "worker-7", "nodeguard-x2k9q", "security")
        assert all(h.get("x-scope-orgid") == "tenant-a" for h in rx.headers)
        verify_received_chain(by_uid)

        names = {m.name: m for m in rx.metrics}
        assert names["nodeguard.drift.detected"].resource["host.id"] == MACHINE_ID
        detected_points = [p for m in rx.metrics if m.name == "nodeguard.drift.detected" for p in m.points]
        assert ({"nodeguard.control": "socket"}, 2) in detected_points
        assert any(v == (1, pytest.approx(0.0042)) for m in rx.metrics if m.name == "nodeguard.reconcile.duration"
                   for _, v in m.points)
        assert names["nodeguard.reconcile.duration"].unit == "s"

    # The JSON-lines file got the same chained events, and they verify.
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["event.id"] for line in lines] == [e.id for e in sent]


def test_refused_exports_are_retried_until_confirmed(tmp_path: Path, host: Sandbox,
                                                    pipelines: list[EventPipeline]) -> None:
    reader = InMemoryMetricReader()
    with otlp_receiver("http") as rx:
        rx.failing = True  # the collector answers 503
        opts = ExportOptions(host_root=host.root, otlp_endpoint=rx.endpoint, otlp_timeout=1.0,
                             retry_initial_seconds=0.05, retry_max_seconds=0.2, aggregate_seconds=0)
        pipeline = build_pipeline(opts, tmp_path / "state", metric_readers=[reader])
        pipelines.append(pipeline)
        sent = [event_for_finding(EventName.DRIFT_DETECTED, socket_finding(f"s{i}"), outcome="detected")
                for i in range(20)]
        for ev in sent:
            pipeline.emit(ev)
        assert pipeline.spool.depth("otlp") == 20
        failures = metric_points(reader).get("nodeguard.export.failures", [])
        assert rx.wait_for(lambda r: r.requests == 0 and bool(
            metric_points(reader).get("nodeguard.export.failures")), 10), failures
        depth = dict((a["nodeguard.exporter"], v) for a, v in metric_points(reader)["nodeguard.spool.depth"])
        assert depth == {"otlp": 20}
        rx.failing = False
        assert rx.wait_for(lambda r: len(r.unique_by_uid()) == 20, 20)
        assert set(rx.unique_by_uid()) == {e.id for e in sent}
        assert rx.wait_for(lambda r: pipeline.spool.depth() == 0, 5), "confirmed events must leave the spool"
        verify_received_chain(rx.unique_by_uid())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mutual_tls_with_the_otel_certificate_settings(protocol: str, tmp_path: Path, host: Sandbox,
                                                       pipelines: list[EventPipeline]) -> None:
    tls = make_tls(tmp_path / "tls", ["127.0.0.1"])
    with otlp_receiver(protocol, tls=tls, require_client_cert=True) as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": rx.otel_protocol,
               "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls.ca)}
        quick = {"otlp_timeout": 1.0, "retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "metrics": False}
        # Without the client certificate the collector refuses the handshake: nothing arrives, all stays spooled.
        refused = build_pipeline(ExportOptions.from_env(env, host_root=host.root, **quick), tmp_path / "s1")
        pipelines.append(refused)
        refused.emit(lifecycle_event(EventName.AGENT_STARTED, "no client certificate"))
        assert not rx.wait_for(lambda r: bool(r.logs), 2)
        assert refused.spool.depth("otlp") == 1
        # With it (the OTEL_EXPORTER_OTLP_CLIENT_* variables), the same collector takes the event.
        env.update({"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(tls.client_key),
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(tls.client_cert)})
        ok = build_pipeline(ExportOptions.from_env(env, host_root=host.root, **quick), tmp_path / "s2")
        pipelines.append(ok)
        sent = lifecycle_event(EventName.AGENT_STARTED, "mutual TLS")
        ok.emit(sent)
        assert rx.wait_for(lambda r: bool(r.logs), 10)
        assert set(rx.unique_by_uid()) == {sent.id}
