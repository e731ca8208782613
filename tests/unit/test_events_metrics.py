"""The metrics as the SDK collects them (an in-memory reader), the bind address, and the resource's identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from nodeguard.events import metrics as metrics_mod
from nodeguard.events.model import Event, EventName
from nodeguard.events.otlp import make_resource
from nodeguard.events.prometheus import BindAddress, BindAddressError, parse_bind_address
from nodeguard.events.resource import resource_attributes


@pytest.fixture
def collected() -> Any:
    reader = InMemoryMetricReader()
    m = metrics_mod.install(metrics_mod.make_provider(make_resource({"service.name": "nodeguard"}), [reader]))
    try:
        def collect() -> dict[str, list[tuple[dict[str, Any], Any]]]:
            data = reader.get_metrics_data()
            out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
            if data is None:  # no instrument reported anything
                return out
            for rm in data.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        out[metric.name] = [(dict(p.attributes or {}), getattr(p, "value", None))
                                            for p in metric.data.data_points]
            return out
        yield m, collect
    finally:
        metrics_mod.set_open_drifts_source(None)
        metrics_mod.uninstall(m)
        m.shutdown(1.0)


def test_open_drifts_count_the_engines_level_and_read_zero_once_closed(collected: Any) -> None:
    _m, collect = collected
    assert "nodeguard.open_drifts" not in collect()  # nothing registered: no series at all
    open_now = [("socket", "socket-mode", "critical"), ("docker-group", "member-allowed", "high"),
                ("docker-group", "member-allowed", "high")]
    metrics_mod.set_open_drifts_source(lambda: list(open_now))
    points = sorted(collect()["nodeguard.open_drifts"], key=lambda p: p[0]["control"])
    assert points == [({"control": "docker-group", "rule": "member-allowed", "severity": "high"}, 2),
                      ({"control": "socket", "rule": "socket-mode", "severity": "critical"}, 1)]
    open_now.clear()
    points = collect()["nodeguard.open_drifts"]
    assert sorted(v for _a, v in points) == [0, 0]  # closed drifts read 0: the alert sees them go


def test_a_failing_source_costs_the_gauge_not_the_scrape(collected: Any) -> None:
    m, collect = collected

    def broken() -> list[tuple[str, str, str]]:
        raise RuntimeError("engine stopping")

    metrics_mod.set_open_drifts_source(broken)
    m.record_reconcile("socket", 0.002)
    out = collect()
    assert "nodeguard.open_drifts" not in out and "nodeguard.reconcile.duration" in out


def test_drift_events_are_counted_by_control_and_outcome(collected: Any) -> None:
    m, collect = collected
    for name in (EventName.DRIFT_DETECTED, EventName.DRIFT_REVERTED, EventName.DRIFT_DETECTED,
                 EventName.DRIFT_FLAPPING, EventName.AGENT_STARTED):
        m.record_event(Event(name=name, severity="WARN", body="x", attributes={"nodeguard.control": "socket"}))
    points = {a["nodeguard.outcome"]: v for a, v in collect()["nodeguard.drift.events"]}
    assert points == {"detected": 2, "reverted": 1, "flapping": 1}  # lifecycle events are not drifts


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9464", BindAddress("127.0.0.1", 9464)),
    ("[::1]:9464", BindAddress("::1", 9464)),
    ("2001:db8::7:9464", BindAddress("2001:db8::7", 9464)),  # the kubelet's $(POD_IP):PORT on a v6 pod
    ("node-a.example:80", BindAddress("node-a.example", 80)),
])
def test_bind_addresses(text: str, expected: BindAddress) -> None:
    assert parse_bind_address(text) == expected


@pytest.mark.parametrize("bad", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "[::1x]:80",
                                 "$(POD_IP):9464", "127.0.0.1:9464x"])
def test_bad_bind_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_bind_address(bad)
    with pytest.raises(BindAddressError if not bad.startswith("[") else ValueError):
        parse_bind_address(bad)


def test_service_instance_id_is_stable_not_the_sdks_random_uuid(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    pod = {"NODE_NAME": "node-a", "POD_NAME": "nodeguard-x1", "POD_NAMESPACE": "nodeguard", "POD_UID": "u-1"}
    attrs = resource_attributes(tmp_path, pod)
    assert attrs["service.instance.id"] == "node-a"  # survives pod restarts and upgrades
    assert attrs["k8s.pod.uid"] == "u-1" and attrs["k8s.pod.name"] == "nodeguard-x1"
    # The same on every start, through the SDK's Resource.create (which would add a random UUID).
    ids = {make_resource(resource_attributes(tmp_path, pod)).attributes["service.instance.id"] for _ in range(3)}
    assert ids == {"node-a"}
    assert resource_attributes(tmp_path, {})["service.instance.id"] == "0123456789abcdef0123456789abcdef"
    # A user's own OTEL_RESOURCE_ATTRIBUTES wins.
    mine = {**pod, "OTEL_RESOURCE_ATTRIBUTES": "team=ops, service.instance.id=mine"}
    assert "service.instance.id" not in resource_attributes(tmp_path, mine)
