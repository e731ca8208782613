"""KubeSink: the Node condition and Node Events, through the real `kubernetes` client.

The Kubernetes API server is faked, because it cannot run here: there is no kube-apiserver, etcd or
cluster on this machine. These tests run against a small local HTTP server on 127.0.0.1
(tests/support/kube_api.py) that speaks the API's JSON for the few endpoints the agent uses (read a
Node, PATCH its status, create and PATCH core/v1 Events). It is the only stand-in in these tests;
the client, its serialisation, its HTTP stack and TLS are the real ones.

What the fake does with a PATCH (strategic merge keyed by condition type, JSON merge patch) is the
fake's own logic; it is tested on its own in test_kube_api_fake.py and is not what these tests
count on. They assert what the sink sends (which condition, which content type, which counts) and
what it does when the API server hangs, forgets an Event or is reached in-cluster over TLS.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nodeguard.events.kube import CONDITION_TYPE, STRATEGIC_MERGE, KubeSink, kube_sink_from_env
from nodeguard.events.model import Event, EventName
from tests.support.kube_api import NODE, FakeApi, node_object, serving


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, client.CoreV1Api]]:
    api = FakeApi(node_object())
    api.gate.set()
    with serving(api) as server:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
        yield api, client.CoreV1Api(client.ApiClient(cfg))


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

        # One more drift: the message changes, the status does not, nor does its transition time.
        since = cond["lastTransitionTime"]
        sink.emit(drift(EventName.DRIFT_DETECTED, "socket-acl"))
        assert sink.flush()
        cond = api.condition()
        assert cond is not None and cond["message"].startswith("3 open drift(s)")
        assert cond["lastTransitionTime"] == since
        sink.emit(drift(EventName.DRIFT_RESOLVED, "socket-acl"))

        sink.emit(drift(EventName.DRIFT_REVERTED))
        sink.emit(drift(EventName.DRIFT_RESOLVED, "member-allowed", "bob"))
        assert sink.flush()
        cond = api.condition()
        assert cond is not None and cond["status"] == "True"
    finally:
        sink.close()
    # The sink's part in keeping the kubelet's conditions: every status PATCH is a strategic merge that
    # names nodeguard's condition only, so the API server merges it by type and touches no other.
    assert all(ct == STRATEGIC_MERGE for m, p, ct, _ in api.requests if m == "PATCH")
    status_patches = api.calls("PATCH", "/status")
    assert status_patches and all([c["type"] for c in body["status"]["conditions"]] == [CONDITION_TYPE]
                                  for body in status_patches)
    # The end result on the (faked) Node: the kubelet's own condition survived every patch. This leans on
    # the fake's strategic merge (tested in test_kube_api_fake.py) for what the API server would do.
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in api.node["status"]["conditions"])


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


def test_a_storm_of_one_drift_while_the_api_hangs_is_one_event(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, core = fake_api
    api.gate.clear()
    sink = KubeSink(core, NODE, queue_size=4)
    try:
        for _ in range(1000):  # a config-management tool fighting the agent
            sink.emit(drift(EventName.DRIFT_DETECTED))
            sink.emit(drift(EventName.DRIFT_REVERTED))
        assert sink.dropped == 0  # two pending entries, whatever the number of repeats
        api.gate.set()
        assert sink.flush(timeout=60)
    finally:
        api.gate.set()
        sink.close()
    assert len(api.calls("POST", "/events")) == 2
    counts = {e["reason"]: e["count"] for e in api.events.values()}
    assert counts == {"DriftDetected": 1000, "DriftReverted": 1000}


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


def _tls_material(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, as a cluster's API server would present."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "tls.crt").write_bytes(cert.public_bytes(pem))
    (folder / "tls.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "ca.crt", folder / "tls.crt", folder / "tls.key"


def test_in_cluster_config_reaches_the_api_over_tls_with_the_pod_token(tmp_path: Path) -> None:
    """The in-cluster path as a pod takes it: KUBERNETES_SERVICE_HOST/PORT, the service account's
    token and CA; the local server presents a certificate signed by that CA and sees the token."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    _, cert, key = _tls_material(sa)
    (sa / "token").write_text("pod-token-123")
    api = FakeApi(node_object())
    api.gate.set()
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with serving(api, tls) as server:
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
               "NODE_NAME": NODE}
        sink = kube_sink_from_env(env, service_account_dir=sa)
        assert sink is not None
        sink.emit(drift(EventName.DRIFT_DETECTED))
        sink.close()
    cond = api.condition()
    assert cond is not None and cond["status"] == "False"
    # RFC 7235: the scheme is case-insensitive (the client writes "bearer").
    assert api.authorization and {a.lower() for a in api.authorization} == {"bearer pod-token-123"}
    assert len(api.calls("POST", "/events")) == 1


def test_outside_a_cluster_there_is_no_sink() -> None:
    assert kube_sink_from_env({}) is None
    assert kube_sink_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None  # no NODE_NAME: nothing to name
