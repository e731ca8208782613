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
"""

from __future__ import annotations

import json
from typing import Any

from nodeguard.netfilter.backend import Backend
from nodeguard.netfilter.libnft import Nft, NftError, nft_via, shared_nft
from nodeguard.netfilter.model import ChainState, Desired, FirewallState, RuleSpec, normalise_cidr, rules_for

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


def parse_rule(exprs: list[dict[str, Any]]) -> RuleSpec:
    """A rule's JSON expressions -> RuleSpec; anything but our own shapes is kept as raw."""
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


class NftablesBackend(Backend):
    name = "nftables"

    def __init__(self, nft: Nft | None = None) -> None:
        super().__init__()
        self._nft = nft

    @property
    def nft(self) -> Nft:
        # Looked up at each use: rendering needs no library, and a context belongs to one
        # process and one network namespace (see shared_nft).
        return self._nft if self._nft is not None else shared_nft()

    def describe(self) -> str:
        via = self._nft.via if self._nft is not None else nft_via()
        return f"table inet {TABLE}, chain {CHAIN} (hook input, priority filter - 10), via {via}"

    def desired_chains(self, desired: Desired) -> tuple[ChainState, ...]:
        return (ChainState(f"inet {TABLE} {CHAIN}", True, True, "base chain on the input hook",
                           rules_for(desired, None)),)

    def _table_exists(self) -> bool:
        listing = json.loads(self.nft.run("list tables inet", json=True) or '{"nftables": []}')
        return any(item.get("table", {}).get("name") == TABLE for item in listing.get("nftables", []))

    def read_state(self) -> FirewallState:
        where = f"inet {TABLE} {CHAIN}"
        if not self.nft.available:
            return FirewallState(self.name, error="neither libnftables nor the nft binary is installed")
        try:
            if not self._table_exists():
                return FirewallState(self.name, (ChainState(where, False, False, f"table inet {TABLE} is absent"),))
            listing = json.loads(self.nft.run(f"list table inet {TABLE}", json=True))
        except NftError as exc:
            if "No such file or directory" in exc.message:  # deleted between the two reads
                return FirewallState(self.name, (ChainState(where, False, False, f"table inet {TABLE} is absent"),))
            return FirewallState(self.name, error=str(exc))
        except ValueError as exc:
            return FirewallState(self.name, error=str(exc))
        chain: dict[str, Any] | None = None
        rules: list[RuleSpec] = []
        others: list[RuleSpec] = []
        for item in listing.get("nftables", []):
            if "chain" in item:
                if item["chain"].get("name") == CHAIN:
                    chain = item["chain"]
                else:
                    others.append(RuleSpec(None, None, raw=f"foreign chain {item['chain'].get('name')}"))
            elif "rule" in item:
                r = item["rule"]
                spec = parse_rule(r.get("expr", []))
                (rules if r.get("chain") == CHAIN else others).append(spec)
        if chain is None:
            return FirewallState(self.name, (ChainState(where, False, False, f"chain {CHAIN} is absent",
                                                         tuple(others)),))
        hook = (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy"))
        hooked = hook == ("filter", "input", PRIORITY, "accept")
        detail = ("base chain on the input hook" if hooked else
                  f"chain is type={hook[0]} hook={hook[1]} prio={hook[2]} policy={hook[3]}, "
                  f"want filter/input/{PRIORITY}/accept")
        return FirewallState(self.name, (ChainState(where, True, hooked, detail, tuple(rules + others)),))

    def ruleset_text(self, desired: Desired) -> str:
        body = "\n".join(f"    {render_rule(r)}" for r in rules_for(desired, None))
        return (f"add table inet {TABLE}\n"
                f"delete table inet {TABLE}\n"
                f"table inet {TABLE} {{\n"
                f'  comment "{COMMENT}"\n'
                f"  chain {CHAIN} {{\n"
                f"    type filter hook input priority filter - 10; policy accept;\n"
                f"{body}\n"
                f"  }}\n"
                f"}}\n")

    def _write(self, desired: Desired, state: FirewallState) -> None:
        self.nft.run(self.ruleset_text(desired))

    def _delete(self, state: FirewallState) -> bool:
        if not state.chains or (not state.chains[0].exists and not self._table_exists()):
            return False
        self.nft.run(f"delete table inet {TABLE}")
        return True
