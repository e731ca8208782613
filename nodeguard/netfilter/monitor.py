"""Watchers that wake the firewall control when netfilter may have changed.

An event only means "look again": the control re-reads nodeguard's table or chain and compares
it with the policy, so a merged or lost event costs nothing (the agent's periodic resync
catches the rest).

- nf_tables announces every committed transaction on the netlink multicast group
  `NFNLGRP_NFTABLES` as a `NEWGEN` message naming the new generation and the process that
  committed it: `nft delete table inet nodeguard` wakes us within a millisecond.
- A table with nf_tables `flags owner` is dropped by the kernel, without any notification, when
  its owner's socket closes. So when someone else owns nodeguard's table, the watcher also holds
  a pidfd of the owner and wakes us the moment it exits (or, when the owner is in a pid
  namespace we cannot see, looks at the table's owner every quarter second until it changes).
- Legacy xtables announces nothing; its watcher asks for a reconcile pass every 0.75 s, so a
  competing write stays in place under a second (a pass that finds everything in place costs
  5-9 ms: ~1 % of a core; tests/bench/bench_firewall.py).

A watcher is any object with `start(trigger)` / `stop()`; `trigger(control, reason)` is the
engine's and must be cheap, thread-safe and never block.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable

from nodeguard.host import HostRoot
from nodeguard.netfilter import nftnl
from nodeguard.netfilter.backend import Backend, is_own_child
from nodeguard.netfilter.nft import NftablesBackend
from nodeguard.policy import Policy
from nodeguard.reconcile import RetryNow
from nodeguard.structs import Mode

log = logging.getLogger(__name__)

# Kernel ABI numbers (linux/netlink.h, netfilter/nfnetlink.h, netfilter/nf_tables.h), as pyroute2
# spells them: importing its nftables modules for four integers would cost the agent ~11 MiB of
# RSS. tests/unit/test_control_firewall.py checks they still equal pyroute2's.
NETLINK_NETFILTER = nftnl.NETLINK_NETFILTER
NFNL_SUBSYS_NFTABLES = nftnl.NFNL_SUBSYS_NFTABLES
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWGEN = 15

Trigger = Callable[[str, str], None]
CONTROL = "firewall"
LEGACY_POLL_SECONDS = 0.75
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_NFGENMSG_LEN = 4
_NFTA_GEN_ID, _NFTA_GEN_PROC_PID, _NFTA_GEN_PROC_NAME = 1, 2, 3
_NEWGEN_TYPE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN


def parse_newgen(data: bytes) -> list[tuple[int | None, int | None, str | None]]:
    """(generation, pid, process name) of every NEWGEN message in one netlink datagram."""
    out = []
    for mtype, _seq, start, end in nftnl.messages(data):
        if mtype != _NEWGEN_TYPE:
            continue
        a = nftnl.attributes(data, start + _NFGENMSG_LEN, end)
        raw_name = a.get(_NFTA_GEN_PROC_NAME)
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace") if raw_name is not None else None
        out.append((nftnl.u32(a.get(_NFTA_GEN_ID)), nftnl.u32(a.get(_NFTA_GEN_PROC_PID)), name))
    return out


def _is_own_thread(pid: int | None) -> bool:
    """NEWGEN names the committing *thread* (kernel tid): is it one of this process's threads?

    Our own restores then do not wake us again. Across pid namespaces the ids differ and the
    answer is "no": that only costs one extra, idle pass.
    """
    return pid is not None and (pid == os.getpid() or os.path.exists(f"/proc/self/task/{pid}"))


class _ThreadWatcher:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _run(self, trigger: Trigger) -> None:
        raise NotImplementedError

    def start(self, trigger: Trigger) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(trigger,), name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


OWNER_POLL_SECONDS = 0.25


class _OwnerWatch:
    """Follows who owns nodeguard's table: pidfds of foreign owners, or a short poll."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.pidfds: dict[int, int] = {}  # fd -> pid
        self.portid: int | None = None
        self.blind = False  # owned by someone whose process we cannot see: poll

    def refresh(self) -> None:
        try:
            info = nftnl.find_table(self.table)
        except OSError:
            info = None
        portid = info.owner_portid if info is not None and info.owned else None
        if portid == self.portid and (self.pidfds or self.blind or portid is None):
            return
        self.close()
        self.portid = portid
        if portid is None:
            return
        pids = nftnl.owner_pids(portid)
        for pid in pids:
            if pid == os.getpid():
                continue
            try:
                self.pidfds[os.pidfd_open(pid)] = pid
            except OSError:
                continue
        self.blind = not self.pidfds and os.getpid() not in pids

    def owner_changed(self) -> bool:
        """For the blind poll: has the table's owner changed since the last refresh?"""
        before = self.portid
        self.refresh()
        return self.portid != before

    def close(self) -> None:
        for fd in self.pidfds:
            os.close(fd)
        self.pidfds.clear()
        self.portid = None
        self.blind = False


class NftablesWatcher(_ThreadWatcher):
    """NEWGEN notifications of this network namespace -> trigger("firewall", ...)."""

    def __init__(self, control: str = CONTROL, ignore_own_commits: bool = True, table: str = "nodeguard") -> None:
        super().__init__()
        self.control = control
        self.ignore_own = ignore_own_commits
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._owner = _OwnerWatch(table)

    def start(self, trigger: Trigger) -> None:
        # Subscribe before start returns: a change made right after start() is seen.
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._owner.refresh()  # a squatter already in place at start is followed too
        super().start(trigger)

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        super().stop()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._owner.close()

    def _run(self, trigger: Trigger) -> None:
        sock = self._sock
        assert sock is not None
        owner = self._owner
        while not self._stop.is_set():
            fds = [sock.fileno(), self._wake_r, *owner.pidfds]
            ready, _, _ = select.select(fds, [], [], OWNER_POLL_SECONDS if owner.blind else None)
            if self._wake_r in ready:
                return
            gone = [owner.pidfds.pop(fd) for fd in ready if fd in owner.pidfds]
            for fd in [fd for fd in ready if fd not in fds[:2]]:
                os.close(fd)  # an exited process's pidfd stays readable: never select it again
            # The owner's exit is not our write: the reverts it refused are retried at once.
            if gone:
                owner.refresh()
                trigger(self.control, RetryNow(
                    f"the owner of nodeguard's table exited (pid {', '.join(map(str, gone))})"))
            elif not ready and owner.owner_changed():
                trigger(self.control, RetryNow("the owner of nodeguard's table changed"))
            if sock.fileno() not in ready:
                continue
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were lost: look again anyway
                    trigger(self.control, "nf_tables notifications overflowed")
                    continue
                log.warning("nf_tables watcher stopped: %s", exc)
                return
            woke = False
            for gen, pid, name in parse_newgen(data):
                if self.ignore_own and (_is_own_thread(pid) or is_own_child(pid)):
                    continue
                woke = True
                trigger(self.control, f"nf_tables generation {gen} committed by {name or '?'}[{pid}]")
            if woke:
                owner.refresh()  # after the trigger: the pass must not wait for this look


class PollWatcher(_ThreadWatcher):
    """Legacy xtables announces nothing: ask for a reconcile pass every `interval` seconds.

    Unconditional on purpose: comparing reads between polls misses a tamper that lands on a state
    identical to the last one seen (tampered, restored, tampered again between two polls), and a
    pass that finds everything in place costs a few milliseconds and emits nothing.
    """

    def __init__(self, interval: float = LEGACY_POLL_SECONDS, control: str = CONTROL) -> None:
        super().__init__()
        self.interval = interval
        self.control = control

    def _run(self, trigger: Trigger) -> None:
        while not self._stop.wait(self.interval):
            trigger(self.control, f"legacy xtables poll ({self.interval:g}s)")


def firewall_watchers(backend: Backend | None, poll: float = LEGACY_POLL_SECONDS,
                      hold: bool = True) -> list[_ThreadWatcher]:
    """The watcher(s) that fit a backend: nf_tables notifications, or the legacy poll.

    Asking for them means a long-running agent is starting: with `hold` (enforce mode) the
    nftables backend keeps its table owned by this process for as long as it runs.
    """
    if backend is None:
        return []
    if isinstance(backend, NftablesBackend):
        backend.keep_owned(hold)
    if backend.name in ("nftables", "iptables-nft"):
        return [NftablesWatcher()]
    return [PollWatcher(poll)]


def watchers_for(host: HostRoot, policy: Policy) -> list[_ThreadWatcher]:
    """What `nodeguard run` starts for the firewall control on this host (none when it is off).

    The backend is the one the firewall control uses (`decided_backend`: chosen once, kept), so
    the watcher always fits it: legacy rules get the poll even when `auto` chose them.
    """
    fw = policy.spec.controls.firewall
    if policy.mode_of("firewall") is Mode.OFF:
        return []
    from nodeguard.netfilter.select import decided_backend

    hold = policy.mode_of("firewall", "table-owner") is Mode.ENFORCE
    return firewall_watchers(decided_backend(fw.backend, host).backend, hold=hold)
