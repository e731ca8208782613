"""nf_tables tables as the kernel reports them over netlink: name, flags, owner (portid -> pid).

nft 1.0.6 prints garbage for the flags of an owner table in JSON (`"flags": "Lester Gooch #5"`,
memory that is not the flags) and never prints the owner's portid at all, so whether a table
exists, who owns it and whether it persists is read here, from `NFT_MSG_GETTABLE` itself: one
dump request on a netlink socket of the caller's network namespace, no tool, no library.

A netlink portid is not a pid: the first socket a process binds usually gets its pid, later ones
get other numbers. The owner's pid is found the way `ss`/`lsof` do it: the portid's socket inode
in /proc/net/netlink, then the process holding `socket:[inode]` among /proc/*/fd.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFPROTO_INET = 1
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_OWNER = 1, 2, 7
NFT_TABLE_F_DORMANT, NFT_TABLE_F_OWNER, NFT_TABLE_F_PERSIST = 0x1, 0x2, 0x4
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")


class NetlinkError(OSError):
    """The kernel refused the request, or it could not be sent (no nf_tables here)."""


@dataclass(frozen=True)
class TableInfo:
    family: int
    name: str
    flags: int
    owner_portid: int | None  # set only while a socket owns the table (`flags owner`)

    @property
    def owned(self) -> bool:
        return bool(self.flags & NFT_TABLE_F_OWNER)

    @property
    def persistent(self) -> bool:
        return bool(self.flags & NFT_TABLE_F_PERSIST)

    def flag_names(self) -> list[str]:
        names = {NFT_TABLE_F_DORMANT: "dormant", NFT_TABLE_F_OWNER: "owner", NFT_TABLE_F_PERSIST: "persist"}
        out = [n for bit, n in names.items() if self.flags & bit]
        rest = self.flags & ~sum(names)
        return out + ([f"0x{rest:x}"] if rest else [])


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence number, payload start, payload end) of each netlink message in one datagram."""
    off = 0
    while off + _HDR.size <= len(data):
        length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            return
        yield mtype, seq, off + _HDR.size, min(off + length, len(data))
        off += (length + 3) & ~3


def error_code(data: bytes, start: int) -> int:
    """The errno an NLMSG_ERROR payload carries (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", data, start)[0])


def attributes(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """A message's netlink attributes by type (nested flag stripped), the last of a type winning."""
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def u32(value: bytes | None) -> int | None:
    """A big-endian 32-bit attribute (nf_tables' byte order), or None when absent or short."""
    return int(struct.unpack(">I", value[:4])[0]) if value is not None and len(value) >= 4 else None


def parse_tables(data: bytes) -> tuple[list[TableInfo], bool, int]:
    """Tables in one datagram of a GETTABLE dump; (tables, done, errno of an error message or 0)."""
    tables: list[TableInfo] = []
    for mtype, _seq, start, end in messages(data):
        if mtype == _NLMSG_DONE:
            return tables, True, 0
        if mtype == _NLMSG_ERROR:
            return tables, True, error_code(data, start)
        if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
            family = data[start]
            a = attributes(data, start + _NFGEN.size, end)
            name = a.get(NFTA_TABLE_NAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            tables.append(TableInfo(family, name, u32(a.get(NFTA_TABLE_FLAGS)) or 0, u32(a.get(NFTA_TABLE_OWNER))))
    return tables, False, 0


def list_tables(family: int = NFPROTO_INET, timeout: float = 5.0) -> list[TableInfo]:
    """Every nf_tables table of `family` in this network namespace (a GETTABLE dump)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    except OSError as exc:
        raise NetlinkError(exc.errno, f"no nf_tables netlink here: {exc.strerror}") from exc
    with sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        body = _NFGEN.pack(family, 0, 0)
        msg = _HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
                        _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body
        sock.send(msg)
        out: list[TableInfo] = []
        while True:
            tables, done, err = parse_tables(sock.recv(1 << 16))
            out.extend(tables)
            if err:
                raise NetlinkError(err, f"nf_tables refused GETTABLE: {os.strerror(err)}")
            if done:
                return out


def find_table(name: str, family: int = NFPROTO_INET) -> TableInfo | None:
    return next((t for t in list_tables(family) if t.name == name), None)


def netlink_inode(portid: int, proc_net: Path = Path("/proc/self/net")) -> int | None:
    """The inode of this namespace's NETLINK_NETFILTER socket bound to `portid` (/proc/net/netlink)."""
    try:
        lines = (proc_net / "netlink").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        cols = line.split()
        if len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER) and cols[2] == str(portid):
            return int(cols[9])
    return None


def pids_holding(inode: int, proc: Path = Path("/proc")) -> list[int]:
    """Processes with `socket:[inode]` open (what `ss -p` and `lsof` look up the same way)."""
    target = f"socket:[{inode}]"
    found: list[int] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(os.path.join(entry.path, "fd"))
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) == target:
                        found.append(int(entry.name))
                        break
                except OSError:
                    continue
    return sorted(found)


def owner_pids(portid: int, proc: Path = Path("/proc")) -> list[int]:
    """The pid(s) behind an owner portid; empty when the socket or its holder cannot be found.

    The agent runs without CAP_SYS_PTRACE, and the kernel hides /proc/PID/fd of a process whose
    capabilities exceed its own (any root shell). Then the portid itself is the answer when it
    names a live process: the kernel gives a process's first netlink socket its pid as portid,
    which is what nft and every libmnl tool get.
    """
    inode = netlink_inode(portid, proc / "self" / "net")
    found = pids_holding(inode, proc) if inode is not None else []
    if not found and inode is not None and portid > 0 and (proc / str(portid)).is_dir():
        return [portid]
    return found


def process_name(pid: int, proc: Path = Path("/proc")) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def is_nodeguard_agent(pid: int, proc: Path = Path("/proc")) -> bool:
    """Is `pid` a running `nodeguard run` (the entry point, or `python -m nodeguard run`)?

    What a process says it is, not proof: a root process that lies about its command line can
    do worse than hold a table. It tells a one-shot `nodeguard check` that the owner it sees is
    the agent keeping the table, not a squatter.
    """
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv if a]
    for i, word in enumerate(words):
        if word == "nodeguard" or word.endswith("/nodeguard"):
            return "run" in words[i + 1:]
    return False
