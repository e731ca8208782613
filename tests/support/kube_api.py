"""A local stand-in for the Kubernetes API server: the few endpoints nodeguard's cluster view calls.

No API server runs here. This HTTP server on 127.0.0.1 speaks the API's JSON for: reading a Node,
PATCHing its status with a strategic merge keyed by condition type (a merge patch is refused,
as it would replace the kubelet's conditions), creating and PATCHing core/v1 Events. Every
request is recorded for the tests to assert on.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nodeguard.events.kube import CONDITION_TYPE, STRATEGIC_MERGE

NODE = "worker-1"


@dataclass
class FakeApi:
    """The API server's state and every request it saw."""

    node: dict[str, Any]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, Any]] = field(default_factory=list)  # method, path, content-type, body
    authorization: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)  # cleared: every request hangs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path_part: str) -> list[Any]:
        with self.lock:
            return [body for m, p, _, body in self.requests if m == method and path_part in p]

    def condition(self) -> dict[str, Any] | None:
        with self.lock:
            return next((c for c in self.node["status"]["conditions"] if c["type"] == CONDITION_TYPE), None)


def handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            api.gate.wait()
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            ctype = self.headers.get("Content-Type", "")
            with api.lock:
                api.requests.append((self.command, self.path.split("?")[0], ctype, body))
                api.authorization.append(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if self.command == "GET" and path == f"/api/v1/nodes/{NODE}":
                    return self._reply(200, api.node)
                if self.command == "PATCH" and path == f"/api/v1/nodes/{NODE}/status":
                    if ctype != STRATEGIC_MERGE:  # a merge patch would replace the kubelet's conditions
                        return self._reply(415, {"kind": "Status", "code": 415})
                    conds = api.node["status"]["conditions"]
                    for new in body["status"]["conditions"]:  # strategic merge: keyed by `type`
                        old = next((c for c in conds if c["type"] == new["type"]), None)
                        if old is None:
                            conds.append(dict(new))
                        else:
                            old.update(new)
                    return self._reply(200, api.node)
                prefix = "/api/v1/namespaces/default/events"
                if self.command == "POST" and path == prefix:
                    api.events[body["metadata"]["name"]] = body
                    return self._reply(201, body)
                if self.command == "PATCH" and path.startswith(prefix + "/"):
                    name = path.rsplit("/", 1)[1]
                    if name not in api.events:
                        return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    api.events[name].update(body)
                    return self._reply(200, api.events[name])
            return self._reply(404, {"kind": "Status", "code": 404})

        do_GET = do_POST = do_PATCH = _serve

    return Handler


def _node() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}]}}


def node_object() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}]}}


@contextmanager
def serving(api: FakeApi, tls: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    """The server on an ephemeral port of 127.0.0.1 (over TLS with `tls`), for the `with` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(api))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        api.gate.set()
        server.shutdown()
        server.server_close()
