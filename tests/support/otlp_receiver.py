"""A real OTLP receiver for tests: gRPC (grpcio + the official opentelemetry-proto services) or
HTTP/protobuf (http.server), on 127.0.0.1, plaintext or TLS (optionally requiring a client
certificate). It decodes what the agent really sends.

`failing = True` makes it answer UNAVAILABLE / 503 (a collector that is up but refuses); `stop()`
then `start()` on the same port is an outage and a recovery.

`mode` makes it a hostile collector (it still decodes every request it gets, into `attempts`):

| mode | HTTP | gRPC |
|---|---|---|
| `ok` | 200, an empty ExportLogsServiceResponse | OK |
| `hang` | reads the request, never answers | the call never returns |
| `trickle` | 200, `Content-Length: 100000000`, then 1 byte every `trickle_interval` s | |
| `flood` | 200 with a 1.5 GiB body, generated as it is sent (never held in memory) | a 16 MiB response |
| `close` | 200, `Content-Length: 1000`, 10 bytes, then the connection is closed | |
| `429`, `503`, `500` | that status, with `Retry-After: retry_after` when set | `503`: UNAVAILABLE + RetryInfo |
| `partial` | 200, partial_success rejecting 1 record | the same |

`python -m tests.support.otlp_receiver --mode M --port P --out FILE` runs one as a process (inside
a test's network namespace, beside the agent): each record an `ok` receiver takes is appended to
FILE as its `log.record.uid`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.tlsca import TlsFiles


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedLog:
    resource: dict[str, Any]
    resource_schema_url: str
    scope_name: str
    scope_version: str
    event_name: str
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    time_unix_nano: int
    observed_time_unix_nano: int
    received_at: float


@dataclass
class ReceivedMetric:
    resource: dict[str, Any]
    name: str
    unit: str
    points: list[tuple[dict[str, Any], Any]]  # (attributes, value or (count, sum) for histograms)


MODES = ("ok", "hang", "trickle", "flood", "close", "429", "503", "500", "partial")
FLOOD_BYTES = 3 * 512 * 1024 * 1024  # 1.5 GiB
_FLOOD_CHUNK = b"\0" * 65536


@dataclass
class Attempt:
    """One request a receiver got, whatever it answered: when, in which mode, and the records' ids."""

    at: float
    mode: str
    uids: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OtlpReceiver:
    def __init__(self, protocol: str = "grpc", port: int | None = None, *, tls: TlsFiles | None = None,
                 require_client_cert: bool = False) -> None:
        assert protocol in ("grpc", "http")
        self.protocol = protocol
        self.port = port or free_port()
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.failing = False
        self.mode = "ok"
        self.retry_after: str | None = None
        self.trickle_interval = 2.0
        self.attempts: list[Attempt] = []
        self.flood_sent = 0  # bytes of flood body written before the client hung up
        self.on_log: Callable[[ReceivedLog], None] | None = None
        self.on_attempt: Callable[[Attempt], None] | None = None
        # HTTP/1.1 keep-alive, the server closing a connection idle this long (as collectors do); None: HTTP/1.0.
        self.keepalive_idle: float | None = None
        self.client_ports: list[int] = []  # the client's source port of each HTTP request
        self._stopping = threading.Event()
        self.requests = 0
        self.logs: list[ReceivedLog] = []
        self.metrics: list[ReceivedMetric] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def otel_protocol(self) -> str:
        return "grpc" if self.protocol == "grpc" else "http/protobuf"

    # -- decoding ----------------------------------------------------------------------------

    def _attempt(self, req: logs_service_pb2.ExportLogsServiceRequest, mode: str) -> None:
        uids = [str(any_value(kv.value)) for rl in req.resource_logs for sl in rl.scope_logs for lr in sl.log_records
                for kv in lr.attributes if kv.key == "log.record.uid"]
        attempt = Attempt(time.monotonic(), mode, uids)
        with self._lock:
            self.attempts.append(attempt)
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def _take_logs(self, req: logs_service_pb2.ExportLogsServiceRequest, headers: dict[str, str]) -> None:
        now = time.monotonic()
        out = []
        for rl in req.resource_logs:
            res = attributes(rl.resource.attributes)
            for sl in rl.scope_logs:
                for lr in sl.log_records:
                    out.append(ReceivedLog(res, rl.schema_url, sl.scope.name, sl.scope.version, lr.event_name,
                                           lr.severity_number, lr.severity_text, any_value(lr.body),
                                           attributes(lr.attributes), lr.time_unix_nano, lr.observed_time_unix_nano,
                                           now))
        with self._lock:
            self.requests += 1
            self.logs.extend(out)
            self.headers.append(headers)
        if self.on_log is not None:
            for rec in out:
                self.on_log(rec)

    def _take_metrics(self, req: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        out = []
        for rm in req.resource_metrics:
            res = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points: list[tuple[dict[str, Any], Any]] = []
                    if kind in ("sum", "gauge"):
                        for p in getattr(m, kind).data_points:
                            val = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            points.append((attributes(p.attributes), val))
                    elif kind == "histogram":
                        for p in m.histogram.data_points:
                            points.append((attributes(p.attributes), (p.count, p.sum)))
                    out.append(ReceivedMetric(res, m.name, m.unit, points))
        with self._lock:
            self.metrics.extend(out)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        self._stopping.clear()
        if self.protocol == "grpc":
            self._start_grpc()
        else:
            self._start_http()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers that hang or trickle
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
            if self._http_thread is not None:
                self._http_thread.join(5)

    def _start_grpc(self) -> None:
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                mode = receiver.mode
                receiver._attempt(request, mode)
                if mode == "hang":
                    receiver._stopping.wait()
                    context.abort(grpc.StatusCode.UNAVAILABLE, "receiver stopped")
                if receiver.failing or mode == "503":
                    if receiver.retry_after is not None:
                        info = RetryInfo()
                        info.retry_delay.seconds = int(float(receiver.retry_after))
                        context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
                    context.abort(grpc.StatusCode.UNAVAILABLE, "receiver set to fail")
                if mode == "partial":
                    return partial_response()
                if mode == "flood":  # a 16 MiB response message (gRPC's own limit is 4 MiB by default)
                    reply = logs_service_pb2.ExportLogsServiceResponse()
                    reply.partial_success.error_message = "x" * (16 << 20)
                    return reply
                receiver._take_logs(request, dict(context.invocation_metadata()))
                return logs_service_pb2.ExportLogsServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                if receiver.mode == "hang":
                    receiver._stopping.wait()
                if receiver.failing or receiver.mode != "ok":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "receiver set to fail")
                receiver._take_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_send_message_length", -1)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        if self.tls is None:
            bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            creds = grpc.ssl_server_credentials(
                [(self.tls.server_key.read_bytes(), self.tls.server_cert.read_bytes())],
                root_certificates=self.tls.ca.read_bytes(), require_client_auth=self.require_client_cert)
            bound = server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        assert bound == self.port, f"could not bind 127.0.0.1:{self.port}"
        server.start()
        self._grpc = server

    def _start_http(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            if receiver.keepalive_idle is not None:
                protocol_version = "HTTP/1.1"
                timeout = receiver.keepalive_idle  # an idle kept-alive connection is closed after this

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                mode = receiver.mode
                with receiver._lock:
                    receiver.client_ports.append(self.client_address[1])
                if self.path == "/v1/logs":
                    receiver._attempt(logs_service_pb2.ExportLogsServiceRequest.FromString(body), mode)
                # Metrics meet the same collector: a flood or a hang answers both signals.
                if mode != "ok" and self._hostile(mode):
                    return
                if receiver.failing:
                    self._reply(503, b"")
                    return
                if self.path == "/v1/logs":
                    req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
                    receiver._take_logs(req, {k.lower(): v for k, v in self.headers.items()})
                    self._reply(200, logs_service_pb2.ExportLogsServiceResponse().SerializeToString())
                elif self.path == "/v1/metrics":
                    receiver._take_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                    self._reply(200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())
                else:
                    self._reply(404, b"")

            def _reply(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                if receiver.retry_after is not None and status >= 400:
                    self.send_header("Retry-After", receiver.retry_after)
                self.end_headers()
                self.wfile.write(payload)

            def _hostile(self, mode: str) -> bool:
                """Misbehave as `mode` says; False: answer normally after all."""
                try:
                    if mode == "hang":
                        receiver._stopping.wait()
                    elif mode in ("429", "503", "500"):
                        self._reply(int(mode), b"collector says no")
                    elif mode == "partial":
                        self._reply(200, partial_response().SerializeToString())
                    elif mode in ("trickle", "flood", "close"):
                        self.send_response(200)
                        self.send_header("Content-Type", "application/x-protobuf")
                        self.send_header("Content-Length", str({"trickle": 100_000_000, "flood": FLOOD_BYTES,
                                                                "close": 1000}[mode]))
                        self.end_headers()
                        self.wfile.flush()
                        if mode == "trickle":
                            while not receiver._stopping.wait(receiver.trickle_interval):
                                self.wfile.write(b"\0")
                                self.wfile.flush()
                        elif mode == "flood":
                            sent = 0
                            try:
                                while sent < FLOOD_BYTES and not receiver._stopping.is_set():
                                    self.wfile.write(_FLOOD_CHUNK)
                                    sent += len(_FLOOD_CHUNK)
                            finally:
                                with receiver._lock:
                                    receiver.flood_sent += sent
                        else:
                            self.wfile.write(b"\0" * 10)
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                    else:
                        return False
                except OSError:
                    pass  # the client hung up: what a client with a deadline does
                self.close_connection = True
                return True

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            if self.require_client_cert:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.tls.ca)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._http = server
        self._http_thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._http_thread.start()

    # -- queries -----------------------------------------------------------------------------

    def snapshot(self) -> list[ReceivedLog]:
        with self._lock:
            return list(self.logs)

    def unique_by_uid(self) -> dict[str, ReceivedLog]:
        """Receiver-side de-duplication by the record's stable id (`log.record.uid`)."""
        return {log.attributes["log.record.uid"]: log for log in self.snapshot()}

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)


def partial_response() -> logs_service_pb2.ExportLogsServiceResponse:
    reply = logs_service_pb2.ExportLogsServiceResponse()
    reply.partial_success.rejected_log_records = 1
    reply.partial_success.error_message = "1 record rejected: attribute value too long"
    return reply


@contextmanager
def otlp_receiver(protocol: str = "grpc", port: int | None = None, *, tls: TlsFiles | None = None,
                  require_client_cert: bool = False) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(protocol, port, tls=tls, require_client_cert=require_client_cert).start()
    try:
        yield receiver
    finally:
        receiver.stop()



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=MODES, default="ok")
    ap.add_argument("--retry-after")
    ap.add_argument("--out", required=True, help="JSON lines: each request ({'attempt': mode, 'uids': [...]}) and "
                                                 "each record taken ({'received': uid})")
    args = ap.parse_args()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    lock = threading.Lock()

    def write(line: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(line) + "\n")

    receiver = OtlpReceiver(args.protocol, args.port)
    receiver.mode, receiver.retry_after = args.mode, args.retry_after
    receiver.on_log = lambda rec: write({"received": rec.attributes["log.record.uid"]})
    receiver.on_attempt = lambda a: write({"attempt": a.mode, "uids": a.uids})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    receiver.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    done.wait()
    receiver.stop()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
