"""The agent's metrics (OpenTelemetry metrics SDK): over OTLP beside the events, and/or pulled by
Prometheus (`nodeguard run --metrics-bind-address`, nodeguard/events/prometheus.py).

| metric | kind | unit | attributes |
|---|---|---|---|
| `nodeguard.open_drifts` | gauge | `{drift}` | `control`, `rule`, `severity` (findings failing now) |
| `nodeguard.drift.events` | counter | `{event}` | `nodeguard.control`, `nodeguard.outcome` (every drift event) |
| `nodeguard.drift.detected` / `.reverted` / `.revert_failed` | counter | `{drift}` | `nodeguard.control` |
| `nodeguard.reconcile.duration` | histogram | `s` | `nodeguard.control` |
| `nodeguard.spool.depth` | gauge | `{event}` | `nodeguard.exporter` (events waiting for it) |
| `nodeguard.spool.dropped` | counter | `{event}` | |
| `nodeguard.export.failures` | counter | `{failure}` | `nodeguard.exporter` |
| `nodeguard.export.delivered` | counter | `{event}` | `nodeguard.exporter` |

The drift counters are fed by the event pipeline itself (every event passes through it, before
aggregation), so the engine only reports what the pipeline cannot see:
`record_reconcile(control, seconds)`, and what is failing now: it registers a function with
`set_open_drifts_source(engine.open_drifts)` that the open-drifts gauge calls at each collection
(a level read from the engine's own findings, not rebuilt from events). Every function here is a
no-op until a pipeline has installed the metrics, so the engine can call them unconditionally.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource

from nodeguard._version import __version__
from nodeguard.events.model import Event, EventName
from nodeguard.events.resource import SCHEMA_URL

log = logging.getLogger(__name__)

# (control, rule, severity) of one finding failing now; the gauge counts them per triple.
OpenDrift = tuple[str, str, str]
OpenDriftsSource = Callable[[], Iterable[OpenDrift]]

# What the outcome attribute of the drift event counter says for each event.
_OUTCOMES = {
    EventName.DRIFT_DETECTED: "detected",
    EventName.DRIFT_REVERTED: "reverted",
    EventName.DRIFT_REVERT_FAILED: "revert_failed",
    EventName.DRIFT_RESOLVED: "resolved",
    EventName.DRIFT_FLAPPING: "flapping",
}
_DRIFT_COUNTERS = {
    EventName.DRIFT_DETECTED: "nodeguard.drift.detected",
    EventName.DRIFT_REVERTED: "nodeguard.drift.reverted",
    EventName.DRIFT_REVERT_FAILED: "nodeguard.drift.revert_failed",
}
# A reconcile is one control's observe + evaluate (+ remediate): milliseconds, rarely seconds.
_DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class Metrics:
    def __init__(self, provider: MeterProvider, depth: Callable[[], dict[str, int]] | None = None) -> None:
        self.provider = provider
        self._depth = depth
        meter = provider.get_meter("nodeguard", __version__, schema_url=SCHEMA_URL)
        self._drift = {
            name: meter.create_counter(metric, unit="{drift}", description=f"Events {name.value} per control")
            for name, metric in _DRIFT_COUNTERS.items()
        }
        self._reconcile = meter.create_histogram(
            "nodeguard.reconcile.duration", unit="s", description="One control's observe/evaluate/remediate pass",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS)
        self._dropped = meter.create_counter("nodeguard.spool.dropped", unit="{event}",
                                             description="Events the full spool dropped")
        self._failures = meter.create_counter("nodeguard.export.failures", unit="{failure}",
                                              description="Failed delivery attempts per exporter")
        self._delivered = meter.create_counter("nodeguard.export.delivered", unit="{event}",
                                               description="Events confirmed by each exporter's destination")
        self._events = meter.create_counter("nodeguard.drift.events", unit="{event}",
                                            description="Drift events per control and outcome")
        # Every triple ever reported: once closed it reads 0 rather than vanishing, so a dashboard
        # or an alert sees the drift go away instead of a series going stale.
        self._open_seen: set[OpenDrift] = set()
        self._open_lock = threading.Lock()  # each reader (OTLP, Prometheus) collects on its own thread
        meter.create_observable_gauge("nodeguard.open_drifts", callbacks=[self._observe_open], unit="{drift}",
                                      description="Findings failing now, per control, rule and severity")
        meter.create_observable_gauge("nodeguard.spool.depth", callbacks=[self._observe_depth], unit="{event}",
                                      description="Events in the spool waiting for each exporter")

    def _observe_depth(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self._depth is None:
            return []
        try:
            return [Observation(n, {"nodeguard.exporter": name}) for name, n in self._depth().items()]
        except Exception:  # the spool is closing
            return []

    def _observe_open(self, _options: CallbackOptions) -> Iterable[Observation]:
        source = _open_drifts_source
        if source is None:
            return []
        try:
            now = Counter(source())
        except Exception:  # an engine mid-stop must not break the scrape of everything else
            log.exception("the open-drifts source failed")
            return []
        with self._open_lock:
            self._open_seen.update(now)
            seen = sorted(self._open_seen)
        return [Observation(now.get(key, 0), {"control": key[0], "rule": key[1], "severity": key[2]})
                for key in seen]

    def record_event(self, event: Event) -> None:
        outcome = _OUTCOMES.get(event.name)
        if outcome is not None:
            self._events.add(1, {"nodeguard.control": str(event.attributes.get("nodeguard.control", "")),
                                 "nodeguard.outcome": outcome})
        counter = self._drift.get(event.name)
        if counter is not None:
            counter.add(1, {"nodeguard.control": str(event.attributes.get("nodeguard.control", ""))})

    def record_reconcile(self, control: str, seconds: float) -> None:
        self._reconcile.record(seconds, {"nodeguard.control": control})

    def record_dropped(self, count: int) -> None:
        self._dropped.add(count)

    def record_export_failure(self, exporter: str) -> None:
        self._failures.add(1, {"nodeguard.exporter": exporter})

    def record_delivered(self, exporter: str, count: int) -> None:
        self._delivered.add(count, {"nodeguard.exporter": exporter})

    def shutdown(self, timeout_seconds: float) -> None:
        try:
            self.provider.shutdown(timeout_millis=max(1.0, timeout_seconds * 1000))
        except Exception:
            log.exception("metrics shutdown failed")


_lock = threading.Lock()
_current: Metrics | None = None
_open_drifts_source: OpenDriftsSource | None = None


def set_open_drifts_source(source: OpenDriftsSource | None) -> None:
    """The engine: the function the open-drifts gauge calls at each collection (None: unregister).

    It runs on the collecting thread (a scrape, the OTLP reader), so it must only read.
    """
    global _open_drifts_source
    _open_drifts_source = source


def install(provider: MeterProvider, depth: Callable[[], dict[str, int]] | None = None) -> Metrics:
    global _current
    with _lock:
        _current = Metrics(provider, depth)
        return _current


def uninstall(metrics: Metrics) -> None:
    global _current
    with _lock:
        if _current is metrics:
            _current = None


def make_provider(resource: Resource, readers: list[MetricReader]) -> MeterProvider:
    return MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)


def record_reconcile(control: str, seconds: float) -> None:
    """The engine: how long one control's pass took (observe + evaluate + remediate)."""
    if _current is not None:
        _current.record_reconcile(control, seconds)


def record_event(event: Event) -> None:
    if _current is not None:
        _current.record_event(event)
