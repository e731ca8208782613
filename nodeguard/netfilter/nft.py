"""The nf_tables backend: an `inet` table of nodeguard's own, replaced in one transaction.

    table inet nodeguard {
      chain input {
        type filter hook input priority filter - 10; policy accept;
        tcp dport 2376 ip saddr 192.0.2.0/28 accept      # allowed: on to the other chains
        tcp dport 2376 drop                               # everyone else, IPv4 and IPv6
      }
    }

One `inet` table covers IPv4 and IPv6. Its base chain sits on the input hook just before the
filter priority, where iptables-nft's, Docker's and kube-proxy's chains are: our `accept` ends
only our chain (the packet still meets every other base chain), our `drop` is final. A write is
one nft transaction (`add table; delete table; table {...}`): the kernel swaps the whole table
or nothing, so there is no moment without the rules, and we never touch another table.

On Linux 6.9+ that transaction is a netlink batch from a socket this process keeps (nftown.py),
and the table carries `flags owner, persist`: nobody else can change it while we run, and it
stays after we exit. Older kernels get the same table, unowned, through libnftables. Whether the
table exists, its flags and its owner are read over netlink (nftnl.py); only chains and rules
come from nft's JSON.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from nodeguard.netfilter import nftnl
from nodeguard.netfilter.backend import Backend, BackendError
from nodeguard.netfilter.libnft import Nft, NftError, netns_id, nft_via, shared_nft
from nodeguard.netfilter.model import (
    ChainState,
    Desired,
    FirewallState,
    RuleSpec,
    TableOwner,
    normalise_cidr,
    rules_for,
)
from nodeguard.netfilter.nftown import OwnedTable, persist_supported
from nodeguard.settings import NFT_OWN_TABLE

TABLE = "nodeguard"
CHAIN = "input"
PRIORITY = -10  # filter (0) - 10: before iptables-nft's filter chains
COMMENT = "managed by nodeguard; remove with: nodeguard firewall remove"


def _verdict(expr: dict[str, Any]) -> str | None:
    if "accept" in expr:
        return "pass"
    if "drop" in expr:
        return "drop"
    reject = expr.get("reject")
    if isinstance(reject, dict) and reject.get("type") == "tcp reset":
        return "reject"
    return None


def _source(right: Any) -> str | None:
    if isinstance(right, str):
        return normalise_cidr(right)
    prefix = right.get("prefix") if isinstance(right, dict) else None
    if isinstance(prefix, dict):
        return normalise_cidr(f"{prefix['addr']}/{prefix['len']}")
    return None


def parse_rule(exprs: Any) -> RuleSpec:
    """A rule's JSON expressions -> RuleSpec; anything but our own shapes is foreign, kept as raw.

    Never raises: an inverted match (`ip saddr != 10.0.0.0/8`), a masked address
    (`ip saddr & 255.0.0.1 == 198.0.0.0`) or an expression this nft does not know is a rule
    nodeguard did not write, and the chain gets rewritten.
    """
    try:
        return _parse_exprs(exprs)
    except (ValueError, KeyError, TypeError, AttributeError):
        return RuleSpec(None, None, raw=json.dumps(exprs, separators=(",", ":"), default=str))


def _parse_exprs(exprs: list[dict[str, Any]]) -> RuleSpec:
    raw = RuleSpec(None, None, raw=json.dumps(exprs, separators=(",", ":")))
    port: int | None = None
    source: str | None = None
    verdict: str | None = None
    for i, e in enumerate(exprs):
        match = e.get("match")
        if isinstance(match, dict) and match.get("op") == "==":
            payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
            field = (payload.get("protocol"), payload.get("field"))
            if field == ("tcp", "dport") and isinstance(match.get("right"), int) and port is None:
                port = match["right"]
                continue
            if field in (("ip", "saddr"), ("ip6", "saddr")) and source is None:
                try:
                    source = _source(match.get("right"))
                except (ValueError, KeyError):
                    return raw
                if source is None:
                    return raw
                continue
            return raw
        if i == len(exprs) - 1:
            verdict = _verdict(e)
        if verdict is None:
            return raw
    # We write sources only with "pass" and "pass" only with a source: anything else is not ours.
    if port is None or verdict is None or (source is not None) != (verdict == "pass"):
        return raw
    return RuleSpec(port, verdict, source)  # type: ignore[arg-type]


def render_rule(rule: RuleSpec) -> str:
    text = f"tcp dport {rule.port}"
    if rule.source is not None:
        text += f" {'ip6' if ':' in rule.source else 'ip'} saddr {rule.source}"
    return text + {"pass": " accept", "drop": " drop", "reject": " reject with tcp reset"}[rule.verdict or "drop"]


def table_owner(info: nftnl.TableInfo) -> TableOwner | None:
    """Who holds `flags owner` on our table: its portid, the pid(s) behind it, their names."""
    if not info.owned or info.owner_portid is None:
        return None
    with _owned_lock:
        ours = _owned.get((os.getpid(), netns_id()))
    if ours is not None and ours.portid == info.owner_portid:
        # Our own socket: no walk over every process's descriptors (a few ms on a busy node).
        return TableOwner(info.owner_portid, (os.getpid(),), (nftnl.process_name(os.getpid()) or "?",), mine=True,
                          agent=nftnl.is_nodeguard_agent(os.getpid()))
    pids = tuple(nftnl.owner_pids(info.owner_portid))
    names = tuple(nftnl.process_name(p) or "?" for p in pids)
    return TableOwner(info.owner_portid, pids, names, mine=os.getpid() in pids,
                      agent=bool(pids) and all(nftnl.is_nodeguard_agent(p) for p in pids))


OWN_TABLE_ENV = NFT_OWN_TABLE.env[0]
_owned: dict[tuple[int, int], OwnedTable] = {}
_owned_lock = threading.Lock()


def owned_table() -> OwnedTable:
    """This process's owning socket for its current network namespace (see shared_nft for why)."""
    key = (os.getpid(), netns_id())
    with _owned_lock:
        table = _owned.get(key)
        if table is None:
            table = _owned[key] = OwnedTable(TABLE)
        return table


def own_table_default() -> bool:
    """Own the table (flags owner, persist) where the kernel can keep it after we exit (6.9+).

    NODEGUARD_NFT_OWN_TABLE=0 forces the older way (a plain table, watched and restored), =1
    forces ownership (which on a kernel without `persist` fails every write: EOPNOTSUPP).
    """
    forced: bool | None = NFT_OWN_TABLE.read()
    return persist_supported() if forced is None else forced


class NftablesBackend(Backend):
    name = "nftables"

    def __init__(self, nft: Nft | None = None, own_table: bool | None = None) -> None:
        super().__init__()
        self._nft = nft
        # Writes go through a socket of ours that owns the table (flags owner, persist).
        self.own_table = own_table_default() if own_table is None else own_table
        # Set by the long-running agent in enforce mode: an orphan table (persisted by an agent
        # that stopped, or written by a one-shot command) is not in place until we hold it.
        self.hold = False

    def keep_owned(self, hold: bool) -> None:
        self.hold = hold and self.own_table

    @property
    def nft(self) -> Nft:
        # Looked up at each use: rendering needs no library, and a context belongs to one
        # process and one network namespace (see shared_nft).
        return self._nft if self._nft is not None else shared_nft()

    def describe(self) -> str:
        if self.own_table:
            return (f"table inet {TABLE}, chain {CHAIN} (hook input, priority filter - 10), written over netlink "
                    f"with flags owner, persist")
        via = self._nft.via if self._nft is not None else nft_via()
        return f"table inet {TABLE}, chain {CHAIN} (hook input, priority filter - 10), via {via}"

    def desired_chains(self, desired: Desired) -> tuple[ChainState, ...]:
        return (ChainState(f"inet {TABLE} {CHAIN}", True, True, "base chain on the input hook",
                           rules_for(desired, None)),)

    @staticmethod
    def _table() -> nftnl.TableInfo | None:
        return nftnl.find_table(TABLE)

    def read_state(self) -> FirewallState:
        """Our table from netlink (exists? flags? owner?), its chains and rules from nft's JSON.

        Never `nft -j list table`: nft 1.0.6 prints garbage as the flags of an owner table. The
        chain listings it prints for the same table are sound.
        """
        where = f"inet {TABLE} {CHAIN}"
        if not self.nft.available:
            return FirewallState(self.name, error="neither libnftables nor the nft binary is installed")
        absent = FirewallState(self.name, (ChainState(where, False, False, f"table inet {TABLE} is absent"),))
        try:
            info = self._table()
            if info is None:
                return absent
            owner = table_owner(info)
            chains = json.loads(self.nft.run("list chains inet", json=True) or '{"nftables": []}')
            names = [c["chain"].get("name") for c in chains.get("nftables", [])
                     if "chain" in c and c["chain"].get("table") == TABLE]
            listing = json.loads(self.nft.run(f"list chain inet {TABLE} {CHAIN}", json=True)) \
                if CHAIN in names else {"nftables": []}
        except NftError as exc:
            if "No such file or directory" in exc.message:  # deleted between the reads
                return absent
            return FirewallState(self.name, error=str(exc))
        except (nftnl.NetlinkError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return FirewallState(self.name, error=f"{type(exc).__name__}: {exc}")
        flags = tuple(info.flag_names())
        others = [RuleSpec(None, None, raw=f"foreign chain {n}") for n in names if n != CHAIN]
        chain: dict[str, Any] | None = None
        rules: list[RuleSpec] = []
        for item in listing.get("nftables", []):
            if "chain" in item and item["chain"].get("name") == CHAIN:
                chain = item["chain"]
            elif "rule" in item:
                rules.append(parse_rule(item["rule"].get("expr", [])))
        if chain is None:
            return FirewallState(self.name, (ChainState(where, False, False, f"chain {CHAIN} is absent",
                                                         tuple(others)),), owner=owner, table_flags=flags)
        hook = (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))
        hooked = hook == ("filter", "input", PRIORITY, "accept")
        detail = ("base chain on the input hook" if hooked else
                  f"chain is type={hook[0]} hook={hook[1]} prio={hook[2]} policy={hook[3]}, "
                  f"want filter/input/{PRIORITY}/accept")
        return FirewallState(self.name, (ChainState(where, True, hooked, detail, tuple(rules + others)),),
                             owner=owner, table_flags=flags)

    def in_place(self, desired: Desired, state: FirewallState | None = None) -> bool:
        state = state or self.read_state()
        if self.hold and (state.owner is None or not state.owner.mine):
            return False
        return super().in_place(desired, state)

    def ruleset_text(self, desired: Desired, exists: bool = False) -> str:
        body = "\n".join(f"    {render_rule(r)}" for r in rules_for(desired, None))
        # "add table" on an existing table is an update of its flags: refused (EOPNOTSUPP) for
        # a `persist` table left by an owning nodeguard; it is only needed when there is none.
        return ("" if exists else f"add table inet {TABLE}\n") + (
                f"delete table inet {TABLE}\n"
                f"table inet {TABLE} {{\n"
                f'  comment "{COMMENT}"\n'
                f"  chain {CHAIN} {{\n"
                f"    type filter hook input priority filter - 10; policy accept;\n"
                f"{body}\n"
                f"  }}\n"
                f"}}\n")

    def _write(self, desired: Desired, state: FirewallState) -> None:
        if self.own_table:
            self._owned_write(lambda t: t.replace(CHAIN, PRIORITY, rules_for(desired, None), COMMENT), state)
        else:
            self.nft.run(self.ruleset_text(desired, exists=self._table() is not None))

    def _owned_write(self, write: Callable[[OwnedTable], None], state: FirewallState) -> None:
        try:
            write(owned_table())
        except nftnl.NetlinkError as exc:
            if exc.errno == errno.EPERM:
                owner = state.owner.render() if state.owner else "another process"
                raise BackendError(f"table inet {TABLE} is owned by {owner} (nf_tables flags owner): "
                                   f"nobody else may change it until it exits") from exc
            raise BackendError(str(exc)) from exc

    def _delete(self, state: FirewallState) -> bool:
        if not state.chains or (not state.chains[0].exists and self._table() is None):
            return False
        if self.own_table:
            self._owned_write(lambda t: t.delete(), state)
        else:
            self.nft.run(f"delete table inet {TABLE}")
        return True
