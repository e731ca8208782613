"""The one EventSink the engine talks to: aggregate -> spool (durable, chained) -> exporters.

    engine.emit(event) --> metrics (true counts) --> Aggregator (repeats folded)
        --> Spool.append (chained, committed: durable when emit returns, or, in the agent, written
            when emit returns and made durable by one sync() per pass: a group commit)
        --> one ExportWorker thread per exporter: OTLP, JSON-lines file, OCSF file

`close()` folds what the aggregator still holds into the spool, lets each exporter deliver
for up to `close_timeout_seconds`, then stops it; whatever was not confirmed stays in the spool
and goes out after the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

from nodeguard.events import metrics as metrics_mod
from nodeguard.events.aggregate import Aggregator
from nodeguard.events.files import jsonl_exporter, ocsf_exporter
from nodeguard.events.model import Event
from nodeguard.events.options import ExportOptions
from nodeguard.events.otlp import OtlpExporter, make_metric_exporter, make_resource
from nodeguard.events.resource import resource_attributes
from nodeguard.events.spool import Spool
from nodeguard.events.worker import Backoff, Exporter, ExportWorker

log = logging.getLogger(__name__)

SPOOL_FOLDER = "events"


class EventPipeline:
    def __init__(self, spool: Spool, exporters: Sequence[Exporter], options: ExportOptions,
                 metrics: metrics_mod.Metrics | None = None) -> None:
        self.spool = spool
        self.options = options
        self.metrics = metrics
        self.workers = [
            ExportWorker(spool, exp, Backoff(options.retry_initial_seconds, options.retry_max_seconds),
                         on_failure=self._on_failure, on_delivered=self._on_delivered)
            for exp in exporters
        ]
        self.aggregator = Aggregator(options.aggregate_seconds, self._spool_event, store=spool)
        self._closed = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="nodeguard-aggregate", daemon=True)
        recovered = self.aggregator.recover()
        if recovered:
            log.info("sent %d summaries of repeats the previous run had counted", recovered)
        for worker in self.workers:
            worker.start()
        self._ticker.start()

    # -- EventSink ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Durable on return (unless folded into an aggregate, or after enable_group_commit(): then
        written on return, durable after the next sync()); raises if the spool cannot store it."""
        if self._closed.is_set():
            raise RuntimeError("the event pipeline is closed")
        if self.metrics is not None:
            self.metrics.record_event(event)
        self.aggregator.offer(event)

    def enable_group_commit(self) -> None:
        """emit() then only writes (a SIGKILL cannot lose the event); sync() makes it durable."""
        self.spool.defer_sync()

    def sync(self) -> None:
        """One fsync for every event emitted so far (the agent calls it once per pass)."""
        if not self._closed.is_set():
            self.aggregator.persist()
            self.spool.sync()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        deadline = time.monotonic() + self.options.close_timeout_seconds
        self._ticker.join(2.0)
        try:
            self.aggregator.flush_all()
        except Exception:
            log.exception("could not spool the last aggregated events")
        # Each worker delivers until the shared deadline; they run in parallel, so stop them in parallel.
        stoppers = [threading.Thread(target=w.stop, args=(deadline,), daemon=True) for w in self.workers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(max(0.0, deadline - time.monotonic()) + 6.0)
        if self.metrics is not None:
            self.metrics.shutdown(max(0.5, deadline - time.monotonic()))
            metrics_mod.uninstall(self.metrics)
        self.spool.close()

    # -- internals ---------------------------------------------------------------------------

    def _spool_event(self, event: Event) -> None:
        self.spool.append(event)

    def _tick(self) -> None:
        while not self._closed.wait(1.0):
            try:
                self.aggregator.flush_due()
                self.aggregator.persist()
                # Summaries spooled here are made durable here: no engine pass may follow soon.
                # (A no-op when nothing was appended since the last sync, or without group commit.)
                self.spool.sync()
            except Exception:
                log.exception("could not spool aggregated events")

    def _on_failure(self, exporter: str) -> None:
        if self.metrics is not None:
            self.metrics.record_export_failure(exporter)

    def _on_delivered(self, exporter: str, events: Sequence[Event]) -> None:
        if self.metrics is not None:
            self.metrics.record_delivered(exporter, len(events))

    def depths(self) -> dict[str, int]:
        return {w.name: self.spool.depth(w.name) for w in self.workers}


def build_pipeline(options: ExportOptions, state_dir: Path,
                   metric_readers: Sequence[MetricReader] = ()) -> EventPipeline:
    """The agent's event sink, as `options` configure it. `metric_readers`: extra readers (tests)."""
    resource = make_resource(resource_attributes(options.host_root))
    host = {k: str(v) for k, v in resource.attributes.items() if k.startswith("host.")}
    exporters: list[Exporter] = []
    if options.otlp_enabled:
        exporters.append(OtlpExporter(options, resource))
    if options.events_file:
        # Each JSON line says who is speaking (host.name, host.id, k8s.node.name), as OTLP's resource does.
        who = {k: str(v) for k, v in resource.attributes.items() if not k.startswith("telemetry.")}
        exporters.append(jsonl_exporter(options.events_file, who))
    if options.ocsf_file:
        exporters.append(ocsf_exporter(options.ocsf_file, host))

    readers: list[MetricReader] = list(metric_readers)
    if options.metrics and options.otlp_enabled:
        readers.append(PeriodicExportingMetricReader(make_metric_exporter(options),
                                                     export_interval_millis=options.metrics_interval * 1000))
    holder: dict[str, EventPipeline] = {}

    def depth() -> dict[str, int]:
        pipeline = holder.get("p")
        return pipeline.depths() if pipeline is not None else {}

    metrics = metrics_mod.install(metrics_mod.make_provider(resource, readers), depth) if readers else None

    def on_drop(count: int) -> None:
        if metrics is not None:
            metrics.record_dropped(count)

    try:
        spool = Spool(state_dir / SPOOL_FOLDER, [e.name for e in exporters], max_bytes=options.spool_max_bytes,
                      on_drop=on_drop)
    except BaseException:
        for exp in exporters:
            exp.shutdown()
        if metrics is not None:
            metrics.shutdown(1.0)
            metrics_mod.uninstall(metrics)
        raise
    pipeline = EventPipeline(spool, exporters, options, metrics)
    holder["p"] = pipeline
    return pipeline
