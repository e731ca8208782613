"""One pass's look at the host: each surface read at most once and shared by every control.

A pass (one `nodeguard check`, one lane pass of the agent, the look that verifies a revert) makes
one `Observations`, through its Context. Whoever asks for a surface first reads it from the host;
everyone after gets the same value, or the same exception: a pass never sees two versions of one
surface. A control that writes a surface (a daemon.json revert, restored firewall rules) calls
`forget`, so the rest of its pass reads the host as the write left it.

Controls reach the surfaces through the Context (`ctx.daemon`, `ctx.daemon_config`,
`ctx.accounts`, `ctx.netfilter`, `ctx.mounts`) and never build another control to get at what it
observes. The Docker API has one reader per pass, the runtime control.

Only the account files' parse outlives a pass: a 20,000-member /etc/group is parsed again only
when a stat of the files (made every pass) says they changed.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from nodeguard.daemon_settings import DaemonConfigObservation, config_path, read_daemon_config
from nodeguard.dockerd import DaemonProcess, find_daemon
from nodeguard.formats.mountinfo import MountTable, read_mount_table
from nodeguard.host import HostPathError, HostRoot
from nodeguard.host.accounts import AccountDB, load_accounts
from nodeguard.policy import Policy

if TYPE_CHECKING:
    from nodeguard.netfilter.observed import FirewallObservation

T = TypeVar("T")


class Surface(StrEnum):
    DAEMON = "dockerd"  # the running daemon and its command line, from /proc and the pid file
    DAEMON_CONFIG = "daemon.json"  # with the seccomp profile it names
    ACCOUNTS = "accounts"  # /etc/passwd, /etc/group, /etc/gshadow
    NETFILTER = "netfilter"  # nodeguard's chains, through the backend chosen at start
    MOUNTS = "mountinfo"  # the host's mount table (or the agent's own), for the data root's mount


ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/gshadow")
_ACCOUNTS_CACHE: dict[str, tuple[tuple[object, ...], AccountDB]] = {}


def _accounts_key(host: HostRoot) -> tuple[object, ...] | None:
    """What identifies the account files' contents: inode, size, mtime and ctime (any write moves ctime)."""
    key: list[object] = []
    for path in ACCOUNT_FILES:
        try:
            st = os.stat(host.resolve(path))
        except FileNotFoundError:
            key.append(None)
            continue
        except (OSError, HostPathError):
            return None  # not cacheable: read it every time
        key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def _read_accounts(host: HostRoot) -> AccountDB:
    key = _accounts_key(host)
    root = str(host.root)
    cached = _ACCOUNTS_CACHE.get(root)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    db = load_accounts(host)
    if key is not None:
        _ACCOUNTS_CACHE.clear()  # one host root per process in practice: never more than one kept
        _ACCOUNTS_CACHE[root] = (key, db)
    return db


class Observations:
    """The surfaces of one pass, each read on first use. Thread-safe: `check` observes the Docker
    API on a thread of its own while the file controls run, and both may ask for daemon.json."""

    def __init__(self, host: HostRoot, policy: Policy, proc: Path = Path("/proc")) -> None:
        self.host = host
        self.policy = policy
        self.proc = proc
        # How many times each surface was read from the host in this pass (tests and benchmarks).
        self.reads: Counter[Surface] = Counter()
        self._seen: dict[Surface, tuple[bool, object]] = {}
        self._locks = {s: threading.Lock() for s in Surface}

    def _once(self, surface: Surface, read: Callable[[], T]) -> T:
        with self._locks[surface]:
            if surface not in self._seen:
                self.reads[surface] += 1
                try:
                    self._seen[surface] = (True, read())
                except Exception as exc:  # the reader's own error is part of what the pass saw
                    self._seen[surface] = (False, exc)
            ok, value = self._seen[surface]
        if not ok:
            raise cast(Exception, value)
        return cast(T, value)

    def forget(self, *surfaces: Surface) -> None:
        """The next ask reads the host again: a remediation just wrote these surfaces."""
        for surface in surfaces:
            with self._locks[surface]:
                self._seen.pop(surface, None)

    def daemon(self) -> DaemonProcess | None:
        return self._once(Surface.DAEMON,
                          lambda: find_daemon(self.host, self.policy.spec.daemon.pid_file, self.proc))

    def daemon_config(self) -> DaemonConfigObservation:
        """The effective daemon configuration: daemon.json overlaid by dockerd's flags."""
        def read() -> DaemonConfigObservation:
            daemon = self.daemon()
            return read_daemon_config(self.host, config_path(self.host, self.policy, daemon), daemon)

        return self._once(Surface.DAEMON_CONFIG, read)

    def accounts(self) -> AccountDB:
        return self._once(Surface.ACCOUNTS, lambda: _read_accounts(self.host))

    def netfilter(self) -> FirewallObservation:
        def read() -> FirewallObservation:
            # Imported on first use: a pass without the firewall or listeners controls loads no backend.
            from nodeguard.netfilter.observed import read_firewall

            return read_firewall(self.host, self.policy.spec.controls.firewall.backend)

        return self._once(Surface.NETFILTER, read)

    def mounts(self) -> MountTable:
        return self._once(Surface.MOUNTS, lambda: read_mount_table(
            self.host, self.policy.spec.controls.host_layout.mountinfo, self.proc))
