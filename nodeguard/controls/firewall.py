"""firewall: the daemon's TCP ports reachable only from the networks the policy allows.

Per policy port: allowed CIDRs pass, everyone else is dropped (or rejected), on the input path,
for IPv4 and IPv6, in a table or chain nodeguard owns and nothing else. Docker's DOCKER-USER
chain hangs off FORWARD and never sees traffic to the daemon's own port: that goes through
INPUT, which is where these rules sit. The rules outlive the agent: nothing here removes them
except `nodeguard firewall remove`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.netfilter.backend import BackendError, chains_match
from nodeguard.netfilter.model import ChainState, Desired, FirewallState
from nodeguard.netfilter.observed import FirewallObservation
from nodeguard.netfilter.select import writes_refused
from nodeguard.observations import Surface
from nodeguard.policy import FirewallPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

PLAINTEXT_PORT = 2375


def _settings(policy: Policy) -> FirewallPolicy:
    return policy.spec.controls.firewall


def _describe_port(port: int, allow: tuple[str, ...], action: str) -> str:
    if not allow:
        return f"tcp/{port} closed to every source ({action})"
    return f"tcp/{port} reachable only from {', '.join(allow)} (others: {action})"


class FirewallControl(Control):
    name: ClassVar[str] = "firewall"
    changes_network: ClassVar[bool] = True
    policy_key: ClassVar[str] = "firewall"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("backend-available", "a netfilter backend can hold nodeguard's rules", Severity.HIGH, None, False),
        Rule("backend-unchanged", "the host's netfilter still points to the backend chosen at start", Severity.HIGH,
             None, False),
        Rule("table-owner", "no other process owns nodeguard's nf_tables table (flags owner)", Severity.CRITICAL,
             None, True),
        Rule("jump-present", "nodeguard's chain is hooked first on the input path", Severity.CRITICAL, None, True),
        Rule("chain-intact", "nodeguard's chain holds exactly the policy's rules", Severity.HIGH, None, True),
        Rule("port-restricted", "a daemon port is reachable only from allowed networks", Severity.CRITICAL, "2.7",
             True),
        Rule("plaintext-blocked", "the plaintext Docker port 2375 is closed to everyone", Severity.CRITICAL, "2.7",
             True),
    )

    def observe(self, ctx: Context) -> FirewallObservation:
        # Read once per pass, shared with the listeners control (which ports our chains close).
        return ctx.netfilter

    def evaluate(self, observed: FirewallObservation, policy: Policy) -> list[Finding]:
        sel, state = observed.selection, observed.state
        details: dict[str, Any] = {"backend": sel.name, "requested": sel.requested, "reason": sel.reason,
                                   "probes": sel.probes}
        if sel.backend is None or state is None:
            return [self.finding("backend-available", Status.FAIL,
                                 f"no firewall backend for this host: {sel.reason}", observed=None,
                                 expected=sel.requested, details=details),
                    *self.skip_all("no firewall backend", [r.id for r in self.rules if r.id != "backend-available"])]
        details["where"] = observed.where
        if state.error is not None:
            return [self.finding("backend-available", Status.FAIL,
                                 f"{sel.name} cannot read netfilter: {state.error}", observed=state.error,
                                 expected=sel.name, details=details),
                    *self.skip_all(f"{sel.name} cannot read netfilter",
                                   [r.id for r in self.rules if r.id != "backend-available"])]
        out = [self.finding("backend-available", Status.PASS, f"{sel.name} ({sel.reason}): {observed.where}",
                            observed=sel.name, expected=sel.requested, details=details),
               self._unchanged(observed), self._owner(state, observed.held)]
        desired = Desired.from_policy(_settings(policy))
        want = sel.backend.desired_chains(desired)
        have = state.chains

        unhooked = [c for c in have if not (c.exists and c.hooked)]
        out.append(self.finding(
            "jump-present", Status.FAIL if unhooked else Status.PASS,
            "; ".join(f"{c.where}: {c.hook_detail}" for c in unhooked) if unhooked
            else "; ".join(f"{c.where}: {c.hook_detail}" for c in have),
            observed={c.where: c.hook_detail for c in have}, expected="hooked first on the input path"))

        drift: dict[str, Any] = {}
        for h, w in zip(have, want, strict=True):
            if h.rules != w.rules:
                missing = [r.render() for r in w.rules if r not in h.rules]
                extra = [r.render() for r in h.rules if r not in w.rules]
                drift[h.where] = {"missing": missing, "unexpected": extra,
                                  "order": "differs" if not missing and not extra else "same"}
        out.append(self.finding(
            "chain-intact", Status.FAIL if drift else Status.PASS,
            f"nodeguard's rules differ from the policy in {', '.join(drift)}" if drift
            else f"{len(want)} chain(s) hold exactly the policy's {sum(len(w.rules) for w in want)} rule(s)",
            observed={h.where: [r.render() for r in h.rules] for h in have},
            expected={w.where: [r.render() for r in w.rules] for w in want}, details={"drift": drift}))

        for p in desired.ports:
            bad = [h.where for h, w in zip(have, want, strict=True)
                   if not (h.exists and h.hooked) or h.for_port(p.port) != w.for_port(p.port)]
            wanted = _describe_port(p.port, p.allow, p.action)
            out.append(self.finding(
                "port-restricted", Status.FAIL if bad else Status.PASS,
                f"tcp/{p.port} is not restricted as the policy says in {', '.join(bad)}" if bad else wanted,
                observed={h.where: [r.render() for r in h.for_port(p.port)] for h in have},
                expected=wanted, subject=str(p.port)))

        out.append(self._plaintext(desired, have, want))
        return out

    def _unchanged(self, observed: FirewallObservation) -> Finding:
        sel, now = observed.selection, observed.now
        if now is None:
            return self.finding("backend-unchanged", Status.PASS, f"{sel.name}, chosen at start, is still the host's",
                                observed=sel.name, expected=sel.name)
        return self.finding(
            "backend-unchanged", Status.FAIL,
            f"the host's netfilter now points to {now.name or 'no backend'} ({now.reason}); nodeguard keeps "
            f"{sel.name}, chosen at start ({sel.reason}), and does not follow a switch it did not make",
            observed=now.name, expected=sel.name, details={"now": now.reason, "at_start": sel.reason})

    def _owner(self, state: FirewallState, held: bool) -> Finding:
        owner = state.owner
        present = any(c.exists for c in state.chains)
        if held and owner is None and present:
            return self.finding("table-owner", Status.FAIL,
                                "nodeguard's table is owned by nobody: any process may change or delete it "
                                "until this agent takes it (flags owner, persist)",
                                observed=None, expected="this agent", details={"flags": list(state.table_flags)})
        if owner is None or owner.mine or (owner.agent and not held):
            who = "nobody" if owner is None else "this agent" if owner.mine else f"the nodeguard agent {owner.render()}"
            return self.finding("table-owner", Status.PASS, f"{who} owns nodeguard's table",
                                observed=owner.render() if owner else None, expected="nodeguard or nobody",
                                details={"flags": list(state.table_flags)})
        pid = owner.pids[0] if owner.pids else None
        who = f"another nodeguard agent, {owner.render()}," if owner.agent else owner.render()
        return self.finding(
            "table-owner", Status.FAIL,
            f"{who} owns nodeguard's table (nf_tables flags owner): every write by anyone else fails "
            f"with EPERM until it exits, and then the kernel drops the table unless it is persistent",
            observed={"pid": pid, "pids": list(owner.pids), "process": list(owner.names), "portid": owner.portid},
            expected="nodeguard or nobody", subject=str(pid) if pid is not None else f"portid {owner.portid}",
            details={"flags": list(state.table_flags)})

    def _plaintext(self, desired: Desired, have: tuple[ChainState, ...], want: tuple[ChainState, ...]) -> Finding:
        p = desired.port(PLAINTEXT_PORT)
        if p is None or p.allow:
            opened = "is not in the policy" if p is None else f"is allowed from {list(p.allow)} by the policy"
            return self.finding("plaintext-blocked", Status.FAIL,
                                f"tcp/{PLAINTEXT_PORT} {opened}: a plaintext daemon port must be closed to everyone",
                                observed=list(p.allow) if p else None, expected="2375 with allow: []",
                                subject=str(PLAINTEXT_PORT))
        ok = all(chains_match(h, w) or (h.exists and h.hooked and h.for_port(PLAINTEXT_PORT) ==
                                         w.for_port(PLAINTEXT_PORT)) for h, w in zip(have, want, strict=True))
        return self.finding("plaintext-blocked", Status.PASS if ok else Status.FAIL,
                            f"tcp/{PLAINTEXT_PORT} is closed to everyone" if ok
                            else f"tcp/{PLAINTEXT_PORT} is not blocked on every address family",
                            observed={h.where: [r.render() for r in h.for_port(PLAINTEXT_PORT)] for h in have},
                            expected=f"tcp/{PLAINTEXT_PORT} {p.action} for every source", subject=str(PLAINTEXT_PORT))

    def remediate_many(self, ctx: Context, findings: Sequence[Finding], observed: Any) -> list[Outcome]:
        """Every failing firewall rule is fixed by the same write: make it once, report it on each."""
        outcomes: list[Outcome] = []
        try:
            for f in findings:
                outcome = self.remediate(ctx, f, observed)
                if outcomes and outcome.ok and not outcome.changed and any(o.changed for o in outcomes):
                    outcome = Outcome(True, True, next(o for o in outcomes if o.changed).message, outcome.details)
                outcomes.append(outcome)
        finally:
            # Whatever was written, the rest of the pass (the listeners control) dumps netfilter again.
            ctx.observed.forget(Surface.NETFILTER)
        return outcomes

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        assert isinstance(observed, FirewallObservation)
        backend = observed.selection.backend
        if backend is None:
            return Outcome(False, False, f"no firewall backend: {observed.selection.reason}")
        refused = writes_refused(ctx.host, ctx.proc)
        if refused is not None:
            return Outcome(False, False, refused)
        settings = _settings(ctx.policy)
        if finding.rule == "plaintext-blocked":
            p = next((x for x in settings.ports if x.port == PLAINTEXT_PORT), None)
            if p is None or p.allow:
                return Outcome(False, False, "the policy itself opens tcp/2375; only a policy change closes it")
        desired = Desired.from_policy(settings)
        try:
            changed = backend.apply(desired)
        except (BackendError, OSError) as exc:
            return Outcome(False, False, f"{backend.name} could not apply the rules: {exc}")
        except Exception as exc:  # python-iptables raises bare IPTCError/Exception
            return Outcome(False, False, f"{backend.name} could not apply the rules: {type(exc).__name__}: {exc}")
        where = backend.describe()
        if not changed:
            return Outcome(False, True, f"rules already in place in {where}")
        families = sorted({ipaddress.ip_network(c).version for p in desired.ports for c in p.allow})
        return Outcome(True, True, f"rules for {[p.port for p in desired.ports]} restored in {where}",
                       {"backend": backend.name, "allow_families": families})
