"""A local stand-in for the Kubernetes API server: the few endpoints nodeguard's cluster view calls.

No API server runs here (no kube-apiserver, no etcd, no cluster). This HTTP server on 127.0.0.1
speaks the API's JSON for: reading a Node, PATCHing its status, creating and PATCHing core/v1
Events. Every request is recorded for the tests to assert on.

A PATCH is applied the way the API server applies it, by content type: a strategic merge patch
(`strategic_merge`: maps merged, `null` deletes, a Node's `status.conditions` merged item by item
on `type`, other lists replaced) or a JSON merge patch (`json_merge_patch`, RFC 7386: every list
replaced, so the kubelet's conditions would be lost). That merge logic is the fake's, not the
sink's: it is tested on its own in tests/unit/test_kube_api_fake.py.
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
MERGE_PATCH = "application/merge-patch+json"
# The list fields the fake knows a patchMergeKey for (k8s.io/api core/v1 types.go): path -> key.
NODE_MERGE_KEYS: dict[tuple[str, ...], str] = {("status", "conditions"): "type"}


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: a patch object merges into an object key by key, `null` removes; anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json_merge_patch(out.get(key), value)
    return out


def strategic_merge(target: Any, patch: Any, merge_keys: dict[tuple[str, ...], str] | None = None,
                    path: tuple[str, ...] = ()) -> Any:
    """The API server's strategic merge patch, for what the fake serves: a JSON merge patch, except that
    a list with a patchMergeKey (`merge_keys`, by path) is merged item by item on that key: an item of
    the patch updates the target's item with the same key (its other fields kept), or is appended."""
    if not isinstance(patch, dict):
        key = (merge_keys or {}).get(path)
        if key is None or not isinstance(patch, list) or not isinstance(target, list):
            return patch
        merged = [dict(item) for item in target]
        for new in patch:
            old = next((i for i, item in enumerate(merged) if item.get(key) == new.get(key)), None)
            if old is None:
                merged.append(dict(new))
            else:
                merged[old] = strategic_merge(merged[old], new, merge_keys, path)
        return merged
    out = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = strategic_merge(out.get(name), value, merge_keys, (*path, name))
    return out


def apply_patch(target: Any, patch: Any, content_type: str,
                merge_keys: dict[tuple[str, ...], str] | None = None) -> Any | None:
    """`target` patched as the API server would for `content_type`; None for a type the fake does not serve
    (a JSON Patch, RFC 6902, which nodeguard never sends)."""
    if content_type == STRATEGIC_MERGE:
        return strategic_merge(target, patch, merge_keys)
    if content_type == MERGE_PATCH:
        return json_merge_patch(target, patch)
    return None


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
                    # A status PATCH changes the status only, whatever else the body names.
                    status = {"status": body.get("status") or {}} if isinstance(body, dict) else body
                    patched = apply_patch(api.node, status, ctype, NODE_MERGE_KEYS)
                    if patched is None:
                        return self._reply(415, {"kind": "Status", "code": 415})
                    api.node = patched
                    return self._reply(200, api.node)
                prefix = "/api/v1/namespaces/default/events"
                if self.command == "POST" and path == prefix:
                    api.events[body["metadata"]["name"]] = body
                    return self._reply(201, body)
                if self.command == "PATCH" and path.startswith(prefix + "/"):
                    name = path.rsplit("/", 1)[1]
                    if name not in api.events:
                        return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    patched = apply_patch(api.events[name], body, ctype)
                    if patched is None:
                        return self._reply(415, {"kind": "Status", "code": 415})
                    api.events[name] = patched
                    return self._reply(200, patched)
            return self._reply(404, {"kind": "Status", "code": 404})

        do_GET = do_POST = do_PATCH = _serve

    return Handler


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


@contextmanager
def fake_core_api() -> Iterator[tuple[FakeApi, Any]]:
    """The fake serving one Node (answering at once), and the real `kubernetes` client pointed at it."""
    from kubernetes import client

    api = FakeApi(node_object())
    api.gate.set()
    with serving(api) as server:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
        yield api, client.CoreV1Api(client.ApiClient(cfg))
