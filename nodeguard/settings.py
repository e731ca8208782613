"""Every setting of the `nodeguard` command: its flag, its variable(s), its default, and the one reader.

A flag given beats its variable, the variable beats the default. `Setting.read` is the only code
that reads a setting's variable: the CLI builds its options from this table (nodeguard/cli/flags.py)
and gives click no `envvar` of its own, `ExportOptions.from_env` reads the export settings through
it, and the pod's probe (`python -m nodeguard.health`) reads `NODEGUARD_STATE_DIR` through it.

Standard library only: the probe imports this module, and it must stay cheap.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class OtlpProtocol(enum.StrEnum):
    GRPC = "grpc"
    HTTP_PROTOBUF = "http/protobuf"


@dataclass(frozen=True)
class Setting:
    """One setting: its name (an ExportOptions field where it is an export setting), the variables
    that set it (the first one set wins: signal-specific before generic), how to read one.

    `flag`: the option's declarations as click takes them ("--metrics/--no-metrics"); None: a
    variable only. `default`: what applies when neither is given. `choices`: the only values.
    """

    field: str
    env: tuple[str, ...]
    parse: Callable[[str], Any] = str
    minimum: float | None = None  # the flag's own minimum, so the variable gets the same check
    flag: str | None = None
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()

    def read(self, env: Mapping[str, str] | None = None) -> Any:
        """The value of the first variable set (None: none is), parsed; a ValueError names the variable."""
        env = os.environ if env is None else env
        for var in self.env:
            raw = env.get(var)
            if not raw:
                continue
            try:
                if self.choices and raw.strip() not in self.choices:
                    raise ValueError(f"{raw!r} is not one of {', '.join(map(repr, self.choices))}")
                value = self.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
            if self.minimum is not None and value is not None and value < self.minimum:
                raise ValueError(f"{var}: {raw} is below the minimum {self.minimum:g}")
            return value
        return None

    def resolve(self, given: Any, env: Mapping[str, str] | None = None) -> Any:
        """The flag's value when given, else the variable's, else the default."""
        if given is not None:
            return given
        value = self.read(env)
        return self.default if value is None else value

    @property
    def env_help(self) -> str:
        """The variable(s), for the flag's --help."""
        return f" Env: {' or '.join(self.env)}." if self.env else ""


def parse_headers(value: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (W3C baggage style, URL-encoded values), as OTEL_EXPORTER_OTLP_HEADERS."""
    # Imported here: `version`, `health` and `check` must not load opentelemetry.
    from opentelemetry.util.re import parse_env_headers

    return dict(parse_env_headers(value, liberal=True))


def _strict_bool(value: str) -> bool:
    # click's own spellings for a boolean: anything else is an error.
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


def _stripped(value: str) -> str:
    return value.strip()


MIN_SPOOL_BYTES = 65536
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024

# -- every command's settings ---------------------------------------------------------------------
HOST_ROOT = Setting("host_root", ("NODEGUARD_HOST_ROOT",), Path, flag="--host-root", default=Path("/"),
                    help="Where the host's filesystem is: / from a shell, /host in a pod.")
POLICY = Setting("policy", ("NODEGUARD_POLICY",), Path, flag="--policy",
                 help="Policy YAML; names only what it changes from the embedded CIS default.")
STATE_DIR = Setting("state_dir", ("NODEGUARD_STATE_DIR",), Path, flag="--state-dir",
                    default=Path("/var/lib/nodeguard"), help="Last observed state, last good files, quarantined files.")

# -- `nodeguard run` ------------------------------------------------------------------------------
MODE = Setting("mode", ("NODEGUARD_MODE",), _stripped, flag="--mode", choices=("observe", "enforce"),
               help="Override the policy's spec.mode for every control (rules set explicitly keep theirs).")
EVENTS_FILE = Setting("events_file", ("NODEGUARD_EVENTS_FILE",), str, flag="--events-file", default="-",
                      help="Append each event as one JSON line to this file; - for stdout.")
LOG_LEVEL = Setting("log_level", ("NODEGUARD_LOG_LEVEL",), str, flag="--log-level", default="info",
                    help="debug, info, warning, error.")
METRICS_BIND_ADDRESS = Setting(
    "metrics_bind_address", ("NODEGUARD_METRICS_BIND_ADDRESS",), str, flag="--metrics-bind-address",
    help="Serve Prometheus metrics on HOST:PORT (plain HTTP, no auth; off by default).")

# -- how events leave the node (ExportOptions fields) ---------------------------------------------
# The OTLP settings are the OpenTelemetry SDK's own variables. A default here is ExportOptions'
# field default; None with no default: off, or (otlp_insecure) decided by the endpoint's scheme.
OTLP_ENDPOINT = Setting(
    "otlp_endpoint", ("OTEL_EXPORTER_OTLP_ENDPOINT",), str, flag="--otlp-endpoint",
    help="OTLP collector, e.g. http://collector:4318 (http/protobuf) or http://collector:4317 (grpc). "
         "Unset: no OTLP.")
OTLP_LOGS_ENDPOINT = Setting("otlp_logs_endpoint", ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",), str)
OTLP_METRICS_ENDPOINT = Setting("otlp_metrics_endpoint", ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",), str)
OTLP_PROTOCOL = Setting(
    "otlp_protocol", ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    lambda v: OtlpProtocol(v.strip()), flag="--otlp-protocol", default=OtlpProtocol.HTTP_PROTOBUF,
    choices=tuple(p.value for p in OtlpProtocol), help="grpc or http/protobuf (default).")
OTLP_HEADERS = Setting("otlp_headers", ("OTEL_EXPORTER_OTLP_HEADERS",), parse_headers, flag="--otlp-headers",
                       help="Extra request headers: key1=value1,key2=value2 (URL-encoded values).")
OTLP_CERTIFICATE = Setting("otlp_certificate", ("OTEL_EXPORTER_OTLP_CERTIFICATE",), Path, flag="--otlp-certificate",
                           help="CA bundle (PEM) that verifies the collector's certificate.")
OTLP_CLIENT_KEY = Setting("otlp_client_key", ("OTEL_EXPORTER_OTLP_CLIENT_KEY",), Path, flag="--otlp-client-key",
                          help="Client private key (PEM) for mutual TLS.")
OTLP_CLIENT_CERTIFICATE = Setting(
    "otlp_client_certificate", ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",), Path, flag="--otlp-client-certificate",
    help="Client certificate (PEM) for mutual TLS.")
OTLP_INSECURE = Setting(
    "otlp_insecure", ("OTEL_EXPORTER_OTLP_INSECURE",), _strict_bool, flag="--otlp-insecure/--otlp-secure",
    help="gRPC: plaintext even without an http:// endpoint / TLS even with one. Default: the scheme decides.")
# Seconds, as the Python SDK has always read it.
OTLP_TIMEOUT = Setting(
    "otlp_timeout", ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), float, minimum=0.1,
    flag="--otlp-timeout", help="Total seconds one export request may take, response included (default 10).")
OTLP_COMPRESSION = Setting("otlp_compression",
                           ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"), _compression)
METRICS = Setting(
    "metrics", ("OTEL_METRICS_EXPORTER",), _metrics_exporter, flag="--metrics/--no-metrics", default=True,
    help="Send metrics over OTLP too, when an OTLP endpoint is set (default: on; OTEL_METRICS_EXPORTER=none: off).")
# Milliseconds, per the OpenTelemetry spec.
METRICS_INTERVAL = Setting("metrics_interval", ("OTEL_METRIC_EXPORT_INTERVAL",), lambda v: float(v) / 1000,
                           default=60.0)
OCSF_FILE = Setting(
    "ocsf_file", ("NODEGUARD_OCSF_FILE",), str, flag="--ocsf-file",
    help="Also write each event as an OCSF Compliance Finding (class 2003) JSON line here ('-': stdout).")
SPOOL_MAX_BYTES = Setting(
    "spool_max_bytes", ("NODEGUARD_SPOOL_MAX_BYTES",), int, minimum=MIN_SPOOL_BYTES, flag="--spool-max-bytes",
    default=DEFAULT_SPOOL_MAX_BYTES,
    help=f"Cap of the durable event spool; when full the oldest events are dropped "
         f"(default {DEFAULT_SPOOL_MAX_BYTES}).")
# Identical drifts within this window are sent once, then once more with a count (0: off).
AGGREGATE_SECONDS = Setting(
    "aggregate_seconds", ("NODEGUARD_AGGREGATE_SECONDS",), float, minimum=0, flag="--aggregate-seconds", default=60.0,
    help="Identical drifts repeated within this window are sent once plus one summary with a count "
         "(default 60; 0: off).")
RETRY_MAX_SECONDS = Setting("retry_max_seconds", ("NODEGUARD_EXPORT_RETRY_MAX_SECONDS",), float, default=30.0)
# A collector's Retry-After (HTTP) or RetryInfo (gRPC) is obeyed up to this many seconds.
RETRY_AFTER_MAX_SECONDS = Setting("retry_after_max_seconds", ("NODEGUARD_EXPORT_RETRY_AFTER_MAX_SECONDS",), float,
                                  default=60.0)
# What close() (SIGTERM) gives the exporters to deliver; an export in flight is cut at the end. 2 s
# leaves room for the engine's stop and the metrics' last export inside the 5 s SIGTERM budget;
# what is not delivered by then stays spooled for the next start.
CLOSE_TIMEOUT_SECONDS = Setting("close_timeout_seconds", ("NODEGUARD_EXPORT_CLOSE_TIMEOUT_SECONDS",), float,
                                default=2.0)

# -- variables only (no flag) ---------------------------------------------------------------------
# Netfilter writes on a sandbox host root in the machine's own network namespace: refused unless 1.
FIREWALL_ANY_ROOT = Setting("firewall_any_root", ("NODEGUARD_FIREWALL_ANY_ROOT",), lambda v: v == "1", default=False)
# nf_tables table ownership (flags owner, persist): 0 or 1 forces it; unset (or anything else): the kernel decides.
NFT_OWN_TABLE = Setting("nft_own_table", ("NODEGUARD_NFT_OWN_TABLE",), lambda v: {"0": False, "1": True}.get(v))
# Events of cluster-scoped objects (a Node) live in "default", as client-go's recorder puts them.
EVENT_NAMESPACE = Setting("event_namespace", ("NODEGUARD_EVENT_NAMESPACE",), str, default="default")

# The settings ExportOptions.from_env reads (host_root and events_file too: a library caller that
# builds ExportOptions from the environment alone gets them from their variables).
EXPORT: tuple[Setting, ...] = (
    OTLP_ENDPOINT, OTLP_LOGS_ENDPOINT, OTLP_METRICS_ENDPOINT, OTLP_PROTOCOL, OTLP_HEADERS, OTLP_CERTIFICATE,
    OTLP_CLIENT_KEY, OTLP_CLIENT_CERTIFICATE, OTLP_INSECURE, OTLP_TIMEOUT, OTLP_COMPRESSION, METRICS,
    METRICS_INTERVAL, EVENTS_FILE, OCSF_FILE, HOST_ROOT, SPOOL_MAX_BYTES, AGGREGATE_SECONDS, RETRY_MAX_SECONDS,
    RETRY_AFTER_MAX_SECONDS, CLOSE_TIMEOUT_SECONDS,
)
SETTINGS: tuple[Setting, ...] = (POLICY, STATE_DIR, MODE, LOG_LEVEL, METRICS_BIND_ADDRESS, *EXPORT, FIREWALL_ANY_ROOT,
                                 NFT_OWN_TABLE, EVENT_NAMESPACE)
