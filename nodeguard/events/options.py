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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from nodeguard.events.spool import DEFAULT_MAX_BYTES


class OtlpProtocol(enum.StrEnum):
    GRPC = "grpc"
    HTTP_PROTOBUF = "http/protobuf"


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
        """The settings reader: for each field, `overrides` (the flags) when not None, else its
        variable (SETTINGS), else the default. A variable that does not parse is a ValueError
        naming it."""
        env = os.environ if env is None else env
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown export options: {sorted(unknown)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        for setting in SETTINGS:
            if setting.field not in values:
                value = setting.read(env)
                if value is not None:
                    values[setting.field] = value
        return cls(**values)

    def with_(self, **changes: Any) -> ExportOptions:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# -- the variables -------------------------------------------------------------------------------
# Each setting's variables are read here and only here: the `nodeguard run` flags below carry no
# typer `envvar` (two readers disagreed: typer handed OTEL_EXPORTER_OTLP_PROTOCOL over as a flag,
# which beat OTEL_EXPORTER_OTLP_LOGS_PROTOCOL). A flag given beats the variable, which beats the
# default.


@dataclass(frozen=True)
class Setting:
    """One export setting: its ExportOptions field, the variables that set it (the first one set
    wins: signal-specific before generic), how to read one (None: as if unset)."""

    field: str
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    minimum: float | None = None  # the flag's own `min`, so the variable gets the same check

    def read(self, env: Mapping[str, str]) -> Any:
        for var in self.env:
            raw = env.get(var)
            if not raw:
                continue
            try:
                value = self.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
            if self.minimum is not None and value is not None and value < self.minimum:
                raise ValueError(f"{var}: {raw} is below the minimum {self.minimum:g}")
            return value
        return None

    @property
    def help(self) -> str:
        """The variable(s), for the flag's --help."""
        # Not "[env var: X]" as typer writes it: rich would take the brackets for markup.
        return f" Env: {' or '.join(self.env)}."


def _strict_bool(value: str) -> bool:
    # click's own spellings (what typer accepted for these variables): anything else is an error.
    word = value.strip().lower()
    if word in ("1", "true", "t", "yes", "y", "on"):
        return True
    if word in ("0", "false", "f", "no", "n", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _compression(value: str) -> str | None:
    word = value.strip().lower()
    if word == "none":
        return None
    if word not in ("gzip", "deflate"):
        raise ValueError(f"must be gzip, deflate or none, not {value!r}")
    return word


def _metrics_exporter(value: str) -> bool | None:
    return False if value.strip() == "none" else None  # any other exporter name: the default (on)


MIN_SPOOL_BYTES = 65536

SETTINGS: tuple[Setting, ...] = (
    Setting("otlp_endpoint", ("OTEL_EXPORTER_OTLP_ENDPOINT",), str),
    Setting("otlp_logs_endpoint", ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",), str),
    Setting("otlp_metrics_endpoint", ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",), str),
    Setting("otlp_protocol", ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
            lambda v: OtlpProtocol(v.strip())),
    Setting("otlp_headers", ("OTEL_EXPORTER_OTLP_HEADERS",), parse_headers),
    Setting("otlp_certificate", ("OTEL_EXPORTER_OTLP_CERTIFICATE",), Path),
    Setting("otlp_client_key", ("OTEL_EXPORTER_OTLP_CLIENT_KEY",), Path),
    Setting("otlp_client_certificate", ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",), Path),
    Setting("otlp_insecure", ("OTEL_EXPORTER_OTLP_INSECURE",), _strict_bool),
    # Seconds, as the Python SDK has always read it.
    Setting("otlp_timeout", ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), float),
    Setting("otlp_compression", ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
            _compression),
    Setting("metrics", ("OTEL_METRICS_EXPORTER",), _metrics_exporter),
    # Milliseconds, per the OpenTelemetry spec.
    Setting("metrics_interval", ("OTEL_METRIC_EXPORT_INTERVAL",), lambda v: float(v) / 1000),
    Setting("events_file", ("NODEGUARD_EVENTS_FILE",), str),
    Setting("ocsf_file", ("NODEGUARD_OCSF_FILE",), str),
    Setting("host_root", ("NODEGUARD_HOST_ROOT",), Path),
    Setting("spool_max_bytes", ("NODEGUARD_SPOOL_MAX_BYTES",), int, minimum=MIN_SPOOL_BYTES),
    Setting("aggregate_seconds", ("NODEGUARD_AGGREGATE_SECONDS",), float, minimum=0),
    Setting("retry_max_seconds", ("NODEGUARD_EXPORT_RETRY_MAX_SECONDS",), float),
    Setting("retry_after_max_seconds", ("NODEGUARD_EXPORT_RETRY_AFTER_MAX_SECONDS",), float),
    Setting("close_timeout_seconds", ("NODEGUARD_EXPORT_CLOSE_TIMEOUT_SECONDS",), float),
)
_BY_FIELD = {s.field: s for s in SETTINGS}


def _env(field_name: str) -> str:
    return _BY_FIELD[field_name].help


# -- `nodeguard run` flags ------------------------------------------------------------------------
# Each flag means what its variable (SETTINGS) means; `export_options_from_flags` hands the flags
# given to the one reader, ExportOptions.from_env.

OtlpEndpointOpt = Annotated[str | None, typer.Option(
    "--otlp-endpoint", rich_help_panel="Event export",
    help="OTLP collector, e.g. http://collector:4318 (http/protobuf) or http://collector:4317 (grpc). "
         "Unset: no OTLP." + _env('otlp_endpoint'))]
OtlpProtocolOpt = Annotated[OtlpProtocol | None, typer.Option(
    "--otlp-protocol", rich_help_panel="Event export",
    help="grpc or http/protobuf (default)." + _env('otlp_protocol'))]
OtlpHeadersOpt = Annotated[str | None, typer.Option(
    "--otlp-headers", rich_help_panel="Event export",
    help="Extra request headers: key1=value1,key2=value2 (URL-encoded values)." + _env('otlp_headers'))]
OtlpCertificateOpt = Annotated[Path | None, typer.Option(
    "--otlp-certificate", rich_help_panel="Event export",
    help="CA bundle (PEM) that verifies the collector's certificate." + _env('otlp_certificate'))]
OtlpClientKeyOpt = Annotated[Path | None, typer.Option(
    "--otlp-client-key", rich_help_panel="Event export",
    help="Client private key (PEM) for mutual TLS." + _env('otlp_client_key'))]
OtlpClientCertificateOpt = Annotated[Path | None, typer.Option(
    "--otlp-client-certificate", rich_help_panel="Event export",
    help="Client certificate (PEM) for mutual TLS." + _env('otlp_client_certificate'))]
OtlpInsecureOpt = Annotated[bool | None, typer.Option(
    "--otlp-insecure/--otlp-secure", rich_help_panel="Event export",
    help="gRPC: plaintext even without an http:// endpoint / TLS even with one. Default: the scheme decides."
         + _env('otlp_insecure'))]
OtlpTimeoutOpt = Annotated[float | None, typer.Option(
    "--otlp-timeout", min=0.1, rich_help_panel="Event export",
    help="Total seconds one export request may take, response included (default 10)." + _env('otlp_timeout'))]
OcsfFileOpt = Annotated[str | None, typer.Option(
    "--ocsf-file", rich_help_panel="Event export",
    help="Also write each event as an OCSF Compliance Finding (class 2003) JSON line here ('-': stdout)."
         + _env('ocsf_file'))]
SpoolMaxBytesOpt = Annotated[int | None, typer.Option(
    "--spool-max-bytes", min=MIN_SPOOL_BYTES, rich_help_panel="Event export",
    help=f"Cap of the durable event spool; when full the oldest events are dropped (default {DEFAULT_MAX_BYTES})."
         + _env('spool_max_bytes'))]
AggregateSecondsOpt = Annotated[float | None, typer.Option(
    "--aggregate-seconds", min=0, rich_help_panel="Event export",
    help="Identical drifts repeated within this window are sent once plus one summary with a count "
         "(default 60; 0: off)." + _env('aggregate_seconds'))]
MetricsOpt = Annotated[bool | None, typer.Option(
    "--metrics/--no-metrics", rich_help_panel="Event export",
    help="Send metrics over OTLP too, when an OTLP endpoint is set (default: on; OTEL_METRICS_EXPORTER=none: "
         "off).")]


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
