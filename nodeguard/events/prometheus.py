"""The Prometheus pull endpoint: `nodeguard run --metrics-bind-address HOST:PORT` (off by default).

The metrics are the OpenTelemetry SDK's (nodeguard/events/metrics.py): the SDK's Prometheus
exporter reads them into a registry of this endpoint's own (never prometheus_client's global one,
so nothing else of the process leaks into it) and prometheus_client's small HTTP server serves
that registry in the text format on every path (`/metrics` by convention). One definition of each
metric, whether it leaves over OTLP, by scrape, or both.

It serves plain HTTP without authentication (what Prometheus scrapes by default): bind it to an
address only the scrapers reach. The chart binds the pod's IP from the downward API, never 0.0.0.0.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class BindAddressError(ValueError):
    """--metrics-bind-address is not HOST:PORT."""


@dataclass(frozen=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind_address(text: str) -> BindAddress:
    """HOST:PORT, [V6]:PORT or V6:PORT (the port is always last: the kubelet's `$(POD_IP):9464`
    expands to a bare IPv6 address on a v6 pod). HOST is an IP address or a name; port 1-65535."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise BindAddressError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError with the reason
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BindAddressError(f"{text!r}: the port must be a number from 1 to 65535")
    if not host or host.startswith("$("):
        # An unexpanded downward-API reference: the pod spec names a variable it does not set.
        raise BindAddressError(f"{text!r}: no host (an unexpanded $(VAR)?)")
    return BindAddress(host, int(port_text))


class PrometheusEndpoint:
    """A metric reader for the MeterProvider, and the HTTP server that serves what it reads."""

    def __init__(self, address: BindAddress) -> None:
        # Imported here: only an agent started with the flag pays for them.
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        self.address = address
        self.registry = CollectorRegistry(auto_describe=True)
        # target_info carries the resource (service.instance.id, k8s.*, host.*): one series per agent.
        self.reader = PrometheusMetricReader(registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve on a thread of prometheus_client's; OSError if the address cannot be bound."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self.address.port, addr=self.address.host,
                                                       registry=self.registry)
        log.info("serving Prometheus metrics on http://%s/metrics", self.address)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the kernel's pick for port 0 in tests)."""
        return int(self._server.server_address[1]) if self._server is not None else self.address.port

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = None
