"""runtime/daemon-unresponsive: a socket that accepts and never answers is a finding, bounded in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeguard.api_prefetch import ForkedDaemonReader
from nodeguard.audit import run_audit
from nodeguard.controls.base import Context
from nodeguard.controls.runtime import RuntimeControl
from nodeguard.host import HostRoot
from nodeguard.policy import parse_policy
from nodeguard.structs import Status
from tests.support.hung_daemon import hung_socket
from tests.support.orphans import run_and_count_orphans
from tests.support.sandbox import Sandbox, require, require_root

POLICY = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
          "spec:\n  controls:\n    runtime:\n      timeoutSeconds: 0.5\n")


@pytest.mark.root
def test_a_hung_daemon_is_reported_within_the_timeout(sandbox: Sandbox) -> None:
    policy = parse_policy(POLICY)
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        ctx = Context(HostRoot(sandbox.root), policy)
        control = RuntimeControl()
        started = time.monotonic()
        obs = control.observe(ctx)
        took = time.monotonic() - started
        assert held, "the client never connected: the test would not show a hang"
    assert obs.unresponsive
    assert took < 5, f"the API call was not bounded by the policy's timeout ({took:.1f}s)"
    found = {f.rule: f for f in control.evaluate(obs, policy)}
    assert found["daemon-unresponsive"].status is Status.FAIL
    assert "did not answer within 0.5s" in found["daemon-unresponsive"].message
    assert {f.status for r, f in found.items() if r != "daemon-unresponsive"} == {Status.SKIP}


def test_a_missing_daemon_is_not_a_hung_one(sandbox: Sandbox) -> None:
    policy = parse_policy(POLICY)
    control = RuntimeControl()
    obs = control.observe(Context(HostRoot(sandbox.root), policy))
    assert not obs.unresponsive
    assert {f.status for f in control.evaluate(obs, policy)} == {Status.SKIP}


# -- `check` reads the daemon through a forked reader (nodeguard.api_prefetch) -----------------

@pytest.mark.root
def test_check_reports_a_hung_daemon_through_its_forked_reader_and_leaves_no_process(
        sandbox: Sandbox, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        run = run_and_count_orphans([sys.executable, "-m", "nodeguard", "check", "--host-root", str(sandbox.root),
                                     "--policy", str(policy), "--only", "runtime", "--format", "json"])
        assert held, "the reader never connected: the test would not show a hang"
    assert run.returncode == 1, run.stderr
    found = {f["rule"]: f for f in json.loads(run.stdout)["findings"]}
    assert found["daemon-unresponsive"]["status"] == "fail"
    assert "did not answer within 0.5s" in found["daemon-unresponsive"]["message"]
    assert run.took < 10, f"the forked reader's wait was not bounded by the policy's timeout ({run.took:.1f}s)"
    assert run.left == [], "check left its reader behind"


@pytest.mark.root
def test_a_reader_that_is_never_asked_does_not_touch_the_daemon_and_is_reaped(sandbox: Sandbox) -> None:
    """--only another control (or the runtime control off): the child is ended unasked."""
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        reader = ForkedDaemonReader()
        pid = reader.pid
        assert pid is not None
        report = run_audit(HostRoot(sandbox.root), parse_policy(POLICY), only=["socket"], daemon_reader=reader)
        reader.close()
        time.sleep(0.3)  # a connection the child made would have been accepted by now
        assert report.findings
        assert held == []
    with pytest.raises(ChildProcessError):  # reaped: no zombie
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.root
def test_a_check_whose_policy_turns_the_runtime_control_off_asks_the_daemon_nothing(
        sandbox: Sandbox, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + "      mode: \"off\"\n")
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        run = run_and_count_orphans([sys.executable, "-m", "nodeguard", "check", "--host-root", str(sandbox.root),
                                     "--policy", str(policy), "--format", "json"])
        time.sleep(0.3)
        assert held == []
    assert "runtime" not in {f["control"] for f in json.loads(run.stdout)["findings"]}, run.stderr
    assert run.left == []


_START_UNDER_LIMIT = """
import json, os, sys
from nodeguard.api_prefetch import ForkedDaemonReader
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
before = sorted(os.listdir("/proc/self/fd"))
reader = ForkedDaemonReader.start()
print(json.dumps({"reader": reader is not None, "fds_kept": sorted(os.listdir("/proc/self/fd")) == before}))
"""


@pytest.mark.root
def test_a_check_that_cannot_fork_reads_in_process(tmp_path: Path) -> None:
    """Under a pids limit (a container's pids.max) fork fails: `start` gives no reader instead of an
    error and leaks no pipe; `check` then reads in process, the path every test without a reader takes."""
    require_root()
    pids = Path("/sys/fs/cgroup/pids")
    require(pids.is_dir(), "needs the cgroup v1 pids controller at /sys/fs/cgroup/pids")
    group = pids / f"ng-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("1")  # the interpreter itself: nothing more
        proc = subprocess.run([sys.executable, "-c", _START_UNDER_LIMIT, str(group)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"reader": False, "fds_kept": True}
        refused = int((group / "pids.events").read_text().split()[1])
        assert refused >= 1, "the limit never refused a fork: the test did not test the fallback"
    finally:
        group.rmdir()


@pytest.mark.parametrize(("args", "forks"), [
    ([], True),
    (["--only", "runtime"], True),
    (["--only=runtime", "--only", "socket"], True),
    (["--only", "socket"], False),
    (["--only=docker-group"], False),
    (["--format", "json", "--help"], False),
])
def test_main_forks_the_reader_before_the_cli_only_when_check_may_read_the_daemon(
        args: list[str], forks: bool) -> None:
    from nodeguard.__main__ import _may_read_the_daemon

    assert _may_read_the_daemon(args) is forks


@pytest.mark.root
@pytest.mark.parametrize("args", [["--format", "nope"], ["--help"], ["--policy", "/nonexistent/policy.yaml"]])
def test_a_check_that_ends_before_its_audit_leaves_no_reader_behind(sandbox: Sandbox, args: list[str]) -> None:
    """A usage error, --help or a policy that does not load: the reader forked before the CLI ends with it."""
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        run = run_and_count_orphans([sys.executable, "-m", "nodeguard", "check", "--host-root", str(sandbox.root),
                                     *args])
        time.sleep(0.3)
        assert held == []
    assert run.returncode in (0, 2), run.stderr
    assert run.left == []
