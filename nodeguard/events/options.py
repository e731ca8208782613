"""How events leave the node: exporters and spool settings, from OpenTelemetry's env and `nodeguard run` flags.

The OTLP settings are the OpenTelemetry SDK's own variables (`OTEL_EXPORTER_OTLP_*`), so a
cluster that already configures collectors that way configures nodeguard too; each has a flag
of the same meaning, and a flag beats the variable. OTLP is on when an endpoint is set
(`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`): an
agent with no collector configured must not fill its spool with events for localhost.

Each setting's flag, variables and default are declared once, in nodeguard.settings; the
variables are read there too (`Setting.read`), and here only through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nodeguard import settings
from nodeguard.settings import MIN_SPOOL_BYTES, OtlpProtocol, Setting, parse_headers

# The settings this module reads (each one's flag, variables and default are declared in nodeguard.settings).
SETTINGS: tuple[Setting, ...] = settings.EXPORT

__all__ = ["MIN_SPOOL_BYTES", "SETTINGS", "ExportOptions", "OtlpProtocol", "Setting", "export_options_from_flags",
           "parse_headers"]


@dataclass(frozen=True)
class ExportOptions:
    host_root: Path = settings.HOST_ROOT.default
    # JSON lines (`-` for stdout) and OCSF JSON lines; None: off (`nodeguard run` resolves its --events-file
    # itself, to settings.EVENTS_FILE.default "-" when neither flag nor variable is given).
    events_file: str | None = None
    ocsf_file: str | None = None
    # OTLP: base endpoint (…:4317 for grpc, …:4318 for http/protobuf); signal-specific ones win.
    otlp_endpoint: str | None = None
    otlp_logs_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_protocol: OtlpProtocol = settings.OTLP_PROTOCOL.default
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
    metrics: bool = settings.METRICS.default
    metrics_interval: float = settings.METRICS_INTERVAL.default
    spool_max_bytes: int = settings.SPOOL_MAX_BYTES.default
    aggregate_seconds: float = settings.AGGREGATE_SECONDS.default
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = settings.RETRY_MAX_SECONDS.default
    retry_after_max_seconds: float = settings.RETRY_AFTER_MAX_SECONDS.default
    close_timeout_seconds: float = settings.CLOSE_TIMEOUT_SECONDS.default

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
