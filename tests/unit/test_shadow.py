"""Removing a docker group member the way shadow-utils edits group/gshadow: same locks, same bytes, real tools."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.host import HostRoot, locking
from nodeguard.host.accounts import load_accounts
from nodeguard.host.shadow import LockBusy, file_lock, remove_group_member, remove_group_members
from tests.support.rules import context, policy_from
from tests.support.sandbox import DOCKER_GID, Sandbox, require, require_root, require_tool, usermod_add

# Other lines must come back byte for byte: odd spacing, a non-UTF-8 name, a look-alike group,
# bob as a member of another group, no newline at the end.
GROUP = (b"root:x:0:\n"
         b"bob:x:1001:bob\n"
         b"caf\xe9:x:2000:bob,alice\n"
         b"docker2:x:2001:bob\n"
         + f"docker:x:{DOCKER_GID}:alice,bob,bobby\n".encode()
         + b"bobby:x:1002:")
GSHADOW = (b"root:*::\n"
           b"bob:!::bob\n"
           b"docker2:!:bob:bob\n"
           b"docker:!:bob,alice:alice,bob\n")


@pytest.fixture
def host(sandbox: Sandbox) -> HostRoot:
    sandbox.path("/etc/group").write_bytes(GROUP)
    sandbox.path("/etc/gshadow").write_bytes(GSHADOW)
    return HostRoot(sandbox.root)


def etc(sb: Sandbox) -> dict[str, bytes]:
    """Every file in the sandbox's /etc; .pwd.lock is created by lckpwdf() like shadow-utils does."""
    return {p.name: p.read_bytes() for p in sb.path("/etc").iterdir() if p.is_file() and p.name != ".pwd.lock"}


def test_removes_from_group_and_gshadow_and_keeps_every_other_byte(sandbox: Sandbox, host: HostRoot) -> None:
    gshadow = sandbox.path("/etc/gshadow")
    gshadow.chmod(0o640)
    before = etc(sandbox)
    assert remove_group_member(host, "docker", "bob") == ["/etc/group", "/etc/gshadow"]
    assert sandbox.path("/etc/group").read_bytes() == GROUP.replace(b"docker:x:990:alice,bob,bobby",
                                                                    b"docker:x:990:alice,bobby")
    # Removed from the members and from the admins of docker only.
    assert gshadow.read_bytes() == GSHADOW.replace(b"docker:!:bob,alice:alice,bob", b"docker:!:alice:alice")
    assert stat.S_IMODE(gshadow.stat().st_mode) == 0o640
    after = etc(sandbox)
    # No lock or temporary file left behind; nothing else touched.
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k not in ("group", "gshadow")} == {
        k: v for k, v in before.items() if k not in ("group", "gshadow")}


def test_a_second_removal_changes_nothing(sandbox: Sandbox, host: HostRoot) -> None:
    remove_group_member(host, "docker", "bob")
    snapshot = etc(sandbox)
    assert remove_group_member(host, "docker", "bob") == []
    assert etc(sandbox) == snapshot


def test_a_missing_gshadow_is_fine(sandbox: Sandbox, host: HostRoot) -> None:
    sandbox.path("/etc/gshadow").unlink()
    assert remove_group_member(host, "docker", "alice") == ["/etc/group"]
    assert f"docker:x:{DOCKER_GID}:bob,bobby\n".encode() in sandbox.path("/etc/group").read_bytes()


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process that is alive for the whole test: the holder of a lock that must not be stolen."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("locked", ["group", "gshadow"])
@pytest.mark.parametrize("content", ["live", "garbage", "empty"])
def test_a_lock_of_a_live_or_unknown_holder_is_never_stolen(sandbox: Sandbox, host: HostRoot, locked: str,
                                                            content: str, live_pid: int) -> None:
    lock = sandbox.path(f"/etc/{locked}.lock")
    text = {"live": str(live_pid), "garbage": "not a pid 999999", "empty": ""}[content]
    lock.write_text(text)
    before = etc(sandbox)
    with pytest.raises(LockBusy, match=re.escape(f"/etc/{locked}.lock exists")):
        remove_group_member(host, "docker", "bob")
    assert lock.read_text() == text
    # Neither file was edited, even when only gshadow's lock was taken.
    assert etc(sandbox) == before


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=10)
    return proc.pid  # reaped: no process has this pid until the kernel hands it out again


@pytest.mark.root
@pytest.mark.parametrize("locked", ["group", "gshadow"])
def test_a_lock_of_a_dead_pid_is_released_like_shadow_utils_does(sandbox: Sandbox, host: HostRoot,
                                                                  locked: str) -> None:
    require_root()
    require(locking.sees_host_pids(), "runs outside the host's pid namespace: the rule rightly refuses there")
    lock = sandbox.path(f"/etc/{locked}.lock")
    lock.write_text(str(_dead_pid()))
    assert remove_group_member(host, "docker", "bob") == ["/etc/group", "/etc/gshadow"]
    assert not lock.exists()


def test_a_recycled_pid_is_stale_a_lock_written_after_the_holder_started_is_not(
        sandbox: Sandbox, host: HostRoot, live_pid: int) -> None:
    # The pid lives, but its process started an hour after the lock was written: it cannot be the
    # writer (nodeguard SIGKILLed, its pid later handed to someone else).
    require(locking.sees_host_pids(), "outside the host's pid namespace a recycled pid cannot be proven")
    lock = sandbox.path("/etc/group.lock")
    lock.write_text(str(live_pid))
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    assert remove_group_member(host, "docker", "bob") == ["/etc/group", "/etc/gshadow"]
    assert not lock.exists()


def test_a_dead_pid_is_not_proof_outside_the_host_pid_namespace(sandbox: Sandbox, host: HostRoot,
                                                                 tmp_path: Path) -> None:
    # A /proc whose pid namespace is not the initial one: a pid missing here may live elsewhere.
    fake_proc = tmp_path / "proc"
    (fake_proc / "self/ns").mkdir(parents=True)
    os.symlink("pid:[4026532999]", fake_proc / "self/ns/pid")
    sandbox.path("/etc/group.lock").write_text(str(_dead_pid()))
    with pytest.raises(LockBusy, match="not stealing"):
        remove_group_members(host, "docker", ["bob"], proc=fake_proc)
    assert sandbox.path("/etc/group.lock").exists()


CRASHER = """
import sys, time
from nodeguard.host import HostRoot
from nodeguard.host.shadow import edit_group_files

def edit(text, is_gshadow):
    print("holding", flush=True)   # both .lock files and lckpwdf are held now
    time.sleep(300)
    return text

edit_group_files(HostRoot(sys.argv[1]), edit)
"""


@pytest.mark.root
def test_a_sigkill_in_the_middle_of_a_rewrite_does_not_stop_the_next_one(sandbox: Sandbox, host: HostRoot) -> None:
    """Issue 17.2: an OOM kill or an eviction while nodeguard holds group.lock must not disable the
    group control for good. A real process runs nodeguard's own rewrite and is SIGKILLed inside it."""
    require_root()
    require(locking.sees_host_pids(), "outside the host's pid namespace a dead holder cannot be proven dead")
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(sandbox.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
        assert sandbox.path("/etc/group.lock").read_text() == str(proc.pid)
    finally:
        proc.kill()  # SIGKILL: no finally block, no unlink
        proc.wait(timeout=10)
    assert sandbox.path("/etc/group.lock").exists() and sandbox.path("/etc/gshadow.lock").exists()
    # The next remediation, as the agent runs it: the docker-group control in enforce mode.
    ctl = DockerGroupControl()
    pol = policy_from("spec: {mode: enforce, controls: {dockerGroup: {allowedMembers: [alice]}}}")
    ctx = context(sandbox, pol)
    obs = ctl.observe(ctx)
    failing = [f for f in ctl.evaluate(obs, pol) if f.rule == "member-allowed" and f.status.value == "fail"]
    assert {f.subject for f in failing} == {"bob", "bobby"}
    assert all(o.ok and o.changed for o in ctl.remediate_many(ctx, failing, obs))
    docker = next(ln for ln in sandbox.path("/etc/group").read_bytes().split(b"\n") if ln.startswith(b"docker:"))
    assert docker.split(b":")[3].split(b",") == [b"alice"]
    # The stale locks are gone; the ones nodeguard took were released.
    assert not sandbox.path("/etc/group.lock").exists() and not sandbox.path("/etc/gshadow.lock").exists()


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


@pytest.fixture
def pwd_lock_holder(sandbox: Sandbox) -> Iterator[subprocess.Popen[str]]:
    """Another process holding /etc/.pwd.lock with a POSIX lock, as lckpwdf() does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(sandbox.path("/etc/.pwd.lock"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_gives_up_while_pwd_lock_is_held(sandbox: Sandbox, host: HostRoot,
                                         pwd_lock_holder: subprocess.Popen[str]) -> None:
    before = etc(sandbox)
    with pytest.raises(LockBusy, match=r"\.pwd\.lock is held"):
        remove_group_member(host, "docker", "bob", lock_timeout=0.3)
    assert etc(sandbox) == before


def test_waits_for_the_pwd_lock_to_be_released(sandbox: Sandbox, host: HostRoot,
                                               pwd_lock_holder: subprocess.Popen[str]) -> None:
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(remove_group_member(host, "docker", "bob",
                                                                                lock_timeout=30)))
    worker.start()
    try:
        time.sleep(0.5)
        assert worker.is_alive(), "did not wait for the lock"
        assert b"alice,bob,bobby" in sandbox.path("/etc/group").read_bytes()
    finally:
        assert pwd_lock_holder.stdin is not None
        pwd_lock_holder.stdin.close()  # the holder exits: its lock is released
        worker.join(timeout=30)
    assert result == [["/etc/group", "/etc/gshadow"]]


# -- the real shadow-utils on the same files ------------------------------------------------------------


def gpasswd(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    require_tool("gpasswd")
    # --root (chroot): on shadow 4.13 -R means --restrict.
    return subprocess.run(["gpasswd", "--root", str(sb.root), *args], capture_output=True, text=True, timeout=30)


def grpck(sb: Sandbox) -> subprocess.CompletedProcess[str]:
    require_tool("grpck")
    return subprocess.run(["grpck", "-r", "--root", str(sb.root)], capture_output=True, text=True, timeout=30)


@pytest.mark.root
def test_shadow_utils_agree_after_our_edit(sandbox: Sandbox) -> None:
    require_root()
    host = HostRoot(sandbox.root)
    usermod_add(sandbox, "bob")
    usermod_add(sandbox, "alice")
    assert gpasswd(sandbox, "-A", "bobby", "docker").returncode == 0
    assert remove_group_member(host, "docker", "bob") == ["/etc/group", "/etc/gshadow"]
    assert remove_group_member(host, "docker", "bobby") == ["/etc/gshadow"]
    # shadow-utils' own consistency check of group against gshadow.
    check = grpck(sandbox)
    assert check.returncode == 0, check.stdout + check.stderr
    # The real tools keep working on what we wrote, and we read what they write.
    usermod_add(sandbox, "bobby")
    proc = gpasswd(sandbox, "-d", "alice", "docker")
    assert proc.returncode == 0, proc.stderr
    acc = load_accounts(host)
    assert acc.groups["docker"].members == ("bobby",)
    assert acc.gshadow["docker"] == ((), ("bobby",))
    assert f"docker:x:{DOCKER_GID}:bobby\n" in sandbox.read("/etc/group")


@pytest.mark.root
def test_our_lock_files_stop_gpasswd(sandbox: Sandbox) -> None:
    require_root()
    host = HostRoot(sandbox.root)
    with file_lock(host, "/etc/group"):
        lock = sandbox.path("/etc/group.lock")
        assert lock.read_text() == str(os.getpid())
        proc = gpasswd(sandbox, "-a", "alice", "docker")
        assert proc.returncode != 0
        assert "lock" in proc.stderr.lower(), proc.stderr
    assert not lock.exists()
    assert gpasswd(sandbox, "-a", "alice", "docker").returncode == 0
    assert Path(sandbox.path("/etc/group")).read_text().splitlines()[-1] == f"docker:x:{DOCKER_GID}:alice"


def test_a_fifo_planted_as_the_lock_is_never_opened(sandbox: Sandbox, host: HostRoot) -> None:
    # Judging staleness reads the lock: a FIFO (or a device) there must not block it or run a driver.
    os.mkfifo(sandbox.path("/etc/group.lock"))
    with pytest.raises(LockBusy, match="not stealing"):
        remove_group_member(host, "docker", "bob", lock_timeout=0.5)
    assert stat.S_ISFIFO(sandbox.path("/etc/group.lock").lstat().st_mode)
