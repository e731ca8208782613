"""What nodeguard wants in netfilter and what it found there, in one backend-neutral shape.

Every backend renders the policy into `ChainState`s (its own table or chain, per address family)
and parses what the kernel holds back into the same shape, so "is it intact?" is a plain
comparison that the firewall control makes without knowing which backend is underneath.

Allowed sources *pass through* nodeguard's chain (xtables: RETURN; nf_tables: accept in a base
chain of our own, after which the packet still meets every other base chain on the hook): a
nodeguard rule never lets a packet skip a rule that is not nodeguard's. Only DROP/REJECT are
final.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from nodeguard.policy import FirewallPolicy

Family = Literal["ipv4", "ipv6"]
Verdict = Literal["pass", "drop", "reject"]


@dataclass(frozen=True)
class RuleSpec:
    """One rule as nodeguard writes it: `tcp dport PORT [saddr SOURCE] -> VERDICT`.

    A rule nodeguard cannot read back as one of its own is kept with `port=None` and its text in
    `raw`; it then counts against every port (it may accept anything before our drop).
    """

    port: int | None
    verdict: Verdict | None
    source: str | None = None  # a normalised CIDR; None: any source
    raw: str | None = None

    @property
    def foreign(self) -> bool:
        return self.port is None

    def render(self) -> str:
        if self.raw is not None:
            return f"unrecognised rule: {self.raw}"
        src = f" from {self.source}" if self.source else ""
        return f"tcp/{self.port}{src} {self.verdict}"


@dataclass(frozen=True)
class ChainState:
    """nodeguard's chain in one table: does it exist, is it hooked first, and what it holds."""

    where: str  # "inet nodeguard input", "ipv4 filter NODEGUARD", ...
    exists: bool
    hooked: bool
    hook_detail: str
    rules: tuple[RuleSpec, ...] = ()
    # The rules of INPUT that jump to our chain, as the backend spells them (xtables only).
    jumps: tuple[str, ...] = ()

    def for_port(self, port: int) -> tuple[RuleSpec, ...]:
        return tuple(r for r in self.rules if r.port == port or r.foreign)


@dataclass(frozen=True)
class PortWant:
    port: int
    allow: tuple[str, ...]  # normalised CIDRs, both families
    action: Literal["drop", "reject"]

    def allow_in(self, family: Family) -> tuple[str, ...]:
        version = 4 if family == "ipv4" else 6
        return tuple(c for c in self.allow if ipaddress.ip_network(c).version == version)


@dataclass(frozen=True)
class Desired:
    """The ruleset the policy asks for, in policy order (the order rules are written in)."""

    ports: tuple[PortWant, ...] = ()

    @classmethod
    def from_policy(cls, fw: FirewallPolicy) -> Desired:
        return cls(tuple(PortWant(p.port, tuple(p.allow), p.action) for p in fw.ports))

    def port(self, number: int) -> PortWant | None:
        return next((p for p in self.ports if p.port == number), None)


def rules_for(desired: Desired, family: Family | None) -> tuple[RuleSpec, ...]:
    """The rule list of one chain: per port, a pass per allowed CIDR, then the drop/reject.

    `family=None` renders an inet chain (both families in one list, one final verdict per port).
    """
    out: list[RuleSpec] = []
    for p in desired.ports:
        sources: Iterable[str] = p.allow if family is None else p.allow_in(family)
        out.extend(RuleSpec(p.port, "pass", src) for src in sources)
        out.append(RuleSpec(p.port, p.action))
    return tuple(out)


def normalise_cidr(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


@dataclass(frozen=True)
class TableOwner:
    """The netlink socket holding nf_tables `flags owner` on nodeguard's table, and its process(es).

    While a socket owns a table, every other writer gets EPERM; when it closes, the kernel drops
    the table without any notification (unless the table is also `persist`, Linux 6.9+).
    """

    portid: int
    pids: tuple[int, ...]
    names: tuple[str, ...]
    mine: bool  # this process
    agent: bool = False  # a `nodeguard run` (this one or another): the owner nodeguard expects

    def render(self) -> str:
        who = ", ".join(f"{n}[{p}]" for p, n in zip(self.pids, self.names, strict=True)) or "an unknown process"
        return f"{who} (netlink portid {self.portid})"


@dataclass(frozen=True)
class FirewallState:
    """Everything a backend read: its chains (empty when it could not read) and why not."""

    backend: str
    chains: tuple[ChainState, ...] = ()
    error: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    # nf_tables only: who owns nodeguard's table (None: nobody) and the table's flags.
    owner: TableOwner | None = None
    table_flags: tuple[str, ...] = ()

    def render(self) -> list[str]:
        lines = []
        if self.table_flags or self.owner is not None:
            owner = self.owner.render() if self.owner is not None else "nobody"
            lines.append(f"table flags: {', '.join(self.table_flags) or 'none'}; owned by {owner}")
        for c in self.chains:
            lines.append(f"{c.where}: " + ("present" if c.exists else "absent") + f"; {c.hook_detail}")
            lines.extend(f"  {r.render()}" for r in c.rules)
        return lines
