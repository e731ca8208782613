"""Events as OpenTelemetry log records over OTLP (gRPC or HTTP/protobuf), with a delivery verdict.

The SDK's BatchLogRecordProcessor forgets a batch whose export failed; the spool cannot allow
that. So the records are made the SDK's way (`Logger.emit(event_name=...)` on a LoggerProvider
carrying our resource) but collected by a processor of ours, encoded by the SDK's own OTLP
encoder (`encode_logs`), and sent by transport.py, which bounds each request in time and memory
(the SDK's exporters do neither): an ok Delivery is the receiver's confirmation the spool waits
for before it lets an event go.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import OTLPMetricExporterMixin
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource

from nodeguard._version import __version__
from nodeguard.events.model import ATTR_RECORD_UID, Event, drop_nulls
from nodeguard.events.options import ExportOptions, OtlpProtocol
from nodeguard.events.resource import SCHEMA_URL
from nodeguard.events.transport import (
    LOGS,
    METRICS,
    GrpcSender,
    HttpSender,
    Sender,
    Signal,
    TlsFiles,
    client_ssl_context,
)
from nodeguard.events.worker import Delivery

log = logging.getLogger(__name__)

# ATTR_RECORD_UID (log.record.uid), the semantic conventions' unique id of a log record, is the one
# de-duplication key: the JSON lines carry it too (nodeguard/events/model.py).
SCOPE_NAME = "nodeguard"
# Seconds one export request may take in all, when neither --otlp-timeout nor OTEL_EXPORTER_OTLP_TIMEOUT says.
DEFAULT_TIMEOUT = 10.0


def make_resource(attributes: dict[str, str]) -> Resource:
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME; ours win.
    return Resource.create(attributes, schema_url=SCHEMA_URL)


def _signal_endpoint(options: ExportOptions, signal: str) -> str | None:
    specific = options.otlp_logs_endpoint if signal == "logs" else options.otlp_metrics_endpoint
    if specific:
        return specific
    if not options.otlp_endpoint:
        return None
    if options.otlp_protocol is OtlpProtocol.GRPC:
        return options.otlp_endpoint
    return options.otlp_endpoint.rstrip("/") + f"/v1/{signal}"


def _grpc_credentials(options: ExportOptions, endpoint: str) -> Any:
    """grpc.ChannelCredentials from our TLS files (or the system's CAs); None: plaintext.

    Plaintext as the SDK decides it: never for https://; else --otlp-insecure (or
    OTEL_EXPORTER_OTLP_INSECURE) when given; else when the endpoint says http://.
    """
    import grpc  # type: ignore[import-untyped]  # only with gRPC: HTTP-only agents skip loading it

    scheme = urlsplit(endpoint).scheme
    insecure = False if scheme == "https" else (
        options.otlp_insecure if options.otlp_insecure is not None else scheme == "http")
    if insecure:
        return None

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(root_certificates=read(options.otlp_certificate),
                                        private_key=read(options.otlp_client_key),
                                        certificate_chain=read(options.otlp_client_certificate))


def make_sender(options: ExportOptions, signal: Signal) -> Sender:
    """The transport of one signal: a total deadline per request, a capped response (transport.py)."""
    endpoint = _signal_endpoint(options, signal.name)
    if not endpoint:
        raise ValueError("no OTLP endpoint configured")
    timeout = options.otlp_timeout or DEFAULT_TIMEOUT
    if options.otlp_protocol is OtlpProtocol.GRPC:
        target = urlsplit(endpoint).netloc or endpoint  # grpc wants host:port
        return GrpcSender(target, signal, timeout=timeout, credentials=_grpc_credentials(options, endpoint),
                          headers=options.otlp_headers, compression=options.otlp_compression)
    tls = TlsFiles(options.otlp_certificate, options.otlp_client_certificate, options.otlp_client_key)
    context = client_ssl_context(tls, os.environ) if urlsplit(endpoint).scheme == "https" else None
    return HttpSender(endpoint, signal, timeout=timeout, headers=options.otlp_headers, ssl_context=context,
                      compression=options.otlp_compression)


class OtlpMetricExporter(MetricExporter, OTLPMetricExporterMixin):
    """The agent's metrics over the same bounded transport (a flooding collector floods both signals).

    Temporality and histogram aggregation follow OTEL_EXPORTER_OTLP_METRICS_* as the SDK's own
    exporters do (the SDK's mixin reads them).
    """

    def __init__(self, options: ExportOptions, sender: Sender | None = None) -> None:
        self._common_configuration()
        self._sender = sender or make_sender(options, METRICS)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        delivery = self._sender.send(encode_metrics(metrics_data).SerializeToString(), timeout_millis / 1000)
        if not delivery.ok:
            log.warning("OTLP metrics export failed: %s", delivery.reason)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._sender.close()


def make_metric_exporter(options: ExportOptions) -> MetricExporter:
    return OtlpMetricExporter(options)


class _Collect(LogRecordProcessor):
    """Keeps what Logger.emit produced, as the SDK's processors would hand it to an exporter."""

    def __init__(self) -> None:
        self._local = threading.local()

    def take(self) -> list[ReadableLogRecord]:
        out: list[ReadableLogRecord] = getattr(self._local, "records", [])
        self._local.records = []
        return out

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        records: list[ReadableLogRecord] = getattr(self._local, "records", None) or []
        records.append(ReadableLogRecord(
            log_record=log_record.log_record,
            resource=log_record.resource if log_record.resource is not None else Resource.create({}),
            instrumentation_scope=log_record.instrumentation_scope,
            limits=log_record.limits,
        ))
        self._local.records = records

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OtlpExporter:
    """One OTLP destination for the spool: `export` returns True only when the receiver confirmed."""

    name = "otlp"

    def __init__(self, options: ExportOptions, resource: Resource, sender: Sender | None = None) -> None:
        self._collect = _Collect()
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_log_record_processor(self._collect)
        self._logger = self._provider.get_logger(SCOPE_NAME, __version__, schema_url=SCHEMA_URL)
        self._sender = sender or make_sender(options, LOGS)
        self._retry_after_max = options.retry_after_max_seconds

    def records(self, events: Sequence[Event]) -> list[ReadableLogRecord]:
        self._collect.take()
        observed = time.time_ns()
        for event in events:
            # OTLP has no null: an attribute without a value is left out (events spooled by older
            # versions may hold some).
            attributes = drop_nulls(dict(event.attributes))
            attributes[ATTR_RECORD_UID] = event.id
            self._logger.emit(
                timestamp=event.time_unix_nano,
                observed_timestamp=observed,
                severity_number=SeverityNumber(event.severity_number),
                severity_text=event.severity,
                body=event.body,
                attributes=attributes,
                event_name=event.name.value,
            )
        return self._collect.take()

    def export(self, events: Sequence[Event]) -> Delivery:
        """One request with a total deadline; ok only on the collector's complete, unrejecting answer."""
        delivery = self._sender.send(encode_logs(self.records(events)).SerializeToString())
        if delivery.retry_after is not None and delivery.retry_after > self._retry_after_max:
            # A collector may ask for a pause, not for a day of silence.
            delivery = replace(delivery, retry_after=self._retry_after_max)
        return delivery

    def shutdown(self) -> None:
        self._sender.close()  # cuts a request in flight: close() never waits on a collector
        self._provider.shutdown()
