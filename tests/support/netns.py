"""Network namespaces joined by veth pairs, for real netfilter without touching this machine's.

Every namespace and link is made here and deleted in `finally` (deleting a namespace deletes the
veth ends inside it). Only documentation addresses are used: 192.0.2.0/24, 198.51.100.0/24,
2001:db8::/32. Code under test runs in a namespace through `nsenter --net=...` around a
subprocess, never in the pytest process's own namespace (that one is the machine's).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.support.sandbox import require_root, require_tool

REPO = Path(__file__).resolve().parents[2]
_T = TypeVar("_T")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}"]


def ns_run(ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*nsenter(ns), *argv], check=check, capture_output=True, text=True, timeout=timeout,
                          input=input, cwd=REPO)


def ns_python(ns: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python ARGS` of this venv inside the namespace, from the repository root."""
    return ns_run(ns, [sys.executable, *args], check=check, timeout=timeout)


@contextlib.contextmanager
def netns(role: str) -> Iterator[str]:
    require_root()
    require_tool("ip")
    require_tool("nsenter")
    name = f"ng{role[:6]}-{os.urandom(3).hex()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def veth(ns_a: str, addrs_a: Sequence[str], ns_b: str, addrs_b: Sequence[str]) -> tuple[str, str]:
    """A veth pair between two namespaces with the given addresses; IPv6 without DAD (usable at once)."""
    tag = os.urandom(3).hex()
    a, b = f"ngv{tag}a", f"ngv{tag}b"
    _ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            _ip("-n", ns, "addr", "add", addr, "dev", dev, *extra)
        _ip("-n", ns, "link", "set", dev, "up")
    return a, b


@dataclass
class Topology:
    """node <-veth-> allowed, node <-veth-> denied; addresses as seen from the clients."""

    node: str
    allowed: str
    denied: str
    # The node's address on each link, as the client there dials it.
    node_from_allowed_v4: str = "192.0.2.1"
    node_from_allowed_v6: str = "2001:db8:1::1"
    node_from_denied_v4: str = "198.51.100.1"
    node_from_denied_v6: str = "2001:db8:2::1"
    allowed_cidrs: tuple[str, ...] = ("192.0.2.0/28", "2001:db8:1::/64")


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    with netns("node") as node, netns("allow") as allowed, netns("deny") as denied:
        veth(node, ["192.0.2.1/28", "2001:db8:1::1/64"], allowed, ["192.0.2.2/28", "2001:db8:1::2/64"])
        veth(node, ["198.51.100.1/24", "2001:db8:2::1/64"], denied, ["198.51.100.2/24", "2001:db8:2::2/64"])
        yield Topology(node, allowed, denied)


@contextlib.contextmanager
def ns_process(ns: str, argv: Sequence[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process inside a namespace, killed by its pid at the end."""
    proc = subprocess.Popen([*nsenter(ns), *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_listening(ns: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns_run(ns, ["ss", "-Htln", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} in {ns} after {timeout}s")


_CLONE_NEWNET = 0x40000000


def _child(ns: str, conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
        os.close(fd)
        conn.send((True, fn(*args)))
    except BaseException:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def in_netns(ns: str, fn: Callable[..., _T], *args: Any, timeout: float = 120) -> _T:
    """`fn(*args)` in a forked child that joined namespace `ns` (setns): the pytest process never does.

    Cheaper than a fresh interpreter per call: the child inherits every imported module. Import
    nodeguard in the parent, but never open a netlink socket or netfilter handle there.
    """
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(ns, child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"{fn.__name__} in {ns} did not finish in {timeout}s")
        ok, value = parent.recv()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        parent.close()
    if not ok:
        raise AssertionError(f"{fn.__name__} in {ns} failed:\n{value}")
    result: _T = value
    return result


def _reach_loop(ns: str, targets: list[tuple[str, int]], every: float, timeout: float, conn: Any,
                stop: Any) -> None:
    import socket

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        conn.send([])
        return
    os.close(fd)
    seen: list[tuple[float, str, bool]] = []
    while not stop.is_set():
        for host, port in targets:
            t = time.time()
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    ok = True
            except OSError:
                ok = False
            seen.append((t, f"{host}:{port}", ok))
        stop.wait(every)
    conn.send(seen)
    conn.close()


class ReachMonitor:
    """Connect from a client namespace to `targets` over and over; when did a connection get through?

    Each attempt is stamped with the wall time it started (time.time(), as the namespaces share
    the clock), so `open_after(t0)` is how long the port stayed reachable after a competing
    write made at t0: the start of the last successful attempt minus t0 (0 when none got in).
    """

    def __init__(self, seen: list[tuple[float, str, bool]]) -> None:
        self.seen = seen

    def successes(self, after: float) -> list[tuple[float, str]]:
        return [(t, who) for t, who, ok in self.seen if ok and t >= after]

    def open_after(self, t0: float) -> float:
        hits = self.successes(t0)
        return max(t for t, _ in hits) - t0 if hits else 0.0

    def attempts(self, after: float) -> int:
        return sum(1 for t, _, _ in self.seen if t >= after)


@contextlib.contextmanager
def reach_monitor(ns: str, targets: Sequence[tuple[str, int]], every: float = 0.01,
                  timeout: float = 0.05) -> Iterator[list[ReachMonitor]]:
    """Yields a one-element list that holds the ReachMonitor once the block has ended.

    A dropped SYN costs `timeout`; the veth's round trip is microseconds, so 50 ms leaves a
    loaded machine plenty of slack while keeping the resolution near 0.1 s.
    """
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    proc = ctx.Process(target=_reach_loop, args=(ns, list(targets), every, timeout, child, stop), daemon=True)
    proc.start()
    child.close()
    out: list[ReachMonitor] = []
    try:
        yield out
    finally:
        stop.set()
        seen = parent.recv() if parent.poll(30) else []
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        parent.close()
        out.append(ReachMonitor(seen))
