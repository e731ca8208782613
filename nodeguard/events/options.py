"""How events leave the node: exporters and spool settings, from OpenTelemetry's env and `nodeguard run` flags.

The OTLP settings are the OpenTelemetry SDK's own variables (`OTEL_EXPORTER_OTLP_*`), so a
cluster that already configures collectors that way configures nodeguard too; each has a flag
of the same meaning, and a flag beats the variable. OTLP is on when an endpoint is set
(`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`): an
agent with no collector configured must not fill its spool with events for localhost.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from nodeguard.events.spool import DEFAULT_MAX_BYTES


class OtlpProtocol(enum.StrEnum):
    GRPC = "grpc"
    HTTP_PROTOBUF = "http/protobuf"


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def parse_headers(value: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (W3C baggage style, URL-encoded values), as OTEL_EXPORTER_OTLP_HEADERS."""
    # Imported here: the CLI imports this module for its flags, and `version` or `health` must not
    # load opentelemetry.
    from opentelemetry.util.re import parse_env_headers

    return dict(parse_env_headers(value, liberal=True))


@dataclass(frozen=True)
class ExportOptions:
    host_root: Path = Path("/")
    # JSON lines (`-` for stdout) and OCSF JSON lines; None: off.
    events_file: str | None = None
    ocsf_file: str | None = None
    # OTLP: base endpoint (…:4317 for grpc, …:4318 for http/protobuf); signal-specific ones win.
    otlp_endpoint: str | None = None
    otlp_logs_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_protocol: OtlpProtocol = OtlpProtocol.HTTP_PROTOBUF
    otlp_headers: dict[str, str] = field(default_factory=dict)
    otlp_certificate: Path | None = None
    otlp_client_key: Path | None = None
    otlp_client_certificate: Path | None = None
    # gRPC only: None lets the endpoint's scheme decide (http:// -> plaintext).
    otlp_insecure: bool | None = None
    # Total deadline of one export request, seconds (connect, send, the whole response); None: 10 s.
    otlp_timeout: float | None = None
    # Request body compression: "gzip", "deflate" (HTTP only) or None.
    otlp_compression: str | None = None
    metrics: bool = True
    metrics_interval: float = 60.0
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    # Identical drifts within this window are sent once, then once more with a count (0: off).
    aggregate_seconds: float = 60.0
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    # A collector's Retry-After (HTTP) or RetryInfo (gRPC) is obeyed up to this many seconds.
    retry_after_max_seconds: float = 60.0
    # What close() (SIGTERM) gives the exporters to deliver; an export in flight is cut at the end. 2 s
    # leaves room for the engine's stop and the metrics' last export inside the 5 s SIGTERM budget;
    # what is not delivered by then stays spooled for the next start.
    close_timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        # Refused here, at the edge, with the setting's name: the exporter would only fail at every send.
        if self.otlp_protocol is OtlpProtocol.HTTP_PROTOBUF:
            for name in ("otlp_endpoint", "otlp_logs_endpoint", "otlp_metrics_endpoint"):
                value = getattr(self, name)
                if value and urlsplit(value).scheme not in ("http", "https"):
                    raise ValueError(f"{name}: an OTLP/HTTP endpoint is an http:// or https:// URL, not {value!r}")

    @property
    def otlp_enabled(self) -> bool:
        return bool(self.otlp_endpoint or self.otlp_logs_endpoint)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ExportOptions:
        """The OTEL_* variables (and NODEGUARD_* ones for the rest), then `overrides` that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            values["otlp_endpoint"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        if env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
            values["otlp_logs_endpoint"] = env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"]
        if env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            values["otlp_metrics_endpoint"] = env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]
        protocol = env.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol:
            values["otlp_protocol"] = OtlpProtocol(protocol.strip())
        if env.get("OTEL_EXPORTER_OTLP_HEADERS"):
            values["otlp_headers"] = parse_headers(env["OTEL_EXPORTER_OTLP_HEADERS"])
        for var, key in (("OTEL_EXPORTER_OTLP_CERTIFICATE", "otlp_certificate"),
                         ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "otlp_client_key"),
                         ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "otlp_client_certificate")):
            if env.get(var):
                values[key] = Path(env[var])
        timeout = env.get("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
        if timeout:  # seconds, as the Python SDK has always read it
            values["otlp_timeout"] = float(timeout)
        compression = env.get("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION") or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        if compression and compression.strip().lower() != "none":
            if compression.strip().lower() not in ("gzip", "deflate"):
                raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION must be gzip, deflate or none, not {compression!r}")
            values["otlp_compression"] = compression.strip().lower()
        if env.get("OTEL_EXPORTER_OTLP_INSECURE"):
            values["otlp_insecure"] = _bool(env["OTEL_EXPORTER_OTLP_INSECURE"])
        if env.get("OTEL_METRICS_EXPORTER", "").strip() == "none":
            values["metrics"] = False
        if env.get("OTEL_METRIC_EXPORT_INTERVAL"):  # milliseconds, per the OpenTelemetry spec
            values["metrics_interval"] = float(env["OTEL_METRIC_EXPORT_INTERVAL"]) / 1000
        if env.get("NODEGUARD_EVENTS_FILE"):
            values["events_file"] = env["NODEGUARD_EVENTS_FILE"]
        if env.get("NODEGUARD_OCSF_FILE"):
            values["ocsf_file"] = env["NODEGUARD_OCSF_FILE"]
        if env.get("NODEGUARD_HOST_ROOT"):
            values["host_root"] = Path(env["NODEGUARD_HOST_ROOT"])
        numeric = {"NODEGUARD_SPOOL_MAX_BYTES": ("spool_max_bytes", int),
                   "NODEGUARD_AGGREGATE_SECONDS": ("aggregate_seconds", float),
                   "NODEGUARD_EXPORT_RETRY_MAX_SECONDS": ("retry_max_seconds", float),
                   "NODEGUARD_EXPORT_RETRY_AFTER_MAX_SECONDS": ("retry_after_max_seconds", float),
                   "NODEGUARD_EXPORT_CLOSE_TIMEOUT_SECONDS": ("close_timeout_seconds", float)}
        for var, (key, kind) in numeric.items():
            if env.get(var):
                values[key] = kind(env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"unknown export options: {sorted(unknown)}")
        return cls(**values)

    def with_(self, **changes: Any) -> ExportOptions:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# -- `nodeguard run` flags ------------------------------------------------------------------------
# Each flag reads the same variable the OpenTelemetry SDK reads; `export_options_from_flags` turns
# the parsed values into ExportOptions.

OtlpEndpointOpt = Annotated[str | None, typer.Option(
    "--otlp-endpoint", envvar="OTEL_EXPORTER_OTLP_ENDPOINT", rich_help_panel="Event export",
    help="OTLP collector, e.g. http://collector:4318 (http/protobuf) or http://collector:4317 (grpc). "
         "Unset: no OTLP.")]
OtlpProtocolOpt = Annotated[OtlpProtocol | None, typer.Option(
    "--otlp-protocol", envvar="OTEL_EXPORTER_OTLP_PROTOCOL", rich_help_panel="Event export",
    help="grpc or http/protobuf (default).")]
OtlpHeadersOpt = Annotated[str | None, typer.Option(
    "--otlp-headers", envvar="OTEL_EXPORTER_OTLP_HEADERS", rich_help_panel="Event export",
    help="Extra request headers: key1=value1,key2=value2 (URL-encoded values).")]
OtlpCertificateOpt = Annotated[Path | None, typer.Option(
    "--otlp-certificate", envvar="OTEL_EXPORTER_OTLP_CERTIFICATE", rich_help_panel="Event export",
    help="CA bundle (PEM) that verifies the collector's certificate.")]
OtlpClientKeyOpt = Annotated[Path | None, typer.Option(
    "--otlp-client-key", envvar="OTEL_EXPORTER_OTLP_CLIENT_KEY", rich_help_panel="Event export",
    help="Client private key (PEM) for mutual TLS.")]
OtlpClientCertificateOpt = Annotated[Path | None, typer.Option(
    "--otlp-client-certificate", envvar="OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", rich_help_panel="Event export",
    help="Client certificate (PEM) for mutual TLS.")]
OtlpInsecureOpt = Annotated[bool | None, typer.Option(
    "--otlp-insecure/--otlp-secure", envvar="OTEL_EXPORTER_OTLP_INSECURE", rich_help_panel="Event export",
    help="gRPC: plaintext even without an http:// endpoint / TLS even with one. Default: the scheme decides.")]
OtlpTimeoutOpt = Annotated[float | None, typer.Option(
    "--otlp-timeout", min=0.1, rich_help_panel="Event export",
    help="Total seconds one export request may take, response included (default: OTEL_EXPORTER_OTLP_TIMEOUT "
         "or 10).")]
OcsfFileOpt = Annotated[str | None, typer.Option(
    "--ocsf-file", envvar="NODEGUARD_OCSF_FILE", rich_help_panel="Event export",
    help="Also write each event as an OCSF Compliance Finding (class 2003) JSON line here ('-': stdout).")]
SpoolMaxBytesOpt = Annotated[int | None, typer.Option(
    "--spool-max-bytes", envvar="NODEGUARD_SPOOL_MAX_BYTES", min=65536, rich_help_panel="Event export",
    help=f"Cap of the durable event spool; when full the oldest events are dropped (default {DEFAULT_MAX_BYTES}).")]
AggregateSecondsOpt = Annotated[float | None, typer.Option(
    "--aggregate-seconds", envvar="NODEGUARD_AGGREGATE_SECONDS", min=0, rich_help_panel="Event export",
    help="Identical drifts repeated within this window are sent once plus one summary with a count "
         "(default 60; 0: off).")]
MetricsOpt = Annotated[bool | None, typer.Option(
    "--metrics/--no-metrics", rich_help_panel="Event export",
    help="Send metrics over OTLP too, when an OTLP endpoint is set (default: on).")]


def export_options_from_flags(
    *,
    host_root: Path,
    events_file: str | None,
    otlp_endpoint: str | None = None,
    otlp_protocol: OtlpProtocol | None = None,
    otlp_headers: str | None = None,
    otlp_certificate: Path | None = None,
    otlp_client_key: Path | None = None,
    otlp_client_certificate: Path | None = None,
    otlp_insecure: bool | None = None,
    otlp_timeout: float | None = None,
    ocsf_file: str | None = None,
    spool_max_bytes: int | None = None,
    aggregate_seconds: float | None = None,
    metrics: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> ExportOptions:
    return ExportOptions.from_env(
        env,
        host_root=host_root,
        events_file=events_file,
        otlp_endpoint=otlp_endpoint,
        otlp_protocol=otlp_protocol,
        otlp_headers=parse_headers(otlp_headers) if otlp_headers else None,
        otlp_certificate=otlp_certificate,
        otlp_client_key=otlp_client_key,
        otlp_client_certificate=otlp_client_certificate,
        otlp_insecure=otlp_insecure,
        otlp_timeout=otlp_timeout,
        ocsf_file=ocsf_file,
        spool_max_bytes=spool_max_bytes,
        aggregate_seconds=aggregate_seconds,
        metrics=metrics,
    )
