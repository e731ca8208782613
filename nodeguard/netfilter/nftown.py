"""nodeguard's nf_tables table written over netlink, owned by the agent (`flags owner, persist`).

Since Linux 6.9 a table can carry two flags together:

- `owner`: only the netlink socket that created it may change or delete it; everyone else,
  root included, gets EPERM. A competing writer cannot flush, delete or insert into it.
- `persist`: when that socket closes (the agent stops, crashes, is upgraded) the kernel keeps
  the table and only clears `owner`; the next agent takes it over by replacing it.

Without `persist` (older kernels) an owner table is dropped the moment its socket closes, so
there nodeguard does not set `owner` at all and keeps its table by watching and restoring
(`nft.py`). nft 1.0.6 (Debian 12) cannot express `persist` and ignores table flags in JSON
input, and the owning socket must be the one that writes every later change, so this module
builds the same table nft would (same expressions, same order, so nft reads it back exactly as
`nft.py` writes it) as one netlink batch on one socket this process keeps open.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading

from nodeguard.netfilter.model import RuleSpec
from nodeguard.netfilter.nftnl import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET,
    NFT_TABLE_F_OWNER,
    NFT_TABLE_F_PERSIST,
    NetlinkError,
    error_code,
    messages,
)

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_CREATE = 0x1, 0x4, 0x400
_NLMSG_ERROR = 2
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NLA_F_NESTED = 0x8000
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE = 0, 2, 3, 6

# Expression constants (linux/netfilter/nf_tables.h).
_REG_VERDICT, _REG_1 = 0, 1
_META_NFPROTO, _META_L4PROTO = 15, 16
_PAYLOAD_NETWORK, _PAYLOAD_TRANSPORT = 1, 2
_NF_DROP, _NF_ACCEPT = 0, 1
_NF_INET_LOCAL_IN = 1
_REJECT_TCP_RST = 1
_NFPROTO_IPV4, _NFPROTO_IPV6 = 2, 10
_UDATA_TABLE_COMMENT = 0


def persist_supported(release: str | None = None) -> bool:
    """Linux 6.9 added NFT_TABLE_F_PERSIST; older kernels refuse the flag (EOPNOTSUPP)."""
    text = release if release is not None else os.uname().release
    try:
        major, minor = (int(x) for x in text.split("-", 1)[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 9)


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(children))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def _expr(name: str, *data: bytes) -> bytes:
    # NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    return _nest(1, _str(1, name), _nest(2, *data))


def _data(kind: int, value: bytes) -> bytes:
    return _nest(kind, _attr(1, value))  # { NFTA_DATA_VALUE }


def _meta(key: int) -> bytes:
    return _expr("meta", _u32(2, key), _u32(1, _REG_1))  # NFTA_META_KEY, NFTA_META_DREG


def _cmp_eq(value: bytes) -> bytes:
    return _expr("cmp", _u32(1, _REG_1), _u32(2, 0), _data(3, value))  # SREG, OP eq, DATA


def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _u32(1, _REG_1), _u32(2, base), _u32(3, offset), _u32(4, length))


def _bitwise(mask: bytes) -> bytes:
    # SREG, DREG, LEN, MASK, XOR: reg = (reg & mask) ^ 0
    return _expr("bitwise", _u32(1, _REG_1), _u32(2, _REG_1), _u32(3, len(mask)), _data(4, mask),
                 _data(5, b"\0" * len(mask)))


def rule_exprs(rule: RuleSpec) -> list[bytes]:
    """`tcp dport P [ip|ip6 saddr CIDR] accept|drop|reject with tcp reset`, as nft compiles it in inet."""
    assert rule.port is not None and rule.verdict is not None
    out = [_meta(_META_L4PROTO), _cmp_eq(bytes([socket.IPPROTO_TCP])),
           _payload(_PAYLOAD_TRANSPORT, 2, 2), _cmp_eq(struct.pack(">H", rule.port))]
    if rule.source is not None:
        net = ipaddress.ip_network(rule.source)
        v4 = net.version == 4
        out += [_meta(_META_NFPROTO), _cmp_eq(bytes([_NFPROTO_IPV4 if v4 else _NFPROTO_IPV6])),
                _payload(_PAYLOAD_NETWORK, 12 if v4 else 8, 4 if v4 else 16)]
        if net.prefixlen != net.max_prefixlen:
            out.append(_bitwise(net.netmask.packed))
        out.append(_cmp_eq(net.network_address.packed))
    if rule.verdict == "reject":
        out.append(_expr("reject", _u32(1, _REJECT_TCP_RST)))
    else:
        code = _NF_ACCEPT if rule.verdict == "pass" else _NF_DROP
        # immediate: DREG verdict, DATA { VERDICT { CODE } }
        out.append(_expr("immediate", _u32(1, _REG_VERDICT), _nest(2, _nest(2, _u32(1, code)))))
    return out


class OwnedTable:
    """One netlink socket that creates, owns and rewrites one inet table for this process's life.

    Replacing the table is one batch: create it if absent, delete it, create it again with its
    chain and rules. The kernel applies the batch whole or not at all; while our socket owns
    the table nobody else can even delete it, and when our socket closes the table stays
    (`persist`), unowned, for the next agent to replace.
    """

    def __init__(self, table: str, persist: bool = True) -> None:
        self.table = table
        self.flags = NFT_TABLE_F_OWNER | (NFT_TABLE_F_PERSIST if persist else 0)
        self._lock = threading.Lock()
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(10)

    @property
    def portid(self) -> int:
        return int(self._sock.getsockname()[0])

    def close(self) -> None:
        self._sock.close()

    def _msg(self, mtype: int, flags: int, family: int, body: bytes, res_id: int = 0) -> bytes:
        self._seq += 1
        payload = _NFGEN.pack(family, 0, socket.htons(res_id)) + body
        return _HDR.pack(_HDR.size + len(payload), mtype, flags, self._seq, 0) + payload

    def _nft(self, kind: int, body: bytes, extra: int = 0) -> bytes:
        return self._msg((NFNL_SUBSYS_NFTABLES << 8) | kind, _NLM_F_REQUEST | _NLM_F_ACK | extra, NFPROTO_INET, body)

    def _table_body(self, flags: int | None, comment: str | None = None) -> bytes:
        body = _str(1, self.table)  # NFTA_TABLE_NAME
        if flags is not None:
            body += _u32(2, flags)  # NFTA_TABLE_FLAGS
        if comment:
            text = comment.encode()[:126] + b"\0"
            body += _attr(6, bytes([_UDATA_TABLE_COMMENT, len(text)]) + text)  # NFTA_TABLE_USERDATA
        return body

    def replace(self, chain: str, priority: int, rules: tuple[RuleSpec, ...], comment: str | None = None) -> None:
        """The whole table, replaced in one transaction by this socket (which then owns it)."""
        hook = _nest(4, _u32(1, _NF_INET_LOCAL_IN), _u32(2, priority))  # NFTA_CHAIN_HOOK {HOOKNUM, PRIORITY}
        chain_body = _str(1, self.table) + _str(3, chain) + hook + _u32(5, _NF_ACCEPT) + _str(7, "filter")
        with self._lock:
            # "add table" without flags first (a no-op on an existing table, whatever its flags),
            # so that the delete never fails on an absent one.
            msgs = [self._nft(NFT_MSG_NEWTABLE, self._table_body(None), _NLM_F_CREATE),
                    self._nft(NFT_MSG_DELTABLE, _str(1, self.table)),
                    self._nft(NFT_MSG_NEWTABLE, self._table_body(self.flags, comment), _NLM_F_CREATE),
                    self._nft(NFT_MSG_NEWCHAIN, chain_body, _NLM_F_CREATE)]
            for rule in rules:
                exprs = _nest(4, *rule_exprs(rule))  # NFTA_RULE_EXPRESSIONS
                msgs.append(self._nft(NFT_MSG_NEWRULE, _str(1, self.table) + _str(2, chain) + exprs,
                                      _NLM_F_CREATE | 0x800))  # NLM_F_APPEND
            self._commit(msgs)

    def delete(self) -> None:
        with self._lock:
            self._commit([self._nft(NFT_MSG_DELTABLE, _str(1, self.table))])

    def _drain(self) -> None:
        """Answers left over from an aborted batch (the kernel may answer after we stopped reading)."""
        # MSG_DONTWAIT would still wait: a socket with a timeout polls for it in Python.
        while select.select([self._sock], [], [], 0)[0]:
            self._sock.recv(1 << 16)

    def _commit(self, msgs: list[bytes]) -> None:
        self._drain()
        begin = self._msg(_NFNL_MSG_BATCH_BEGIN, _NLM_F_REQUEST, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)
        end = self._msg(_NFNL_MSG_BATCH_END, _NLM_F_REQUEST, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)
        self._sock.send(begin + b"".join(msgs) + end)
        pending = {_HDR.unpack_from(m)[3] for m in msgs}  # every message asked for an ACK
        errors: list[int] = []
        while pending and not errors:
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError as exc:
                raise NetlinkError(0, "nf_tables did not answer the batch within 10 s") from exc
            for mtype, seq, start, _end in messages(data):
                if mtype == _NLMSG_ERROR and seq in pending:
                    err = error_code(data, start)
                    pending.discard(seq)
                    if err:
                        # The kernel aborted the whole batch; it may not answer every message.
                        errors.append(err)
        if errors:
            raise NetlinkError(errors[0], f"nf_tables refused the batch: {os.strerror(errors[0])}")
