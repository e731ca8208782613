"""KubeSink: the Node condition and Node Events, through the real `kubernetes` client.

No Kubernetes API server runs here, so these tests run against a small local HTTP server on
127.0.0.1 that speaks the API's JSON for the few endpoints the agent uses (read a Node, PATCH its
status with a strategic merge keyed by condition type, create and PATCH core/v1 Events). It is the
only stand-in in these tests; the client, its serialisation and its HTTP stack are the real ones.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nodeguard.events.model import Event, EventName
from nodeguard.kube import CONDITION_TYPE, STRATEGIC_MERGE, KubeSink, kube_sink_from_env

NODE = "worker-1"


@dataclass
class FakeApi:
    """The API server's state and every request it saw."""

    node: dict[str, Any]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, Any]] = field(default_factory=list)  # method, path, content-type, body
    gate: threading.Event = field(default_factory=threading.Event)  # cleared: every request hangs
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path_part: str) -> list[Any]:
        with self.lock:
            return [body for m, p, _, body in self.requests if m == method and path_part in p]

    def condition(self) -> dict[str, Any] | None:
        with self.lock:
            return next((c for c in self.node["status"]["conditions"] if c["type"] == CONDITION_TYPE), None)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
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


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, client.CoreV1Api]]:
    api = FakeApi(_node())
    api.gate.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api, client.CoreV1Api(client.ApiClient(cfg))
    finally:
        api.gate.set()
        server.shutdown()
        server.server_close()


def drift(name: EventName, rule: str = "socket-mode", subject: str | None = None) -> Event:
    attrs: dict[str, Any] = {"nodeguard.control": "socket", "nodeguard.rule": rule}
    if subject:
        attrs["nodeguard.subject"] = subject
    return Event(name, "ERROR", f"{rule} drifted", attrs)


def test_condition_is_patched_only_when_it_changes(fake_api: tuple[FakeApi, client.CoreV1Api],
                                                   tmp_path: Path) -> None:
    api, core = fake_api
    sink = KubeSink(core, NODE, state_dir=tmp_path)
    try:
        assert sink.flush()
        first = api.condition()
        assert first is not None and first["status"] == "True" and first["reason"] == "NoOpenDrift"
        assert len(api.calls("PATCH", "/status")) == 1

        sink.emit(drift(EventName.DRIFT_DETECTED))
        sink.emit(drift(EventName.DRIFT_DETECTED, "member-allowed", "bob"))
        assert sink.flush()
        cond = api.condition()
        assert cond is not None and cond["status"] == "False" and cond["reason"] == "DriftOpen"
        assert "socket/socket-mode" in cond["message"] and "socket/member-allowed[bob]" in cond["message"]

        patches = len(api.calls("PATCH", "/status"))
        sink.emit(drift(EventName.DRIFT_DETECTED))  # the same drift again: nothing new to say
        assert sink.flush()
        assert len(api.calls("PATCH", "/status")) == patches

        sink.emit(drift(EventName.DRIFT_REVERTED))
        sink.emit(drift(EventName.DRIFT_RESOLVED, "member-allowed", "bob"))
        assert sink.flush()
        cond = api.condition()
        assert cond is not None and cond["status"] == "True"
    finally:
        sink.close()
    # The kubelet's own condition survived every patch (strategic merge keyed by type).
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in api.node["status"]["conditions"])
    assert all(ct == STRATEGIC_MERGE for m, p, ct, _ in api.requests if m == "PATCH")


def test_a_restart_with_the_same_open_drifts_patches_nothing(fake_api: tuple[FakeApi, client.CoreV1Api],
                                                             tmp_path: Path) -> None:
    api, core = fake_api
    sink = KubeSink(core, NODE, state_dir=tmp_path)
    sink.emit(drift(EventName.DRIFT_DETECTED))
    sink.close()
    assert api.condition() is not None and api.condition()["status"] == "False"  # type: ignore[index]
    patches = len(api.calls("PATCH", "/status"))

    # The agent restarts (a rolling upgrade): the drift is still open, nothing is re-emitted.
    again = KubeSink(core, NODE, state_dir=tmp_path)
    assert again.open_drifts == ["socket/socket-mode"]
    assert again.flush()
    again.close()
    assert len(api.calls("PATCH", "/status")) == patches


def test_a_repeated_drift_bumps_one_event(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, core = fake_api
    sink = KubeSink(core, NODE)
    for _ in range(3):
        sink.emit(drift(EventName.DRIFT_DETECTED))
    sink.emit(drift(EventName.DRIFT_DETECTED, "member-allowed", "bob"))
    sink.close()
    assert len(api.calls("POST", "/events")) == 2
    by_message = {e["message"].split(":")[0]: e for e in api.events.values()}
    mode = by_message["socket/socket-mode"]
    assert mode["count"] == 3 and mode["reason"] == "DriftDetected" and mode["type"] == "Warning"
    assert mode["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}
    assert mode["source"] == {"component": "nodeguard", "host": NODE}
    assert by_message["socket/member-allowed[bob]"]["count"] == 1


def test_an_expired_event_is_created_again(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, core = fake_api
    sink = KubeSink(core, NODE)
    try:
        sink.emit(drift(EventName.DRIFT_DETECTED))
        assert sink.flush()
        with api.lock:
            api.events.clear()  # events expire (the API server's --event-ttl)
        sink.emit(drift(EventName.DRIFT_DETECTED))
        assert sink.flush()
    finally:
        sink.close()
    assert len(api.calls("POST", "/events")) == 2
    assert [e["count"] for e in api.events.values()] == [1]


def test_emit_never_waits_for_a_hung_api_server(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, core = fake_api
    api.gate.clear()  # every request now hangs until the gate opens
    sink = KubeSink(core, NODE, queue_size=16, request_timeout=30)
    try:
        for i in range(500):
            sink.emit(drift(EventName.DRIFT_DETECTED, "member-allowed", f"user{i}"))
        for i in range(499):
            sink.emit(drift(EventName.DRIFT_RESOLVED, "member-allowed", f"user{i}"))
        # All 999 emits returned while the server answered nothing: the queue is bounded, the rest dropped.
        assert sink.dropped > 0
        assert sink.open_drifts == ["socket/member-allowed[user499]"]
        api.gate.set()
        assert sink.flush(timeout=60)
    finally:
        api.gate.set()
        sink.close()
    cond = api.condition()
    assert cond is not None and cond["status"] == "False"
    assert cond["message"] == "1 open drift(s): socket/member-allowed[user499]"


def test_outside_a_cluster_there_is_no_sink() -> None:
    assert kube_sink_from_env({}) is None
    assert kube_sink_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None  # no NODE_NAME: nothing to name
