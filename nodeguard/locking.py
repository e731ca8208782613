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
