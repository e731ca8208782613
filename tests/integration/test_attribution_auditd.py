"""Attribution against a real auditd: who made the drift, named from the audit trail (issue 16).

A real `auditd -n -c DIR` logs under the sandbox host root (tests/support/auditd.py); a rule keyed
to the sandbox path; a child process with a known pid makes the change with the real tool
(chmod, usermod --prefix, an editor's write-and-rename) under a login uid set as pam_loginuid
would; the real agent (`nodeguard run`) names that pid, its executable and the login.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess, is_event, running_agent
from tests.support.auditd import Auditd, as_login, running_auditd
from tests.support.sandbox import ALICE_UID, BOB_UID, DOCKER_GID, Sandbox, require, require_tool

pytestmark = [pytest.mark.root]

ATTRIBUTED = "nodeguard.drift.attributed"


@pytest.fixture
def auditd(sandbox: Sandbox, tmp_path: Path) -> Iterator[Auditd]:
    with running_auditd(sandbox, tmp_path / "auditd") as a:
        yield a


@pytest.fixture(params=["ENRICHED", "RAW"])
def auditd_any_format(sandbox: Sandbox, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Auditd]:
    with running_auditd(sandbox, tmp_path / "auditd", fmt=request.param) as a:
        yield a


@pytest.fixture
def docker_sock(sandbox: Sandbox) -> Iterator[Path]:
    """A real unix socket where dockerd's would be (root:docker 0660), no daemon behind it."""
    path = sandbox.path("/run/docker.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    os.chown(path, 0, DOCKER_GID)
    path.chmod(0o660)
    try:
        yield path
    finally:
        srv.close()


def wait_first_pass(agent: AgentProcess, state_dir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (state_dir / "findings.json").exists():
        assert agent.proc.poll() is None, agent.stderr()[-3000:]
        assert time.monotonic() < deadline, "agent never finished its first pass"
        time.sleep(0.02)


def attributed_for(agent: AgentProcess, event: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    return agent.wait_for(lambda e: e["event.name"] == ATTRIBUTED
                          and e["attributes"].get("nodeguard.attributed.event_id") == event["event.id"], timeout)


Event = dict[str, Any]


def actor_of_socket_chmod(sandbox: Sandbox, state: Path, chmod: Callable[[], object]) -> tuple[Event, dict[str, Any]]:
    """An observe-mode agent sees `chmod` make the socket 0666: its detected event and the
    attributes of the attributed one that follows it."""
    with running_agent(sandbox.root, state, "--mode", "observe") as agent:
        wait_first_pass(agent, state)
        mark = agent.mark()
        chmod()
        detected = agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark)
        return detected, attributed_for(agent, detected)["attributes"]


def run_child(argv: list[str], uid: int) -> int:
    child = as_login(uid, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return child.pid


def test_socket_chmod_in_enforce_names_pid_exe_and_login(sandbox: Sandbox, tmp_path: Path,
                                                          auditd_any_format: Auditd, docker_sock: Path) -> None:
    key = auditd_any_format.watch(docker_sock)
    state = tmp_path / "state"
    with running_agent(sandbox.root, state, "--mode", "enforce") as agent:
        wait_first_pass(agent, state)
        mark = agent.mark()
        pid = run_child(["chmod", "0666", str(docker_sock)], ALICE_UID)
        detected = agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark)
        reverted = agent.wait_for(is_event("nodeguard.drift.reverted", "socket-mode"), after=mark)
        chmod = os.path.realpath(require_tool("chmod"))
        for drift in (detected, reverted):
            a = attributed_for(agent, drift)["attributes"]
            # The same finding, so a SIEM joins the actor to the drift.
            for k in ("nodeguard.control", "nodeguard.rule", "file.path"):
                assert a[k] == drift["attributes"][k]
            assert a["nodeguard.actor.source"] == "audit", a
            assert a["process.pid"] == pid  # the chmod, not the agent's own revert
            assert a["process.executable.path"] == chmod
            # PROCTITLE as the kernel gives it: the title it cached when the shell set the login uid
            # (a LOGIN record) outlives the exec, so the shell's line comes first, then the chmod.
            assert a["process.command_line"].endswith(f"chmod 0666 {docker_sock}"), a
            assert a["user.id"] == 0
            assert a["nodeguard.actor.login_uid"] == ALICE_UID
            assert a["nodeguard.actor.login_name"] == "alice"
            assert a["nodeguard.actor.audit_key"] == key
            assert a["nodeguard.actor.syscall"] in ("fchmodat", "fchmodat2", "chmod")
            assert "container.id" not in a  # a host process
        # The drift event itself went out unchanged and before its actor.
        ids = [(e["event.id"], e["attributes"].get("nodeguard.attributed.event_id")) for e in agent.events()]
        assert ids.index((detected["event.id"], None)) < [i for _, i in ids].index(detected["event.id"])


def test_usermod_prefix_in_observe_names_usermod(sandbox: Sandbox, tmp_path: Path, auditd: Auditd) -> None:
    usermod = os.path.realpath(require_tool("usermod"))
    key = auditd.watch(sandbox.path("/etc/group"))
    state = tmp_path / "state"
    with running_agent(sandbox.root, state, "--mode", "observe") as agent:
        wait_first_pass(agent, state)
        mark = agent.mark()
        pid = run_child(["usermod", "--prefix", str(sandbox.root), "-aG", "docker", "bob"], BOB_UID)
        detected = agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="bob"), after=mark)
        a = attributed_for(agent, detected)["attributes"]
        assert a["nodeguard.subject"] == "bob"
        assert a["nodeguard.actor.source"] == "audit", a
        assert a["process.pid"] == pid
        assert a["process.executable.path"] == usermod
        assert a["nodeguard.actor.login_uid"] == BOB_UID
        assert a["nodeguard.actor.login_name"] == "bob"
        assert a["nodeguard.actor.audit_key"] == key
        assert "docker:x:990:bob" in sandbox.read("/etc/group")  # observe: nothing written back


def test_editor_rename_of_daemon_json_names_the_editor(sandbox: Sandbox, tmp_path: Path, auditd: Auditd) -> None:
    cfg = sandbox.path("/etc/docker/daemon.json")
    cfg.write_text(json.dumps({"icc": False, "live-restore": True, "no-new-privileges": True,
                               "userland-proxy": False}))
    key = auditd.watch(sandbox.path("/etc/docker"))  # CIS 1.1.6: the folder, so a rename over the file is seen
    state = tmp_path / "state"
    editor = ("import os, sys; p = sys.argv[1]; t = os.path.join(os.path.dirname(p), '.daemon.json.swp'); "
              "open(t, 'w').write('{\"icc\": true}'); os.rename(t, p)")
    with running_agent(sandbox.root, state, "--mode", "observe") as agent:
        wait_first_pass(agent, state)
        mark = agent.mark()
        pid = run_child([sys.executable, "-c", editor, str(cfg)], ALICE_UID)
        detected = agent.wait_for(is_event("nodeguard.drift.detected", "icc"), after=mark)
        a = attributed_for(agent, detected)["attributes"]
        assert a["nodeguard.actor.source"] == "audit", a
        assert a["process.pid"] == pid
        assert a["process.executable.path"] == os.path.realpath(sys.executable)
        assert a["nodeguard.actor.syscall"] in ("rename", "renameat", "renameat2")
        assert a["nodeguard.actor.login_name"] == "alice"
        assert a["nodeguard.actor.audit_key"] == key


def test_without_a_rule_the_actor_is_unavailable_and_says_why(sandbox: Sandbox, tmp_path: Path, auditd: Auditd,
                                                              docker_sock: Path) -> None:
    detected, a = actor_of_socket_chmod(sandbox, tmp_path / "state",
                                        lambda: run_child(["chmod", "0666", str(docker_sock)], ALICE_UID))
    assert a["nodeguard.actor.source"] == "unavailable"
    assert a["nodeguard.actor.reason"] == f"no audit rule covers {detected['attributes']['file.path']}"
    assert "process.pid" not in a


def test_with_the_log_unreadable_the_reason_says_so(sandbox: Sandbox, tmp_path: Path, docker_sock: Path) -> None:
    # No auditd needed: the log the host's auditd.conf names is not there at all.
    sandbox.write("/etc/audit/auditd.conf", "log_file = /var/log/audit/elsewhere.log\n")
    _, a = actor_of_socket_chmod(sandbox, tmp_path / "state", lambda: docker_sock.chmod(0o666))
    assert a["nodeguard.actor.source"] == "unavailable"
    assert a["nodeguard.actor.reason"].startswith("the audit log is unreadable:"), a
    assert "/var/log/audit/elsewhere.log" in a["nodeguard.actor.reason"]


def test_rules_and_enabled_flag_are_restored_even_when_the_test_fails(sandbox: Sandbox, tmp_path: Path) -> None:
    from tests.support.auditd import audit_status, auditctl

    before = audit_status()["enabled"]
    target = sandbox.path("/etc/group")
    with pytest.raises(RuntimeError), running_auditd(sandbox, tmp_path / "auditd") as a:
        key = a.watch(target)
        assert key in auditctl("-l").stdout
        raise RuntimeError("the test failed here")
    assert key not in auditctl("-l").stdout
    status = audit_status()
    assert status["enabled"] == before
    assert status["pid"] == "0" or not a.own


def test_a_record_rotated_into_audit_log_1_is_still_found(sandbox: Sandbox, tmp_path: Path, auditd: Auditd,
                                                          docker_sock: Path) -> None:
    require(auditd.own, "rotating the log of the machine's own auditd is not this test's to do")
    key = auditd.watch(docker_sock)
    state = tmp_path / "state"
    with running_agent(sandbox.root, state, "--mode", "observe") as agent:
        wait_first_pass(agent, state)
        mark = agent.mark()
        # The agent paused, so the record is rotated away before it looks: chmod, auditd writes it,
        # auditd rotates (SIGUSR1: audit.log -> audit.log.1), then the agent wakes to the inotify event.
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            pid = run_child(["chmod", "0666", str(docker_sock)], ALICE_UID)
            auditd.wait_for_key(key)
            os.kill(auditd.pid, signal.SIGUSR1)
            rotated = auditd.log.with_name("audit.log.1")
            deadline = time.monotonic() + 10
            while not (rotated.exists() and key.encode() in rotated.read_bytes()):
                assert time.monotonic() < deadline, "auditd did not rotate"
                time.sleep(0.02)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        assert key.encode() not in auditd.log.read_bytes()
        detected = agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark)
        a = attributed_for(agent, detected)["attributes"]
        assert a["nodeguard.actor.source"] == "audit", a
        assert a["process.pid"] == pid


def test_with_auditd_stopped_the_reason_says_so(sandbox: Sandbox, tmp_path: Path, docker_sock: Path) -> None:
    from tests.support.auditd import audit_status

    require_tool("auditctl")
    require(audit_status().get("pid", "0") == "0", "this machine's auditd runs: 'not running' cannot be shown here")
    # What a host keeps when auditd is stopped: its config, its rules, its log.
    sandbox.write("/etc/audit/auditd.conf", "log_file = /var/log/audit/audit.log\n")
    sandbox.write("/etc/audit/rules.d/docker.rules", "-w /run/docker.sock -p wa -k docker\n")
    sandbox.write("/var/log/audit/audit.log", "", 0o600)
    _, a = actor_of_socket_chmod(sandbox, tmp_path / "state", lambda: docker_sock.chmod(0o666))
    assert a["nodeguard.actor.source"] == "unavailable"
    assert a["nodeguard.actor.reason"] == "auditd is not running"


@pytest.mark.dockerd
def test_a_container_that_chmods_the_socket_is_named(sandbox: Sandbox, tmp_path: Path, auditd: Auditd) -> None:
    from tests.support.dockerd import import_busybox, running_dockerd

    hardened = {"icc": False, "live-restore": True, "no-new-privileges": True, "userland-proxy": False,
                "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}
    with running_dockerd(sandbox, hardened) as d:
        image = import_busybox(d)
        key = auditd.watch(d.socket)
        state = tmp_path / "state"
        with running_agent(sandbox.root, state, "--mode", "observe") as agent:
            wait_first_pass(agent, state)
            mark = agent.mark()
            # The socket's folder mounted into a container, changed from inside under another name
            # (/hostrun/docker.sock): the kernel's watch is on the inode, so auditd logs it anyway.
            cid = d.cli("run", "-d", "-v", f"{sandbox.path('/run')}:/hostrun", image, "sh", "-c",
                        "chmod 666 /hostrun/docker.sock && exec sleep 120").stdout.strip()
            try:
                detected = agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark,
                                          timeout=30)
                a = attributed_for(agent, detected)["attributes"]
                assert a["nodeguard.actor.source"] == "audit", a
                assert a["nodeguard.actor.audit_key"] == key
                # The chmod (a child of the container's shell) has exited by now; its parent, the
                # shell now running sleep, still runs in the container's cgroup.
                assert a["container.id"] == cid, a
                assert a["process.executable.path"] == "/bin/busybox"  # the path inside the container
                # busybox runs chmod in a forked child without exec: the shell's argv is its title.
                assert a["process.command_line"] == "sh -c chmod 666 /hostrun/docker.sock && exec sleep 120"
                assert a["process.executable.name"] == "chmod"
            finally:
                d.cli("rm", "-f", cid, check=False)
