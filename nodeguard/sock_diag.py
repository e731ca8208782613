"""Listening TCP sockets of this network namespace, read from the kernel with inet_diag (sock_diag).

One `SOCK_DIAG_BY_FAMILY` dump per address family on a netlink socket, no tool and no library:
pyroute2's `DiagSocket` answers the same question, but `import pyroute2` loads every one of its
modules (about 120 ms of CPU and 22 MiB of resident memory, paid by every `check` and held by the
agent for its lifetime) for one request and one reply format. tests/unit/test_sock_diag.py holds
this reader to pyroute2's answer on the same sockets.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from nodeguard.netfilter.nftnl import NetlinkError, attributes, error_code, messages

NETLINK_SOCK_DIAG = 4  # linux/netlink.h
SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
INET_DIAG_SKV6ONLY = 11  # linux/inet_diag.h: sent for every AF_INET6 socket, asked or not
TCP_LISTEN = 10  # include/net/tcp_states.h
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HDR = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then an all-zero inet_diag_sockid (48).
_REQ = struct.Struct("=BBBxI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid: sport, dport (big-endian), src[16],
# dst[16], if, cookie[2]; then expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")
_PORT = struct.Struct(">H")


@dataclass(frozen=True)
class TcpListener:
    family: int  # socket.AF_INET / AF_INET6
    address: str
    port: int
    inode: int
    uid: int
    v6only: bool | None  # AF_INET6 only: False means a wildcard listener also takes IPv4


def _parse(data: bytes, family: int) -> tuple[list[TcpListener], bool, int]:
    """Sockets in one datagram of the dump; (sockets, done, errno of an error message or 0)."""
    out: list[TcpListener] = []
    size = 4 if family == socket.AF_INET else 16
    for mtype, _seq, start, end in messages(data):
        if mtype == _NLMSG_DONE:
            return out, True, 0
        if mtype == _NLMSG_ERROR:
            return out, True, error_code(data, start)
        if mtype != SOCK_DIAG_BY_FAMILY or end - start < _MSG.size:
            continue
        fam, _state, _timer, _retrans, _sport, _dport, src, _dst, _if, _exp, _rq, _wq, uid, inode = (
            _MSG.unpack_from(data, start))
        sport = _PORT.unpack_from(data, start + 4)[0]  # network byte order, whatever the host's
        v6only = attributes(data, start + _MSG.size, end).get(INET_DIAG_SKV6ONLY)
        out.append(TcpListener(fam, socket.inet_ntop(fam, src[:size]), sport, inode, uid,
                               bool(v6only[0]) if fam == socket.AF_INET6 and v6only else None))
    return out, False, 0


def tcp_listeners(timeout: float = 5.0) -> list[TcpListener]:
    """Every listening TCP socket of this network namespace, IPv4 then IPv6."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise NetlinkError(exc.errno, f"no sock_diag netlink here: {exc.strerror}") from exc
    out: list[TcpListener] = []
    with sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
            sock.send(_HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
                      + body)
            while True:
                found, done, err = _parse(sock.recv(1 << 16), family)
                out.extend(found)
                if err:
                    raise NetlinkError(err, f"sock_diag refused the dump: {os.strerror(err)}")
                if done:
                    break
    return out
