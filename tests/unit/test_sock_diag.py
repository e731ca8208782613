"""nodeguard's own inet_diag reader against pyroute2's DiagSocket, on real sockets of this process.

The listeners control reads the kernel's socket table with nodeguard.sock_diag (pyroute2 would
cost every `check` and the agent its whole package); pyroute2 is the oracle here: both must
report the same listeners, with the same address, port, owner uid and IPv6-only flag.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from nodeguard.controls.listeners import tcp_listeners as control_listeners
from nodeguard.sock_diag import TCP_LISTEN, tcp_listeners
from tests.support.sandbox import require

Row = tuple[int, str, int, int, bool | None]


def _pyroute2_rows() -> dict[int, Row]:
    from pyroute2 import DiagSocket

    rows: dict[int, Row] = {}
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ds.get_sock_stats(family=family, states=1 << TCP_LISTEN, protocol=socket.IPPROTO_TCP):
                v6only = msg.get_attr("INET_DIAG_SKV6ONLY") if family == socket.AF_INET6 else None
                rows[int(msg["idiag_inode"])] = (int(family), str(msg["idiag_src"]), int(msg["idiag_sport"]),
                                                 int(msg["idiag_uid"]), None if v6only is None else bool(v6only))
    return rows


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@contextlib.contextmanager
def _sockets() -> Iterator[tuple[list[socket.socket], list[socket.socket]]]:
    """(listening, not listening) sockets on loopback; IPv6 ones where this kernel has IPv6."""
    listening: list[socket.socket] = []
    other: list[socket.socket] = []
    try:
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.append(v4)
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6"):
            only = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            listening.append(only)
            only.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            only.bind(("::1", 0))
            only.listen()
            dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            listening.append(dual)
            dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            dual.bind(("::", 0))
            dual.listen()
        bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        other.append(bound)
        bound.bind(("127.0.0.1", 0))  # bound, never listening
        client = socket.create_connection(v4.getsockname()[:2])
        other.append(client)
        server, _ = v4.accept()
        other.append(server)  # established, on the listener's port
        yield listening, other
    finally:
        for s in listening + other:
            s.close()


def test_the_same_listeners_as_pyroute2() -> None:
    with _sockets() as (listening, other):
        ours = {s.inode: (s.family, s.address, s.port, s.uid, s.v6only) for s in tcp_listeners()}
        theirs = _pyroute2_rows()
        mine = {_inode(s) for s in listening}
        assert mine <= set(ours)
        assert {i: ours[i] for i in mine} == {i: theirs[i] for i in mine}
        assert not {_inode(s) for s in other} & set(ours)
        by_inode = {_inode(s): s for s in listening}
        for inode in mine:
            sock = by_inode[inode]
            assert ours[inode][2] == sock.getsockname()[1]
            assert ours[inode][3] == os.geteuid()
        if len(listening) == 3:
            assert ours[_inode(listening[1])][1:] == ("::1", listening[1].getsockname()[1], os.geteuid(), True)
            assert ours[_inode(listening[2])][1:] == ("::", listening[2].getsockname()[1], os.geteuid(), False)


def test_the_control_reads_them_through_it() -> None:
    with _sockets() as (listening, _):
        found = {lst.inode: lst for lst in control_listeners()}
        v4 = found[_inode(listening[0])]
        assert (v4.family, v4.address, v4.port, v4.v6only) == (socket.AF_INET, "127.0.0.1",
                                                               listening[0].getsockname()[1], None)
        if len(listening) == 3:
            assert found[_inode(listening[2])].to_json()["dual_stack"] is True


def test_many_listeners_span_several_datagrams() -> None:
    """A dump longer than one recv() (64 KiB: several hundred sockets) is read to its end."""
    socks = []
    try:
        for _ in range(700):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            s.listen()
    except OSError as exc:  # a low RLIMIT_NOFILE
        require(len(socks) >= 200, f"cannot open enough sockets: {exc}")
    try:
        ours = {s.inode for s in tcp_listeners()}
        assert {_inode(s) for s in socks if s.fileno() >= 0 and _listening(s)} <= ours
    finally:
        for s in socks:
            s.close()


def _listening(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
