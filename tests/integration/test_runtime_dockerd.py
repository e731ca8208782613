"""The runtime control and the events watcher against a real dockerd on a sandbox host root."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeguard.api_prefetch import ForkedDaemonReader
from nodeguard.audit import run_audit
from nodeguard.controls.base import Context
from nodeguard.controls.runtime import RuntimeControl
from nodeguard.host import HostRoot
from nodeguard.policy import Policy, load_policy, parse_policy
from nodeguard.structs import Finding, Status
from nodeguard.watch_docker import DockerEventsWatcher
from tests.support.dockerd import Dockerd, import_busybox, running_dockerd
from tests.support.sandbox import Sandbox, make_sandbox

pytestmark = [pytest.mark.dockerd, pytest.mark.root]


@dataclass
class Fleet:
    sb: Sandbox
    d: Dockerd
    image: str


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """One daemon for the module, with a container per case (starting dockerd costs seconds)."""
    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    sb = make_sandbox(root)
    try:
        with running_dockerd(sb, {"live-restore": False}) as d:
            image = import_busybox(d)
            # A relative symlink resolves the same inside the host root and on this machine, so the
            # container can really start with the sandbox daemon's socket mounted.
            sb.path("/srv").mkdir()
            os.symlink("../run/docker.sock", sb.path("/srv/docker.sock"))
            d.cli("run", "-d", "--name", "sock-rel", "-v", f"{sb.path('/srv/docker.sock')}:/sock", image,
                  "sleep", "600")
            # Through /var/run -> /run (absolute, so only right inside the host root): created, never started.
            d.cli("create", "--name", "sock-varrun", "-v", f"{sb.path('/var/run/docker.sock')}:/sock:ro", image)
            # The folder holding the socket exposes it as much as the socket itself.
            d.cli("create", "--name", "run-folder", "-v", f"{sb.path('/run')}:/hostrun", image)
            d.cli("create", "--name", "priv", "--privileged", image)
            d.cli("run", "-d", "--name", "pid-host", "--pid", "host", image, "sleep", "600")
            d.cli("create", "--name", "net-host", "--net", "host", image)
            d.cli("create", "--name", "caps", "--cap-add", "SYS_ADMIN", "--cap-add", "CHOWN", image)
            d.cli("create", "--name", "host-root", "-v", f"{sb.root}:/host:ro", image)
            d.cli("create", "--name", "etc-ro", "-v", f"{sb.path('/etc')}:/hostetc:ro", image)
            sb.path("/etc/app").mkdir()
            d.cli("create", "--name", "etc-app-ro", "-v", f"{sb.path('/etc/app')}:/cfg:ro", image)
            d.cli("run", "-d", "--name", "clean", "--security-opt", "no-new-privileges", image, "sleep", "600")
            try:
                yield Fleet(sb, d, image)
            finally:
                # sleep as PID 1 ignores SIGTERM: a daemon stopping its containers would wait 10 s each.
                ids = d.cli("ps", "-aq", check=False).stdout.split()
                if ids:
                    d.cli("rm", "-f", *ids, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def audit(sb: Sandbox, policy: Policy | None = None) -> list[Finding]:
    ctx = Context(HostRoot(sb.root), policy or load_policy())
    control = RuntimeControl()
    return control.evaluate(control.observe(ctx), ctx.policy)


def failing(findings: list[Finding], rule: str) -> dict[str, Finding]:
    return {f.subject or "": f for f in findings if f.rule == rule and f.status is Status.FAIL}


def test_each_container_is_reported_for_what_it_does(fleet: Fleet) -> None:
    findings = audit(fleet.sb)
    sock = failing(findings, "docker-socket-mount")
    assert set(sock) == {"sock-rel", "sock-varrun", "run-folder", "host-root"}
    assert sock["sock-rel"].details["state"] == "running"
    assert sock["sock-rel"].details["mounts"][0]["resolved"] == "/run/docker.sock"
    assert sock["sock-varrun"].details["state"] == "created"
    assert sock["sock-varrun"].details["mounts"][0]["read_only"] is True
    assert sock["run-folder"].details["mounts"][0]["resolved"] == "/run"
    assert sock["sock-rel"].cis == "5.32"

    assert set(failing(findings, "privileged")) == {"priv"}  # created, never started: still a finding
    assert set(failing(findings, "host-pid")) == {"pid-host"}
    assert set(failing(findings, "host-network")) == {"net-host"}
    caps = failing(findings, "added-capabilities")
    assert set(caps) == {"caps"} and caps["caps"].observed == ["SYS_ADMIN"]  # CHOWN is a default capability

    sensitive = failing(findings, "sensitive-mount")
    assert set(sensitive) == {"host-root", "etc-ro"}  # a read-only file inside /etc is tolerated
    assert sensitive["host-root"].details["mounts"][0]["sensitive"] == "/"
    assert sensitive["etc-ro"].details["mounts"][0]["sensitive"] == "/etc"

    nnp = failing(findings, "no-new-privileges")
    assert "clean" not in nnp and "priv" in nnp
    # The clean container appears in no failing finding at all.
    assert not [f for f in findings if f.subject == "clean" and f.status is Status.FAIL]
    engine = next(f for f in findings if f.rule == "engine-version")
    assert engine.status is Status.PASS and engine.observed == fleet.d.info()["ServerVersion"]


def test_allow_lists_match_whole_container_names(fleet: Fleet) -> None:
    policy = parse_policy(json.dumps({"apiVersion": "nodeguard.io/v1alpha1", "kind": "NodeGuardPolicy",
                                      "spec": {"controls": {"runtime": {
        "allowedPrivileged": ["priv"], "allowedSocketMounts": ["sock-rel", "sock"],
        "allowedHostNamespaces": ["pid-host"], "allowedCapabilities": ["cap_sys_admin"],
        "minEngineVersion": "99.0"}}}}))
    findings = audit(fleet.sb, policy)
    assert failing(findings, "privileged") == {}
    assert set(failing(findings, "docker-socket-mount")) == {"sock-varrun", "run-folder", "host-root"}
    assert failing(findings, "host-pid") == {}
    assert failing(findings, "added-capabilities") == {}
    engine = next(f for f in findings if f.rule == "engine-version")
    assert engine.status is Status.FAIL and engine.expected == ">= 99.0"


def test_a_setting_written_but_not_applied_is_pending(fleet: Fleet) -> None:
    cfg_file = fleet.d.config_file
    original = cfg_file.read_text()
    try:
        cfg_file.write_text(json.dumps({"live-restore": True, "userns-remap": "default"}))
        findings = audit(fleet.sb)
        applied = {f.subject: f for f in findings if f.rule == "config-applied"}
        live = applied["live-restore"]
        assert live.status is Status.FAIL
        assert live.details["pending"] is True and live.details["reload_required"] is True
        remap = applied["userns-remap"]
        assert remap.status is Status.FAIL and remap.details["restart_required"] is True
        active = next(f for f in findings if f.rule == "live-restore-active")
        assert active.status is Status.FAIL and "pending" in active.message

        # A reload applies live-restore (not userns-remap): the first pending change is gone.
        cfg_file.write_text(json.dumps({"live-restore": True}))
        fleet.d.sighup()
        deadline = time.monotonic() + 20
        while not fleet.d.info()["LiveRestoreEnabled"] and time.monotonic() < deadline:
            time.sleep(0.1)
        findings = audit(fleet.sb)
        applied = {f.subject: f for f in findings if f.rule == "config-applied"}
        assert applied["live-restore"].status is Status.PASS
        assert next(f for f in findings if f.rule == "live-restore-active").status is Status.PASS
    finally:
        cfg_file.write_text(original)
        fleet.d.sighup()


def test_check_command_reports_the_socket_mount(fleet: Fleet) -> None:
    proc = subprocess.run([sys.executable, "-m", "nodeguard", "check", "--host-root", str(fleet.sb.root),
                           "--only", "runtime", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    subjects = {f["subject"] for f in report["findings"]
                if f["rule"] == "docker-socket-mount" and f["status"] == "fail"}
    assert "sock-rel" in subjects


# -- check's forked reader (nodeguard.api_prefetch) ---------------------------------------------

def _as_rows(findings: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(f["control"], f["rule"], f["subject"], f["status"], f["observed"], f["message"]) for f in findings]


def test_check_through_its_forked_reader_reports_what_the_in_process_audit_reports(fleet: Fleet) -> None:
    """`check` reads the daemon in a forked child; the findings are those of the agent's way (the
    API read in process, on a thread), field by field, for a daemon with a container of each kind.
    (The runtime control only: the firewall and listeners controls would read this machine's network.)"""
    proc = subprocess.run([sys.executable, "-m", "nodeguard", "check", "--host-root", str(fleet.sb.root),
                           "--only", "runtime", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    forked = _as_rows(json.loads(proc.stdout)["findings"])
    in_process = run_audit(HostRoot(fleet.sb.root), load_policy(), only=["runtime"])
    expected = _as_rows([{"control": f.control, "rule": f.rule, "subject": f.subject, "status": f.status.value,
                          "observed": json.loads(json.dumps(f.observed)), "message": f.message}
                         for f in in_process.findings])
    runtime = [row for row in forked if row[0] == "runtime"]
    assert len(runtime) > 20, runtime  # the containers were really read: one row per container and rule
    assert forked == expected


def test_a_reader_killed_before_it_answers_is_replaced_by_a_read_in_process(
        fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    policy = load_policy()
    expected = [(f.rule, f.subject, f.status, f.message)
                for f in run_audit(HostRoot(fleet.sb.root), policy, only=["runtime"]).findings]
    assert len(expected) > 20
    reader = ForkedDaemonReader()
    pid = reader.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with caplog.at_level("WARNING", logger="nodeguard.api_prefetch"):
        report = run_audit(HostRoot(fleet.sb.root), policy, only=["runtime"], daemon_reader=reader)
    assert [(f.rule, f.subject, f.status, f.message) for f in report.findings] == expected
    assert "reading the daemon in process" in caplog.text
    assert reader.pid is None
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(pid, os.WNOHANG)


def test_watcher_triggers_on_a_new_socket_mounting_container(fleet: Fleet) -> None:
    seen: queue.Queue[tuple[str, str]] = queue.Queue()
    watcher = DockerEventsWatcher(HostRoot(fleet.sb.root), load_policy())
    watcher.start(lambda control, reason: seen.put((control, reason)))
    try:
        assert watcher.connected.wait(20), watcher.last_error
        assert seen.get(timeout=10) == ("runtime", "docker events stream (re)connected: resync")
        api = fleet.d.client().api
        api.create_container(fleet.image, name="late-sock", host_config=api.create_host_config(
            binds=[f"{fleet.sb.path('/srv/docker.sock')}:/sock"]))
        while True:
            control, reason = seen.get(timeout=10)
            if "late-sock" in reason:
                break
        assert control == "runtime" and reason == "docker event: container late-sock create"
        # What the trigger asks for: the control, run again, now reports the new container.
        assert "late-sock" in failing(audit(fleet.sb), "docker-socket-mount")
    finally:
        watcher.stop()
        subprocess.run(["docker", "-H", fleet.d.url, "rm", "-f", "late-sock"], capture_output=True, check=False)
    assert watcher._thread is None


def test_watcher_waits_for_a_daemon_and_resyncs_after_a_break(sandbox: Sandbox) -> None:
    seen: queue.Queue[str] = queue.Queue()
    watcher = DockerEventsWatcher(HostRoot(sandbox.root), load_policy(), min_backoff=0.1, max_backoff=0.5)
    watcher.start(lambda control, reason: seen.put(reason))
    try:
        # No daemon yet: the watcher retries quietly, with the reason at hand.
        deadline = time.monotonic() + 10
        while watcher.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.last_error is not None and "no daemon socket" in watcher.last_error
        assert seen.empty()
        with running_dockerd(sandbox) as d:
            assert watcher.connected.wait(20), watcher.last_error
            assert "resync" in seen.get(timeout=10)
            image = import_busybox(d)
            created = d.cli("create", "--name", "px", "--privileged", image, check=False)
            assert created.returncode == 0, created.stderr
            reasons = []
            while not any("container px create" in r for r in reasons):
                reasons.append(seen.get(timeout=10))
        # The daemon is gone: the stream broke, the watcher is retrying, not crashed.
        deadline = time.monotonic() + 10
        while watcher.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not watcher.connected.is_set()
        assert watcher._thread is not None and watcher._thread.is_alive()
        while not seen.empty():
            seen.get_nowait()
        with running_dockerd(sandbox, write_config=False):
            assert watcher.connected.wait(20), watcher.last_error
            assert "resync" in seen.get(timeout=10)
            assert watcher.connects == 2
    finally:
        watcher.stop()
