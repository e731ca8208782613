"""Watchers that wake the firewall control when netfilter may have changed.

An event only means "look again": the control re-reads nodeguard's table or chain and compares
it with the policy, so a merged or lost event costs nothing (the agent's periodic resync
catches the rest).

- nf_tables announces every committed transaction on the netlink multicast group
  `NFNLGRP_NFTABLES` as a `NEWGEN` message naming the new generation and the process that
  committed it: `nft delete table inet nodeguard` wakes us within a millisecond.
- Legacy xtables announces nothing; its watcher asks for a reconcile pass every few seconds.

A watcher is any object with `start(trigger)` / `stop()`; `trigger(control, reason)` is the
engine's and must be cheap, thread-safe and never block.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable

from nodeguard.host import HostRoot
from nodeguard.netfilter.backend import Backend
from nodeguard.policy import Policy
from nodeguard.structs import Mode

log = logging.getLogger(__name__)

# Kernel ABI numbers (linux/netlink.h, netfilter/nfnetlink.h, netfilter/nf_tables.h), as pyroute2
# spells them: importing its nftables modules for four integers would cost the agent ~11 MiB of
# RSS. tests/unit/test_firewall_rules.py checks they still equal pyroute2's.
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWGEN = 15

Trigger = Callable[[str, str], None]
CONTROL = "firewall"
LEGACY_POLL_SECONDS = 3.0
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_NLMSG_HDR = struct.Struct("=IHHII")
_NFGENMSG_LEN = 4
_NFTA_GEN_ID, _NFTA_GEN_PROC_PID, _NFTA_GEN_PROC_NAME = 1, 2, 3
_NEWGEN_TYPE = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN


def parse_newgen(data: bytes) -> list[tuple[int | None, int | None, str | None]]:
    """(generation, pid, process name) of every NEWGEN message in one netlink datagram."""
    out = []
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size:
            break
        if mtype == _NEWGEN_TYPE:
            gen = pid = None
            name = None
            a = off + _NLMSG_HDR.size + _NFGENMSG_LEN
            end = off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                payload = data[a + 4:a + alen]
                atype &= 0x3FFF
                if atype == _NFTA_GEN_ID and len(payload) >= 4:
                    gen = struct.unpack(">I", payload[:4])[0]
                elif atype == _NFTA_GEN_PROC_PID and len(payload) >= 4:
                    pid = struct.unpack(">I", payload[:4])[0]
                elif atype == _NFTA_GEN_PROC_NAME:
                    name = payload.split(b"\0", 1)[0].decode(errors="replace")
                a += (alen + 3) & ~3
            out.append((gen, pid, name))
        off += (length + 3) & ~3
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


class NftablesWatcher(_ThreadWatcher):
    """NEWGEN notifications of this network namespace -> trigger("firewall", ...)."""

    def __init__(self, control: str = CONTROL, ignore_own_commits: bool = True) -> None:
        super().__init__()
        self.control = control
        self.ignore_own = ignore_own_commits
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1

    def start(self, trigger: Trigger) -> None:
        # Subscribe before start returns: a change made right after start() is seen.
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
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

    def _run(self, trigger: Trigger) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were lost: look again anyway
                    trigger(self.control, "nf_tables notifications overflowed")
                    continue
                log.warning("nf_tables watcher stopped: %s", exc)
                return
            for gen, pid, name in parse_newgen(data):
                if self.ignore_own and _is_own_thread(pid):
                    continue
                trigger(self.control, f"nf_tables generation {gen} committed by {name or '?'}[{pid}]")


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


def firewall_watchers(backend: Backend | None) -> list[_ThreadWatcher]:
    """The watcher(s) that fit a backend: nf_tables notifications, or the legacy poll."""
    if backend is None:
        return []
    if backend.name in ("nftables", "iptables-nft"):
        return [NftablesWatcher()]
    return [PollWatcher()]


def watchers_for(host: HostRoot, policy: Policy) -> list[_ThreadWatcher]:
    """What `nodeguard run` starts for the firewall control on this host (none when it is off)."""
    fw = policy.spec.controls.firewall
    if fw.rule_mode("", policy.spec.mode) is Mode.OFF:
        return []
    from nodeguard.netfilter.select import select_backend

    return firewall_watchers(select_backend(fw.backend, host).backend)
