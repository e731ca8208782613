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

Across restarts the open drifts are the engine's (findings.json): those tests run a real engine
with the real docker-group control on a sandbox's /etc/group and a real StateStore.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nodeguard.agent import FanoutSink, run_agent
from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.engine import Engine, EngineOptions
from nodeguard.events.kube import (
    CONDITION_TYPE,
    MAX_MESSAGE,
    OLD_OPEN_DRIFTS_FILE,
    STRATEGIC_MERGE,
    Condition,
    KubeSink,
    kube_sink_from_env,
)
from nodeguard.events.model import Event, EventName, EventSink
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy
from nodeguard.watch import Trigger
from tests.support.events import RecordingSink
from tests.support.kube_api import NODE, FakeApi, fake_core_api, node_object, serving
from tests.support.sandbox import Sandbox


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, client.CoreV1Api]]:
    with fake_core_api() as pair:
        yield pair


def drift(name: EventName, rule: str = "socket-mode", subject: str | None = None) -> Event:
    attrs: dict[str, Any] = {"nodeguard.control": "socket", "nodeguard.rule": rule}
    if subject:
        attrs["nodeguard.subject"] = subject
    return Event(name, "ERROR", f"{rule} drifted", attrs)


def test_condition_is_patched_only_when_it_changes(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    api, core = fake_api
    sink = KubeSink(core, NODE)
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


BOB_IN_DOCKER = "docker:x:990:bob\n"


def bob_joins_docker(sb: Sandbox) -> None:
    sb.write("/etc/group", sb.read("/etc/group").replace("docker:x:990:\n", BOB_IN_DOCKER))


def bob_leaves_docker(sb: Sandbox) -> None:
    sb.write("/etc/group", sb.read("/etc/group").replace(BOB_IN_DOCKER, "docker:x:990:\n"))


def agent_life(sb: Sandbox, state: Path, kube: KubeSink | None) -> RecordingSink:
    """One life of the agent, wired as run_agent wires it: the engine (it loads findings.json), the
    Kubernetes sink handed the engine's open drifts, the start-up passes (a real docker-group control
    on the sandbox's /etc/group, observe mode), stop. The sink is flushed and closed."""
    recorder = RecordingSink()
    sinks: list[EventSink] = [recorder] if kube is None else [recorder, kube]
    engine = Engine(EngineOptions(HostRoot(sb.root), state), load_policy(None), FanoutSink(sinks),
                    controls=[DockerGroupControl()], watchers=[])
    if kube is not None:
        kube.use_engine(engine.failing_keys)
    runner = threading.Thread(target=engine.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while engine.passes < len(engine.lanes):  # every lane's start-up pass is over
            assert time.monotonic() < deadline, "the start-up passes did not end"
            time.sleep(0.01)
    finally:
        engine.stop()
        runner.join(30)
    if kube is not None:
        assert kube.flush()
        kube.close()
    return recorder


def status_patches(api: FakeApi) -> list[str]:
    return [body["status"]["conditions"][0]["status"] for body in api.calls("PATCH", "/status")]


def test_a_restart_with_the_same_open_drifts_patches_nothing(fake_api: tuple[FakeApi, client.CoreV1Api],
                                                             sandbox: Sandbox, tmp_path: Path) -> None:
    api, core = fake_api
    state = tmp_path / "state"
    bob_joins_docker(sandbox)
    agent_life(sandbox, state, KubeSink(core, NODE, wait_for_engine=True))
    assert api.condition() is not None and api.condition()["status"] == "False"  # type: ignore[index]
    patches = len(api.calls("PATCH", "/status"))

    # The agent restarts (a rolling upgrade): the drift is still open, nothing is re-emitted; the
    # open drift is the one findings.json keeps.
    again = KubeSink(core, NODE, wait_for_engine=True)
    events = agent_life(sandbox, state, again)
    assert again.open_drifts == ["docker-group/member-allowed[bob]"]
    assert not [e for e in events.events if e.name is EventName.DRIFT_DETECTED]
    assert len(api.calls("PATCH", "/status")) == patches


def test_a_drift_resolved_while_the_agent_was_down_clears_the_condition(
        fake_api: tuple[FakeApi, client.CoreV1Api], sandbox: Sandbox, tmp_path: Path) -> None:
    api, core = fake_api
    state = tmp_path / "state"
    bob_joins_docker(sandbox)
    agent_life(sandbox, state, KubeSink(core, NODE, wait_for_engine=True))
    # (A first start has no findings.json: the condition may say True before the first pass ends.)
    assert status_patches(api)[-1] == "False"
    before = len(status_patches(api))

    bob_leaves_docker(sandbox)  # while the agent is down
    again = KubeSink(core, NODE, wait_for_engine=True)
    events = agent_life(sandbox, state, again)
    assert [e.name for e in events.events if e.name.value.startswith("nodeguard.drift.")] == [EventName.DRIFT_RESOLVED]
    assert again.open_drifts == []
    cond = api.condition()
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "NoOpenDrift"
    # The restarted sink's one PATCH: True once the engine found the drift gone (False, from
    # findings.json, is what the Node already said: nothing to send for it).
    assert status_patches(api)[before:] == ["True"]


def test_open_drifts_in_findings_json_are_false_at_the_first_sync(fake_api: tuple[FakeApi, client.CoreV1Api],
                                                                 sandbox: Sandbox, tmp_path: Path) -> None:
    """The Kubernetes sink turned on later (or its old open-drift file lost): the drift is in
    findings.json only. The first condition the Node gets says False, never True first."""
    api, core = fake_api
    state = tmp_path / "state"
    bob_joins_docker(sandbox)
    agent_life(sandbox, state, None)  # no sink: nothing on the Node, the drift on record in findings.json
    assert "docker-group/member-allowed/bob" in (state / "findings.json").read_text()
    assert not (state / OLD_OPEN_DRIFTS_FILE).exists()
    assert api.condition() is None

    kube = KubeSink(core, NODE, wait_for_engine=True)
    events = agent_life(sandbox, state, kube)
    assert not [e for e in events.events if e.name is EventName.DRIFT_DETECTED]  # nothing new to emit
    assert status_patches(api) == ["False"]
    cond = api.condition()
    assert cond is not None and cond["message"] == "1 open drift(s): docker-group/member-allowed[bob]"


OTHER_CONTROLS = ("daemonConfig", "daemonFiles", "socket", "firewall", "listeners", "runtime", "host", "hostAudit",
                  "hostLayout")
DOCKER_GROUP_ONLY = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: observe\n"
                     "  agent:\n    attribution: {enabled: false}\n  controls:\n"
                     + "".join(f"    {key}: {{mode: off}}\n" for key in OTHER_CONTROLS))


def test_run_agent_hands_the_engine_to_the_sink(fake_api: tuple[FakeApi, client.CoreV1Api],
                                                sandbox: Sandbox, tmp_path: Path) -> None:
    """The wiring of `nodeguard run`: run_agent with the sink kube_sink_from_env builds (it waits for
    an engine). findings.json names an open drift: the Node's first and only condition is False."""
    api, core = fake_api
    state = tmp_path / "state"
    bob_joins_docker(sandbox)
    agent_life(sandbox, state, None)
    policy = tmp_path / "policy.yaml"
    policy.write_text(DOCKER_GROUP_ONLY)

    class SigtermOnceTheConditionIsSet:
        """A watcher: run_agent starts it once its signal handlers are in place; it sends the agent
        SIGTERM, as the kubelet does, once the Node has the condition (or after 30 s without)."""

        def start(self, trigger: Trigger) -> None:
            threading.Thread(target=self._stop_later, daemon=True).start()

        @staticmethod
        def _stop_later() -> None:
            deadline = time.monotonic() + 30
            while api.condition() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        def stop(self) -> None:
            pass

    switch = sys.getswitchinterval()
    try:
        engine = run_agent(EngineOptions(HostRoot(sandbox.root), state, policy),
                           [KubeSink(core, NODE, wait_for_engine=True)], watchers=[SigtermOnceTheConditionIsSet()])
    finally:
        sys.setswitchinterval(switch)  # run_agent shortens it for its lanes: not for the rest of the tests
    assert engine.failing_keys() == ["docker-group/member-allowed/bob"]
    assert status_patches(api) == ["False"]
    cond = api.condition()
    assert cond is not None and cond["message"] == "1 open drift(s): docker-group/member-allowed[bob]"


def test_the_condition_waits_for_the_engine(fake_api: tuple[FakeApi, client.CoreV1Api]) -> None:
    """Built before the engine, the agent's sink says nothing about the condition until it has the
    engine's open drifts: an empty set then would be a True with drifts open. Node Events go out."""
    api, core = fake_api
    sink = KubeSink(core, NODE, wait_for_engine=True)
    try:
        sink.emit(Event(EventName.POLICY_REJECTED, "ERROR", "bad policy", {}))
        assert sink.flush()
        assert api.condition() is None and not api.calls("PATCH", "/status")
        assert len(api.calls("POST", "/events")) == 1
        sink.use_engine(lambda: ["socket/socket-mode/"])
        assert sink.flush()
        assert status_patches(api) == ["False"]
        assert sink.open_drifts == ["socket/socket-mode"]
    finally:
        sink.close()


def test_the_message_of_many_drifts_is_the_one_sorting_them_all_gives() -> None:
    """100,000 open drifts (a bulk drift in observe mode) are the engine's real keys: the message
    picks the smallest names only, and reads exactly as the first MAX_MESSAGE characters of all."""
    names = [f"docker-group/member-allowed[user{i}]" for i in range(5000)] + ["/", "a/b"]
    everything = f"{len(names)} open drift(s): {', '.join(sorted(names))}"
    assert Condition.for_open(names) == Condition("False", "DriftOpen", everything[:MAX_MESSAGE - 1] + "…")
    assert Condition.for_open(names[:3]).message == f"3 open drift(s): {', '.join(sorted(names[:3]))}"


def test_an_old_open_drifts_file_is_removed_and_never_read(tmp_path: Path) -> None:
    """findings.json is the one record of open drifts; the copy an older version kept goes at start."""
    old = tmp_path / OLD_OPEN_DRIFTS_FILE
    old.write_text(json.dumps({"keys": ["socket/socket-mode/"]}))
    assert kube_sink_from_env({}, state_dir=tmp_path) is None  # outside a cluster too
    assert not old.exists()


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
        # No engine here: the sink keeps the open set from the drift events it sees.
        sink = kube_sink_from_env(env, service_account_dir=sa, wait_for_engine=False)
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
