"""OTLP requests that a collector cannot hang or flood: one total deadline, a capped response.

The SDK's exporters read the whole response body into memory (`requests`' `resp.content`) and
give each socket read its own timeout, so a collector that answers `200`, `Content-Length: 100 MB`
and then one byte every 2 s holds an export forever, and a 1.5 GiB body is 1.5 GiB of RSS. Here
each request (OTLP/HTTP over `http.client`, OTLP/gRPC over grpcio) has:

- a **total deadline**: HTTP arms a watchdog that shuts the socket down when it passes, whatever
  phase the request is in (connect, TLS handshake, headers, body); gRPC gives the call a deadline;
- a **capped response**: at most `RESPONSE_CAP` bytes are read (an OTLP response is a few bytes,
  a partial_success a few hundred); a larger body is not an OTLP response and is not read on;
- **one attempt**: retries belong to the export worker, which keeps the events in the spool and
  backs off (honouring Retry-After / RetryInfo within a cap);
- an **abort**: `close()` cuts a request in flight at once (SIGTERM must not wait on a collector).

A request is a confirmation only when the collector answered success with a complete, parseable
OTLP response that rejects no record (`partial_success`). The payload is the exact protobuf the
SDK's encoders make; this module only carries bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import http.client
import logging
import math
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from nodeguard._version import __version__
from nodeguard.events.worker import Delivery

log = logging.getLogger(__name__)

# An ExportLogsServiceResponse is empty on success and a short message on partial success.
RESPONSE_CAP = 64 * 1024
_READ_CHUNK = 16 * 1024
USER_AGENT = f"nodeguard/{__version__}"


@dataclass(frozen=True)
class Signal:
    name: str  # "logs" | "metrics"
    grpc_method: str
    response: Any  # the generated Export*ServiceResponse class
    rejected_field: str  # the partial_success field counting refused items


LOGS = Signal("logs", "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
              ExportLogsServiceResponse, "rejected_log_records")
METRICS = Signal("metrics", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                 ExportMetricsServiceResponse, "rejected_data_points")


class Sender(Protocol):
    def send(self, payload: bytes, timeout: float | None = None) -> Delivery:
        """One request, done or abandoned within min(the sender's timeout, `timeout`) seconds."""
        ...

    def close(self) -> None:
        """Abort what is in flight; later sends fail at once."""
        ...


def read_reply(signal: Signal, body: bytes) -> Delivery:
    """The verdict of a success status carrying `body`: confirmed, or how many items were refused."""
    try:
        reply = signal.response.FromString(body)
    except Exception as exc:  # protobuf's DecodeError, or whatever a hostile body provokes
        return Delivery(False, f"the {len(body)}-byte response is not an OTLP {signal.name} response ({exc})")
    partial = getattr(reply, "partial_success")  # noqa: B009 (both response types have it)
    rejected = int(getattr(partial, signal.rejected_field))
    message = str(partial.error_message)
    if rejected:
        return Delivery(False, f"the collector rejected {rejected} {signal.name} items: {message or '(no message)'}",
                        rejected=rejected)
    if message:  # a warning with everything accepted (OTLP: the client must not retry)
        log.warning("OTLP collector accepted the %s with a warning: %s", signal.name, message[:500])
    return Delivery(True)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After (RFC 9110): delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _compress(payload: bytes, compression: str | None) -> tuple[bytes, dict[str, str]]:
    if compression == "gzip":
        return gzip.compress(payload), {"Content-Encoding": "gzip"}
    if compression == "deflate":
        return zlib.compress(payload), {"Content-Encoding": "deflate"}
    return payload, {}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


def client_ssl_context(tls: TlsFiles, environ: Mapping[str, str]) -> ssl.SSLContext:
    """Verify the collector with the CA file given, else the CA bundle `requests` used before
    (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else certifi's), else the system's store."""
    cafile: str | None = str(tls.ca) if tls.ca else environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE")
    if cafile is None:
        with contextlib.suppress(ImportError):
            import certifi

            cafile = certifi.where()
    ctx = ssl.create_default_context(cafile=cafile)
    if tls.client_cert is not None:
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    return ctx


class HttpSender:
    """OTLP/HTTP (protobuf) POSTs on one kept-alive connection, each bounded in time and memory."""

    def __init__(self, url: str, signal: Signal, *, timeout: float, headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, compression: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP/HTTP endpoint must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.signal = signal
        self.timeout = timeout
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._tls = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._compression = compression
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **(headers or {})}
        self._lock = threading.Lock()  # one request at a time per sender
        self._conn: http.client.HTTPConnection | None = None  # idle, reusable
        self._live: socket.socket | None = None  # the socket of the request in flight
        self._cut = False  # the watchdog (or close) shut the socket of the request in flight
        self._generation = 0  # which request `_live` belongs to: a late watchdog must not cut the next one
        self._closed = False

    def send(self, payload: bytes, timeout: float | None = None) -> Delivery:
        budget = self.timeout if timeout is None else min(self.timeout, timeout)
        deadline = time.monotonic() + budget
        body, extra = _compress(payload, self._compression)
        with self._lock:
            if self._closed:
                return Delivery(False, "the exporter is shut down")
            reused, self._conn = self._conn, None
            if reused is not None:
                try:
                    return self._request(reused, body, extra, deadline)
                except _Stale:
                    pass  # the collector closed the idle connection: once more on a new one
            try:
                return self._request(None, body, extra, deadline)
            except _Stale as exc:
                return Delivery(False, f"connection lost before the response: {exc.__cause__}")

    def close(self) -> None:
        self._closed = True
        self._abort()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    def _abort(self, generation: int | None = None) -> None:
        sock = self._live
        if sock is not None and (generation is None or generation == self._generation):
            self._cut = True
            # shutdown(2) on the file descriptor wakes a recv blocked in the exporting thread at once
            # (close() would not); socket.socket.shutdown leaves an SSL object alone.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _connect(self, deadline: float) -> http.client.HTTPConnection:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed before connecting")
        sock = socket.create_connection((self._host, self._port), timeout=remaining)
        self._live = sock
        if self._tls is not None:
            tls_sock = self._tls.wrap_socket(sock, server_hostname=self._host, do_handshake_on_connect=False)
            self._live = tls_sock
            tls_sock.do_handshake()
            sock = tls_sock
        conn = http.client.HTTPConnection(self._host, self._port)
        conn.sock = sock  # http.client uses a socket it is given and never connects itself
        return conn

    def _request(self, conn: http.client.HTTPConnection | None, body: bytes, extra: dict[str, str],
                 deadline: float) -> Delivery:
        self._generation += 1
        self._cut = False
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), self._abort, args=(self._generation,))
        watchdog.daemon = True
        watchdog.start()
        reply_started = False
        keep: http.client.HTTPConnection | None = None
        try:
            if conn is None:
                conn = self._connect(deadline)
            else:
                self._live = conn.sock
            self._set_timeout(conn, deadline)
            try:
                conn.request("POST", self._path, body=body, headers={**self._headers, **extra})
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                if time.monotonic() < deadline and not self._closed:
                    raise _Stale() from exc
                raise
            reply_started = True
            data, complete, why = self._read_capped(conn, response, deadline)
            if self._cut:  # an EOF the watchdog made is not the end of the body
                complete, why = False, f"body still arriving after {self.timeout:g}s ({len(data)} bytes read)"
            delivery = self._verdict(response, data, complete, why)
            if complete and not response.will_close:
                keep = conn
            return delivery
        except _Stale:
            raise
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            if self._closed:
                return Delivery(False, "aborted: the exporter is shutting down")
            if time.monotonic() >= deadline:
                phase = "reading the response" if reply_started else "waiting for the response"
                return Delivery(False, f"no complete answer within {self.timeout:g}s ({phase})")
            return Delivery(False, f"{type(exc).__name__}: {exc}")
        finally:
            watchdog.cancel()
            self._live = None
            if keep is not None and not self._closed:
                self._conn = keep
            elif conn is not None:
                conn.close()

    @staticmethod
    def _set_timeout(conn: http.client.HTTPConnection, deadline: float) -> None:
        if conn.sock is not None:
            conn.sock.settimeout(max(0.001, deadline - time.monotonic()))

    def _read_capped(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                     deadline: float) -> tuple[bytes, bool, str]:
        """(body, complete, why not): at most RESPONSE_CAP bytes, never past the deadline."""
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() >= deadline:
                return b"".join(chunks), False, f"body still arriving after {self.timeout:g}s ({size} bytes read)"
            self._set_timeout(conn, deadline)
            piece = response.read1(min(_READ_CHUNK, RESPONSE_CAP + 1 - size))
            if not piece:
                if response.length:  # Content-Length promised more: the collector hung up mid-body
                    return b"", False, f"connection closed {response.length} bytes short of the body"
                response.close()  # done with this body: the connection may carry the next request
                return b"".join(chunks), True, ""
            chunks.append(piece)
            size += len(piece)
            if size > RESPONSE_CAP:
                declared = response.getheader("Content-Length")
                return b"", False, (f"response body over {RESPONSE_CAP} bytes"
                                    f"{f' (Content-Length {declared})' if declared else ''}: not an OTLP response")

    def _verdict(self, response: http.client.HTTPResponse, data: bytes, complete: bool, why: str) -> Delivery:
        status = response.status
        retry_after = parse_retry_after(response.getheader("Retry-After"))
        if 200 <= status < 300:
            if not complete:
                return Delivery(False, f"HTTP {status} but {why}", retry_after=retry_after)
            return read_reply(self.signal, data)
        text = data[:300].decode("utf-8", "replace") if complete else why
        return Delivery(False, f"HTTP {status} {response.reason}: {text}".rstrip(": "), retry_after=retry_after)


class _Stale(Exception):
    """A kept-alive connection the collector had closed: the request never reached it."""


class GrpcSender:
    """OTLP/gRPC unary calls with a deadline per call and a 64 KiB cap on the response message."""

    def __init__(self, target: str, signal: Signal, *, timeout: float, credentials: Any = None,
                 headers: Mapping[str, str] | None = None, compression: str | None = None) -> None:
        import grpc  # type: ignore[import-untyped]  # only with gRPC: HTTP-only agents skip loading it

        self._grpc = grpc
        self.signal = signal
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", RESPONSE_CAP), ("grpc.primary_user_agent", USER_AGENT)]
        comp = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options, compression=comp)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options, compression=comp)
        # Bytes in, bytes out: the payload is already the encoded request; the reply is parsed by read_reply.
        self._call = self._channel.unary_unary(signal.grpc_method)
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._closed = False

    def send(self, payload: bytes, timeout: float | None = None) -> Delivery:
        if self._closed:
            return Delivery(False, "the exporter is shut down")
        budget = self.timeout if timeout is None else min(self.timeout, timeout)
        try:
            reply = self._call(payload, timeout=budget, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            if self._closed:
                return Delivery(False, "aborted: the exporter is shutting down")
            code = exc.code()
            return Delivery(False, f"gRPC {code.name if code else '?'}: {exc.details()}",
                            retry_after=_grpc_retry_delay(exc))
        return read_reply(self.signal, bytes(reply))

    def close(self) -> None:
        self._closed = True
        self._channel.close()  # cancels a call in flight


def _grpc_retry_delay(exc: Any) -> float | None:
    """The server's google.rpc.RetryInfo (gRPC's Retry-After), when it sent one."""
    try:
        from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]

        raw = dict(exc.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
        if raw is None:
            return None
        info = RetryInfo.FromString(raw)
        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:  # absent module or a malformed detail: no hint, the back-off decides
        return None
