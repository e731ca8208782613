"""Events as OpenTelemetry log records over OTLP (gRPC or HTTP/protobuf), with a delivery verdict.

The SDK's BatchLogRecordProcessor forgets a batch whose export failed; the spool cannot allow
that. So the records are made the SDK's way (`Logger.emit(event_name=...)` on a LoggerProvider
carrying our resource) but collected by a processor of ours, and this module calls the SDK's
OTLP exporter `export()` itself: LogRecordExportResult.SUCCESS is the receiver's confirmation
the spool waits for before it lets an event go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource

from nodeguard._version import __version__
from nodeguard.events.model import ATTR_RECORD_UID, Event, drop_nulls
from nodeguard.events.options import ExportOptions, OtlpProtocol
from nodeguard.events.resource import SCHEMA_URL

# ATTR_RECORD_UID (log.record.uid), the semantic conventions' unique id of a log record, is the one
# de-duplication key: the JSON lines carry it too (nodeguard/events/model.py).
SCOPE_NAME = "nodeguard"


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


def _grpc_credentials(options: ExportOptions) -> Any:
    """grpc.ChannelCredentials from our TLS files; None: plaintext, or the system's CAs (the SDK's default)."""
    if options.otlp_insecure or not (options.otlp_certificate or options.otlp_client_certificate):
        return None
    import grpc  # type: ignore[import-untyped]  # only with gRPC: HTTP-only agents skip loading it

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(root_certificates=read(options.otlp_certificate),
                                        private_key=read(options.otlp_client_key),
                                        certificate_chain=read(options.otlp_client_certificate))


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _http_session() -> Any:
    """A requests session that keeps the CA file it was given.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set in many images) override a session's
    `verify`, which silently replaces OTEL_EXPORTER_OTLP_CERTIFICATE with the system bundle and
    fails the handshake with a private CA. An explicit CA file wins here; without one the
    environment still applies.
    """
    import requests  # the SDK's HTTP exporter already depends on it

    class KeepCaFile(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    return KeepCaFile()


def _grpc_kwargs(options: ExportOptions, signal: str) -> dict[str, Any]:
    return {"endpoint": _signal_endpoint(options, signal), "insecure": options.otlp_insecure,
            "credentials": _grpc_credentials(options), "headers": options.otlp_headers or None,
            "timeout": options.otlp_timeout}


def _http_kwargs(options: ExportOptions, signal: str) -> dict[str, Any]:
    return {"endpoint": _signal_endpoint(options, signal), "certificate_file": _str(options.otlp_certificate),
            "client_key_file": _str(options.otlp_client_key),
            "client_certificate_file": _str(options.otlp_client_certificate),
            "headers": options.otlp_headers or None, "timeout": options.otlp_timeout, "session": _http_session()}


def make_log_exporter(options: ExportOptions) -> LogRecordExporter:
    # Imported per protocol: an HTTP-only agent never loads grpc (about 12 MiB).
    if options.otlp_protocol is OtlpProtocol.GRPC:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter

        return GrpcLogExporter(**_grpc_kwargs(options, "logs"))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter

    return HttpLogExporter(**_http_kwargs(options, "logs"))


def make_metric_exporter(options: ExportOptions) -> MetricExporter:
    if options.otlp_protocol is OtlpProtocol.GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter(**_grpc_kwargs(options, "metrics"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter(**_http_kwargs(options, "metrics"))


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

    def __init__(self, options: ExportOptions, resource: Resource,
                 exporter: LogRecordExporter | None = None) -> None:
        self._collect = _Collect()
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self._provider.add_log_record_processor(self._collect)
        self._logger = self._provider.get_logger(SCOPE_NAME, __version__, schema_url=SCHEMA_URL)
        self._exporter = exporter or make_log_exporter(options)

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

    def export(self, events: Sequence[Event]) -> bool:
        result = self._exporter.export(self.records(events))
        return result is LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]
        self._provider.shutdown()
