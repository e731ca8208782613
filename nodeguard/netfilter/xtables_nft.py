"""The iptables-nft backend: the same NODEGUARD chain, in iptables-nft's filter tables.

For hosts whose operators audit with `iptables -S` on an nf_tables system and want to see
nodeguard's rules there. Driven through `iptables-nft-save`/`iptables-nft-restore --noflush`:
a restore is one nf_tables transaction (atomic, no xtables lock needed) that names only our
chain and our jump, so nobody else's rules are read back into the kernel.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

from nodeguard.netfilter.backend import Backend, BackendError, run_tool
from nodeguard.netfilter.model import ChainState, Desired, Family, FirewallState, RuleSpec, normalise_cidr, rules_for
from nodeguard.netfilter.xtables import CHAIN, host_families

_TOOLS = {"ipv4": ("iptables-nft-save", "iptables-nft-restore"),
          "ipv6": ("ip6tables-nft-save", "ip6tables-nft-restore")}
_LIST = {"ipv4": "iptables-nft", "ipv6": "ip6tables-nft"}
_NFT_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
INCOMPATIBLE = "incompatible, use 'nft' tool"
_TARGETS = {"RETURN": "pass", "DROP": "drop", "REJECT": "reject"}


def parse_rule_line(args: list[str]) -> RuleSpec:
    """`-s X -p tcp -m tcp --dport P -j T [--reject-with tcp-reset]` (after `-A CHAIN`) -> RuleSpec.

    Never raises: whatever is not one of nodeguard's own shapes (`! -s 10.0.0.0/8`, a
    non-contiguous mask, a match or target we never write) is a foreign rule, kept as its text.
    """
    try:
        return _parse_words(args)
    except ValueError:
        return RuleSpec(None, None, raw=" ".join(args))


def _parse_words(args: list[str]) -> RuleSpec:
    raw = RuleSpec(None, None, raw=" ".join(args))
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        if i + 1 >= len(args):
            return raw
        key, value = args[i], args[i + 1]
        if key in opts and not (key == "-m" and value == "tcp"):
            return raw
        opts[key] = value
        i += 2
    extra = set(opts) - {"-s", "-p", "-m", "--dport", "-j", "--reject-with"}
    verdict = _TARGETS.get(opts.get("-j", ""))
    if extra or opts.get("-p") != "tcp" or opts.get("-m", "tcp") != "tcp" or verdict is None \
            or not opts.get("--dport", "").isdigit():
        return raw
    if (verdict == "reject") != ("--reject-with" in opts) or opts.get("--reject-with", "tcp-reset") != "tcp-reset":
        return raw
    source = normalise_cidr(opts["-s"]) if "-s" in opts else None
    if (source is not None) != (verdict == "pass"):
        return raw
    return RuleSpec(int(opts["--dport"]), verdict, source)  # type: ignore[arg-type]


def render_rule_line(spec: RuleSpec) -> str:
    src = f"-s {spec.source} " if spec.source else ""
    target = {"pass": "RETURN", "drop": "DROP", "reject": "REJECT --reject-with tcp-reset"}[spec.verdict or "drop"]
    return f"-A {CHAIN} {src}-p tcp -m tcp --dport {spec.port} -j {target}"


class XtablesNftBackend(Backend):
    name = "iptables-nft"

    def describe(self) -> str:
        return f"chain {CHAIN} in iptables-nft's filter tables (ip and ip6), jumped to from INPUT rule 1"

    def desired_chains(self, desired: Desired) -> tuple[ChainState, ...]:
        return tuple(ChainState(f"{fam} filter {CHAIN} (iptables-nft)", True, True, f"INPUT rule 1 jumps to {CHAIN}",
                                rules_for(desired, fam)) for fam in host_families())

    @staticmethod
    def _run(tool: str, stdin: str | None = None, *args: str) -> str:
        path = shutil.which(tool)
        if path is None:
            raise BackendError(f"{tool} is not installed")
        rc, out, err = run_tool([path, *args], stdin)
        if rc != 0:
            raise BackendError(f"{tool} failed ({rc}): {err.strip()}")
        return out

    def _read_family(self, family: Family) -> ChainState:
        where = f"{family} filter {CHAIN} (iptables-nft)"
        text = self._run(_TOOLS[family][0], None, "-t", "filter")
        if INCOMPATIBLE in text:
            return self._read_incompatible(family, where)
        exists = False
        jumps: list[int] = []
        jump_specs: list[str] = []
        input_index = 0
        rules: list[RuleSpec] = []
        for line in text.splitlines():
            if line.startswith(f":{CHAIN} "):
                exists = True
            elif line.startswith("-A INPUT "):
                try:
                    words = shlex.split(line)[2:]
                except ValueError:
                    words = line.split()[2:]
                if words[-2:] == ["-j", CHAIN]:
                    jumps.append(input_index if words == ["-j", CHAIN] else -1)
                    jump_specs.append(shlex.join(words))
                input_index += 1
            elif line.startswith(f"-A {CHAIN} "):
                try:
                    words = shlex.split(line)[2:]
                except ValueError:  # unbalanced quotes in a comment: still a rule, not ours
                    words = line.split()[2:]
                rules.append(parse_rule_line(words))
        if not exists:
            return ChainState(where, False, False, f"no chain {CHAIN}")
        hooked = jumps == [0]
        detail = f"INPUT rule 1 jumps to {CHAIN}" if hooked else (
            f"no jump from INPUT to {CHAIN}" if not jumps else f"INPUT jumps to {CHAIN} but not (only) as rule 1")
        return ChainState(where, True, hooked, detail, tuple(rules), tuple(jump_specs))

    def _read_incompatible(self, family: Family, where: str) -> ChainState:
        """The filter table holds a rule iptables-nft cannot print (written with `nft`, e.g.
        `th dport 2375 ct state new accept`), and iptables-nft-save then prints no rule at all.

        Our chain is listed alone (`iptables-nft -S NODEGUARD`): when it is the incompatible one,
        that rule is foreign and the chain is rewritten (a restore still works); the jumps from
        INPUT are read from nft's JSON of that one chain.
        """
        path = shutil.which(_LIST[family])
        if path is None:
            raise BackendError(f"{_LIST[family]} is not installed")
        proc = subprocess.run([path, "-t", "filter", "-S", CHAIN], capture_output=True, text=True, timeout=30,
                              check=False)
        rules: list[RuleSpec] = []
        if proc.returncode != 0 and INCOMPATIBLE in proc.stderr:
            rules.append(RuleSpec(None, None, raw=f"a rule iptables-nft cannot show (nft list chain "
                                                  f"{_NFT_FAMILY[family]} filter {CHAIN})"))
        elif proc.returncode != 0:
            return ChainState(where, False, False, f"no chain {CHAIN}")
        else:
            for line in proc.stdout.splitlines():
                if line.startswith(f"-A {CHAIN} "):
                    try:
                        words = shlex.split(line)[2:]
                    except ValueError:
                        words = line.split()[2:]
                    rules.append(parse_rule_line(words))
        jumps = self._nft_jumps(family)
        hooked = jumps == [0]
        detail = f"INPUT rule 1 jumps to {CHAIN}" if hooked else (
            f"no jump from INPUT to {CHAIN}" if not jumps else f"INPUT jumps to {CHAIN} but not (only) as rule 1")
        specs = tuple(f"-j {CHAIN}" for i in jumps if i >= 0)
        return ChainState(where, True, hooked, detail, tuple(rules), specs)

    def _nft_jumps(self, family: Family) -> list[int]:
        """Positions of INPUT's jumps to our chain (-1: a jump with conditions), from nft's JSON."""
        from nodeguard.netfilter.libnft import NftError, shared_nft

        try:
            listing = json.loads(shared_nft().run(f"list chain {_NFT_FAMILY[family]} filter INPUT", json=True))
        except (NftError, ValueError) as exc:
            raise BackendError(f"cannot read INPUT of {_NFT_FAMILY[family]} filter: {exc}") from exc
        jumps: list[int] = []
        rules = [item["rule"] for item in listing.get("nftables", []) if "rule" in item]
        for i, rule in enumerate(rules):
            exprs = [e for e in rule.get("expr", []) if "counter" not in e]
            if any(isinstance(e.get("jump"), dict) and e["jump"].get("target") == CHAIN for e in exprs):
                jumps.append(i if len(exprs) == 1 else -1)
        return jumps

    def read_state(self) -> FirewallState:
        try:
            return FirewallState(self.name, tuple(self._read_family(f) for f in host_families()))
        except (BackendError, OSError, subprocess.SubprocessError, ValueError) as exc:
            return FirewallState(self.name, error=str(exc))

    def _script(self, have: ChainState, desired: Desired | None, family: Family) -> str:
        lines = ["*filter"]
        # With --noflush a chain line flushes that chain only (and creates it when missing).
        lines.append(f":{CHAIN} - [0:0]")
        lines += [f"-D INPUT {spec}" for spec in have.jumps]
        if desired is None:
            lines.append(f"-X {CHAIN}")
        else:
            lines.append(f"-I INPUT 1 -j {CHAIN}")
            lines += [render_rule_line(r) for r in rules_for(desired, family)]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _commit(self, family: Family, script: str) -> None:
        self._run(_TOOLS[family][1], script, "--noflush")

    def _write(self, desired: Desired, state: FirewallState) -> None:
        for family, have, want in zip(host_families(), state.chains, self.desired_chains(desired), strict=True):
            if not (have.exists and have.hooked and have.rules == want.rules):
                self._commit(family, self._script(have, desired, family))

    def _delete(self, state: FirewallState) -> bool:
        changed = False
        for family, have in zip(host_families(), state.chains, strict=True):
            if have.exists:
                self._commit(family, self._script(have, None, family))
                changed = True
        return changed
