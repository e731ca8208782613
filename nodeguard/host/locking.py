"""Waiting for a lock another process holds (shared by shadow-utils' lckpwdf and the xtables lock),
and telling a lock holder that is provably dead from one that may be alive elsewhere."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path


def acquire_by(try_lock: Callable[[], None], timeout: float, interval: float) -> None:
    """Call a non-blocking `try_lock` until it succeeds; after `timeout` seconds, or on any error
    other than "held by someone else", its last OSError is raised for the caller to explain."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            try_lock()
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise
            time.sleep(interval)


# The initial pid namespace's inode number is a kernel constant (PROC_PID_INIT_INO, 0xEFFFFFFC):
# only there (on the host, or in a pod with hostPID) does "no such pid" prove a lock holder dead.
INITIAL_PID_NS = "pid:[4026531836]"


def sees_host_pids(proc: Path = Path("/proc")) -> bool:
    try:
        return os.readlink(proc / "self" / "ns" / "pid") == INITIAL_PID_NS
    except OSError:
        return False


def pid_is_gone(pid: int, proc: Path = Path("/proc")) -> bool:
    """True only when `pid` provably does not exist: kill(pid, 0) says ESRCH (shadow-utils' test for a
    stale lock) *and* this process sees the host's pid namespace. In any other namespace a live holder
    elsewhere looks dead, so the answer is False: never steal what cannot be proven stale."""
    if not sees_host_pids(proc):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # EPERM: it exists, owned by someone else
    return False


# Slack for a wall clock that moved between the lock's write and now (NTP steps, a VM resumed).
START_SLACK_S = 5.0


def started_after(pid: int, wall_time: float, proc: Path = Path("/proc")) -> bool:
    """True when process `pid` provably started after `wall_time` (a lock file's mtime): then it
    cannot be the process that wrote the lock, its pid was recycled. Only in the host's pid
    namespace, and False whenever /proc cannot say (never a guess)."""
    if not sees_host_pids(proc):
        return False
    try:
        # Field 22, after the command in parentheses (which may itself hold spaces or ')').
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        boot = next(float(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return False
    return boot + start_ticks / os.sysconf("SC_CLK_TCK") > wall_time + START_SLACK_S
