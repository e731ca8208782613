"""Export settings the OpenTelemetry way: OTEL_* variables, and `nodeguard run` flags that beat them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeguard.events.options import ExportOptions, OtlpProtocol, export_options_from_flags
from nodeguard.events.otlp import _signal_endpoint

ENV = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.monitoring:4318/",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-scope-orgid=tenant-a",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/nodeguard/otlp/ca.crt",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/etc/nodeguard/otlp/tls.key",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/etc/nodeguard/otlp/tls.crt",
    "OTEL_EXPORTER_OTLP_INSECURE": "false",
    "OTEL_METRIC_EXPORT_INTERVAL": "15000",
}


def test_otel_variables_are_read() -> None:
    o = ExportOptions.from_env(ENV)
    assert o.otlp_enabled
    assert o.otlp_protocol is OtlpProtocol.HTTP_PROTOBUF
    assert o.otlp_headers == {"authorization": "Bearer abc", "x-scope-orgid": "tenant-a"}
    assert (o.otlp_certificate, o.otlp_client_key, o.otlp_client_certificate) == (
        Path("/etc/nodeguard/otlp/ca.crt"), Path("/etc/nodeguard/otlp/tls.key"), Path("/etc/nodeguard/otlp/tls.crt"))
    assert o.otlp_insecure is False
    assert o.metrics_interval == 15.0
    # http/protobuf: the signal path is appended to the base endpoint, as the spec says.
    assert _signal_endpoint(o, "logs") == "https://collector.monitoring:4318/v1/logs"
    assert _signal_endpoint(o, "metrics") == "https://collector.monitoring:4318/v1/metrics"


def test_grpc_and_signal_specific_endpoints() -> None:
    o = ExportOptions.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert _signal_endpoint(o, "logs") == "http://c:4317"
    o = ExportOptions.from_env({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318/custom/path"})
    assert o.otlp_enabled and _signal_endpoint(o, "logs") == "http://logs:4318/custom/path"
    assert _signal_endpoint(o, "metrics") is None


def test_no_endpoint_means_no_otlp() -> None:
    assert not ExportOptions.from_env({}).otlp_enabled


def test_flags_beat_the_environment() -> None:
    o = export_options_from_flags(host_root=Path("/host"), events_file="-", otlp_endpoint="http://other:4317",
                                  otlp_protocol=OtlpProtocol.GRPC, otlp_headers="a=1", otlp_insecure=True,
                                  spool_max_bytes=1 << 20, aggregate_seconds=0, metrics=False, env=ENV)
    assert o.otlp_endpoint == "http://other:4317" and o.otlp_protocol is OtlpProtocol.GRPC
    assert o.otlp_headers == {"a": "1"} and o.otlp_insecure is True
    assert o.otlp_certificate == Path("/etc/nodeguard/otlp/ca.crt")  # not given as a flag: the variable's
    assert (o.host_root, o.events_file, o.spool_max_bytes, o.aggregate_seconds, o.metrics) == (
        Path("/host"), "-", 1 << 20, 0, False)


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError):
        ExportOptions.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
