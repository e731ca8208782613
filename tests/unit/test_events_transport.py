"""The OTLP transport's pure decisions: what a collector's answer means, and how long it asked us to wait."""

from __future__ import annotations

import email.utils

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from nodeguard.events.options import ExportOptions
from nodeguard.events.transport import LOGS, METRICS, parse_retry_after, read_reply


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("-5", 0.0), ("1.5", 1.5),
    (None, None), ("", None), ("soon", None), ("inf", None), ("nan", None),
])
def test_retry_after_in_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=lambda: now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=lambda: now) == 0.0
    assert parse_retry_after("Wed, 99 Foo 2026 00:00:00 GMT", now=lambda: now) is None


def test_an_empty_response_is_the_collectors_confirmation() -> None:
    assert read_reply(LOGS, b"").ok
    assert read_reply(LOGS, ExportLogsServiceResponse().SerializeToString()).ok


def test_partial_success_rejecting_records_is_not_a_confirmation() -> None:
    reply = ExportLogsServiceResponse()
    reply.partial_success.rejected_log_records = 3
    reply.partial_success.error_message = "too big"
    delivery = read_reply(LOGS, reply.SerializeToString())
    assert not delivery.ok and delivery.rejected == 3 and "too big" in delivery.reason
    metrics = ExportMetricsServiceResponse()
    metrics.partial_success.rejected_data_points = 2
    assert read_reply(METRICS, metrics.SerializeToString()).rejected == 2


def test_a_warning_with_nothing_rejected_is_a_confirmation(caplog: pytest.LogCaptureFixture) -> None:
    reply = ExportLogsServiceResponse()
    reply.partial_success.error_message = "deprecated attribute"
    assert read_reply(LOGS, reply.SerializeToString()).ok
    assert "deprecated attribute" in caplog.text


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"\xff" * 100, b"\x0a\x05abc"])
def test_a_body_that_is_not_an_otlp_response_confirms_nothing(body: bytes) -> None:
    delivery = read_reply(LOGS, body)
    assert not delivery.ok and "not an OTLP logs response" in delivery.reason


def test_timeout_and_compression_from_the_otel_variables() -> None:
    opts = ExportOptions.from_env({"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5", "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"})
    assert (opts.otlp_timeout, opts.otlp_compression) == (2.5, "gzip")
    logs_first = ExportOptions.from_env({"OTEL_EXPORTER_OTLP_TIMEOUT": "9", "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "3"})
    assert logs_first.otlp_timeout == 3.0
    assert ExportOptions.from_env({"OTEL_EXPORTER_OTLP_COMPRESSION": "none"}).otlp_compression is None
    assert ExportOptions.from_env({}, otlp_timeout=4.0).otlp_timeout == 4.0
    with pytest.raises(ValueError, match="gzip, deflate or none"):
        ExportOptions.from_env({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"})


def test_an_http_endpoint_without_a_scheme_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="otlp_endpoint: an OTLP/HTTP endpoint is an http:// or https:// URL"):
        ExportOptions.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
    # gRPC targets may be host:port.
    assert ExportOptions.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).otlp_endpoint == "collector:4317"
