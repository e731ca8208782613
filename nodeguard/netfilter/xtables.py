"""The legacy xtables backend (python-iptables): chain NODEGUARD, jumped to first from INPUT.

    -A INPUT -j NODEGUARD                                   # rule 1 of INPUT
    -A NODEGUARD -s 192.0.2.0/28 -p tcp --dport 2376 -j RETURN
    -A NODEGUARD -p tcp --dport 2376 -j DROP

for `iptables` and `ip6tables` alike. Allowed sources RETURN (not ACCEPT) so the packet goes on
through the host's own INPUT rules: nodeguard only ever takes traffic away.

python-iptables drives libiptc, which reads a whole table, edits it in memory and writes it back
in one setsockopt: a commit is atomic, but it overwrites whatever another writer committed
since our read. So `/run/xtables.lock` of the host root (the flock `iptables -w` takes) is held
from the read to the commit. libiptc keeps process-wide state and python-iptables shares it
between IPv4 and IPv6 without any locking: every call runs on one worker thread of ours.
Reading never loads a table: a table that is not in /proc/net/ip{,6}_tables_names is reported
absent instead of being created by the act of looking.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nodeguard.host.locking import acquire_by
from nodeguard.netfilter.backend import Backend, BackendError
from nodeguard.netfilter.model import ChainState, Desired, Family, FirewallState, RuleSpec, normalise_cidr, rules_for

CHAIN = "NODEGUARD"
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")


def host_families() -> tuple[Family, ...]:
    """IPv4, and IPv6 unless the kernel runs without it (ipv6.disable=1: no IPv6 packet to filter)."""
    return FAMILIES if os.path.isdir("/proc/sys/net/ipv6") else ("ipv4",)
LOCK_TIMEOUT_S = 10.0
_T = TypeVar("_T")
_ANY = {"0.0.0.0/0.0.0.0", "0.0.0.0/0", "::/0", None, ""}
_TARGETS = {"RETURN": "pass", "DROP": "drop", "REJECT": "reject"}


_worker: tuple[int, ThreadPoolExecutor] | None = None
_worker_guard = threading.Lock()


def shared_worker() -> ThreadPoolExecutor:
    """The one thread of this process that calls python-iptables (it is not thread-safe).

    Keyed by pid: a forked child inherits the variable but not the thread.
    """
    global _worker
    with _worker_guard:
        if _worker is None or _worker[0] != os.getpid():
            _worker = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodeguard-xtables"))
        return _worker[1]


def on_worker(fn: Callable[..., _T], *args: Any) -> _T:
    return shared_worker().submit(fn, *args).result()


def legacy_tables(family: Family, proc_net: Path = Path("/proc/self/net")) -> set[str] | None:
    """Tables the legacy xtables kernel side holds in this netns; None when x_tables is absent."""
    name = "ip_tables_names" if family == "ipv4" else "ip6_tables_names"
    try:
        return set((proc_net / name).read_text().split())
    except OSError:
        return None


def legacy_chain_names(table: str, proc_net: Path = Path("/proc/self/net")) -> set[str] | None:
    """Chains of a legacy IPv4 table; None when it is not loaded (it is never loaded by looking)."""
    tables = legacy_tables("ipv4", proc_net)
    if tables is None or table not in tables:
        return None

    def read() -> set[str]:
        import iptc

        t = iptc.Table(table)
        t.refresh()
        return {c.name for c in t.chains}

    try:
        return on_worker(read)
    except Exception:  # python-iptables raises bare Exceptions; unreadable counts as absent
        return None


@contextlib.contextmanager
def xtables_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """flock(LOCK_EX) on the xtables lock, as iptables-legacy does; waits up to `timeout`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            acquire_by(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), timeout, 0.02)
        except OSError as exc:
            raise BackendError(f"cannot take {path} within {timeout:.0f}s: another iptables holds it") from exc
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _parse(rule: Any, index: int = 0) -> RuleSpec:
    """A python-iptables rule of our chain -> RuleSpec; anything else is foreign, kept as raw text.

    Never raises: a rule that python-iptables or ipaddress cannot make sense of (an inverted
    source `! -s`, a non-contiguous mask `198.0.0.0/255.0.0.1`, a match without a parser) is
    still a rule in nodeguard's chain that nodeguard did not write, and it must be rewritten, not
    make the whole read fail.
    """
    try:
        return _parse_known(rule)
    except Exception as exc:  # python-iptables raises bare Exceptions; ipaddress ValueError
        return RuleSpec(None, None, raw=f"rule {index + 1} ({type(exc).__name__}: {exc})")


def _parse_known(rule: Any) -> RuleSpec:
    target = rule.target.name
    params = rule.target.get_all_parameters()
    matches = [(m.name, m.get_all_parameters()) for m in rule.matches]
    raw = RuleSpec(None, None, raw=f"src={rule.src} proto={rule.protocol} in={rule.in_interface} "
                                   f"matches={matches} target={target} {params}")
    if rule.protocol != "tcp" or rule.dst not in _ANY or rule.in_interface or rule.out_interface \
            or str(rule.src or "").startswith("!"):
        return raw
    if len(matches) != 1 or matches[0][0] != "tcp" or list(matches[0][1]) != ["dport"]:
        return raw
    dport = matches[0][1]["dport"]
    if len(dport) != 1 or not dport[0].isdigit():
        return raw
    verdict = _TARGETS.get(target)
    if verdict is None or (verdict == "reject" and params != {"reject-with": ["tcp-reset"]}) or \
            (verdict != "reject" and params):
        return raw
    source = None if rule.src in _ANY else normalise_cidr(rule.src)
    if (source is not None) != (verdict == "pass"):
        return raw
    return RuleSpec(int(dport[0]), verdict, source)  # type: ignore[arg-type]


class XtablesLegacyBackend(Backend):
    name = "iptables-legacy"

    def __init__(self, lock_path: Path, proc_net: Path = Path("/proc/self/net")) -> None:
        super().__init__()
        self.lock_path = lock_path
        self.proc_net = proc_net

    def describe(self) -> str:
        return f"chain {CHAIN} in the filter table of iptables and ip6tables (legacy), jumped to from INPUT rule 1"

    def desired_chains(self, desired: Desired) -> tuple[ChainState, ...]:
        return tuple(ChainState(f"{fam} filter {CHAIN}", True, True, f"INPUT rule 1 jumps to {CHAIN}",
                                rules_for(desired, fam)) for fam in host_families())

    # -- everything below runs on the worker thread ----------------------------------------

    @staticmethod
    def _iptc() -> Any:
        import iptc  # a missing libxtables fails here, as a BackendError for the caller

        return iptc

    def _table(self, family: Family) -> Any:
        iptc = self._iptc()
        table = iptc.Table(iptc.Table.FILTER) if family == "ipv4" else iptc.Table6(iptc.Table6.FILTER)
        table.refresh()  # python-iptables caches the table object per process
        return table

    def _rule_cls(self, family: Family) -> Any:
        iptc = self._iptc()
        return iptc.Rule if family == "ipv4" else iptc.Rule6

    def _read_family(self, family: Family) -> ChainState:
        where = f"{family} filter {CHAIN}"
        tables = legacy_tables(family, self.proc_net)
        if tables is None or "filter" not in tables:
            return ChainState(where, False, False, "the legacy filter table is not loaded")
        table = self._table(family)
        if not table.is_chain(CHAIN):
            return ChainState(where, False, False, f"no chain {CHAIN}")
        iptc = self._iptc()
        rules = tuple(_parse(r, i) for i, r in enumerate(iptc.Chain(table, CHAIN).rules))
        jumps = [i for i, r in enumerate(iptc.Chain(table, "INPUT").rules) if r.target.name == CHAIN]
        first = bool(jumps) and jumps[0] == 0 and self._plain_jump(iptc.Chain(table, "INPUT").rules[0])
        if first and len(jumps) == 1:
            detail = f"INPUT rule 1 jumps to {CHAIN}"
        elif not jumps:
            detail = f"no jump from INPUT to {CHAIN}"
        else:
            detail = f"INPUT jumps to {CHAIN} at rule(s) {[i + 1 for i in jumps]}; want exactly rule 1"
        return ChainState(where, True, first and len(jumps) == 1, detail, rules)

    @staticmethod
    def _plain_jump(rule: Any) -> bool:
        return bool(rule.src in _ANY and rule.dst in _ANY and rule.protocol in ("ip", "all", None)
                    and not rule.matches and not rule.in_interface)

    def _read(self) -> FirewallState:
        try:
            return FirewallState(self.name, tuple(self._read_family(f) for f in host_families()))
        except Exception as exc:  # iptc raises plain Exceptions; a broken host must not crash the audit
            return FirewallState(self.name, error=f"{type(exc).__name__}: {exc}")

    def _build(self, family: Family, spec: RuleSpec) -> Any:
        rule = self._rule_cls(family)()
        rule.protocol = "tcp"
        if spec.source:
            rule.src = spec.source
        match = rule.create_match("tcp")
        match.dport = str(spec.port)
        target = rule.create_target({"pass": "RETURN", "drop": "DROP", "reject": "REJECT"}[spec.verdict or "drop"])
        if spec.verdict == "reject":
            target.reject_with = "tcp-reset"
        return rule

    def _write_family(self, family: Family, desired: Desired | None) -> bool:
        """Rebuild (desired) or delete (None) our chain and jump in one commit of the table."""
        iptc = self._iptc()
        tables = legacy_tables(family, self.proc_net)
        if desired is None and (tables is None or "filter" not in tables):
            return False
        with xtables_lock(self.lock_path):
            table = self._table(family)
            if desired is None and not table.is_chain(CHAIN):
                return False
            table.autocommit = False
            try:
                inp = iptc.Chain(table, "INPUT")
                for rule in [r for r in inp.rules if r.target.name == CHAIN]:
                    inp.delete_rule(rule)
                if table.is_chain(CHAIN):
                    iptc.Chain(table, CHAIN).flush()
                if desired is None:
                    table.delete_chain(CHAIN)
                else:
                    chain = iptc.Chain(table, CHAIN) if table.is_chain(CHAIN) else table.create_chain(CHAIN)
                    for spec in rules_for(desired, family):
                        chain.append_rule(self._build(family, spec))
                    jump = self._rule_cls(family)()
                    jump.create_target(CHAIN)
                    inp.insert_rule(jump, 0)
                table.commit()
            finally:
                table.autocommit = True
                table.refresh()
        return True

    def _write_all(self, desired: Desired | None, families: tuple[Family, ...]) -> bool:
        changed = False
        for fam in families:
            changed |= self._write_family(fam, desired)
        return changed

    # -- the Backend interface: hand over to the worker ------------------------------------

    def read_state(self) -> FirewallState:
        return on_worker(self._read)

    def _write(self, desired: Desired, state: FirewallState) -> None:
        want = self.desired_chains(desired)
        # Only the families that drifted are committed: an intact table is not rewritten.
        todo = tuple(fam for fam, have, w in zip(host_families(), state.chains, want, strict=True)
                     if not (have.exists and have.hooked and have.rules == w.rules))
        on_worker(self._write_all, desired, todo)

    def _delete(self, state: FirewallState) -> bool:
        return on_worker(self._write_all, None, host_families())
