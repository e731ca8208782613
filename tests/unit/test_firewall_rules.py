"""The firewall and listeners controls' pure parts: rendering, parsing back, evaluating.

No netfilter here (the integration tests own that, inside namespaces): these feed the controls
observations shaped exactly like the backends' and check the verdicts.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from nodeguard.controls.firewall import FirewallControl, FirewallObservation
from nodeguard.controls.listeners import Listener, ListenersControl, ListenersObservation
from nodeguard.host import HostRoot
from nodeguard.netfilter.model import ChainState, Desired, FirewallState, RuleSpec, rules_for
from nodeguard.netfilter.monitor import parse_newgen
from nodeguard.netfilter.nft import NftablesBackend, parse_rule, render_rule
from nodeguard.netfilter.select import Selection, writes_refused
from nodeguard.netfilter.xtables import XtablesLegacyBackend
from nodeguard.netfilter.xtables_nft import parse_rule_line, render_rule_line
from nodeguard.policy import FirewallPolicy, Policy, parse_policy
from tests.support.rules import POLICY_HEADER

POLICY = """
apiVersion: nodeguard.io/v1alpha1
kind: NodeGuardPolicy
spec:
  controls:
    firewall:
      ports:
        - {port: 2376, allow: [192.0.2.0/28, "2001:db8:1::/64"], action: reject}
        - {port: 2375, allow: []}
"""


def policy(text: str = POLICY) -> Policy:
    return parse_policy(text if "apiVersion" in text else POLICY_HEADER + text)


def fw(p: Policy) -> FirewallPolicy:
    return p.spec.controls.firewall


def test_rules_are_rendered_per_family_with_the_verdict_last() -> None:
    d = Desired.from_policy(fw(policy()))
    assert rules_for(d, "ipv4") == (RuleSpec(2376, "pass", "192.0.2.0/28"), RuleSpec(2376, "reject"),
                                    RuleSpec(2375, "drop"))
    assert rules_for(d, "ipv6") == (RuleSpec(2376, "pass", "2001:db8:1::/64"), RuleSpec(2376, "reject"),
                                    RuleSpec(2375, "drop"))
    # One inet chain: both families' sources, then one verdict for both.
    assert rules_for(d, None) == (RuleSpec(2376, "pass", "192.0.2.0/28"), RuleSpec(2376, "pass", "2001:db8:1::/64"),
                                  RuleSpec(2376, "reject"), RuleSpec(2375, "drop"))


def _match(proto: str, field: str, right: object) -> dict[str, object]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": field}}, "right": right}}


def test_nft_json_is_read_back_as_our_rules_and_anything_else_as_foreign() -> None:
    dport = _match("tcp", "dport", 2376)
    assert parse_rule([dport, _match("ip", "saddr", {"prefix": {"addr": "192.0.2.0", "len": 28}}),
                       {"accept": None}]) == RuleSpec(2376, "pass", "192.0.2.0/28")
    assert parse_rule([dport, _match("ip6", "saddr", "2001:db8::5"), {"accept": None}]) == \
        RuleSpec(2376, "pass", "2001:db8::5/128")
    assert parse_rule([dport, {"reject": {"type": "tcp reset"}}]) == RuleSpec(2376, "reject")
    assert parse_rule([dport, {"drop": None}]) == RuleSpec(2376, "drop")
    # A counter, another match, an accept without a source, a drop with one: not ours.
    for exprs in ([dport, {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}],
                  [dport, _match("meta", "iifname", "eth0"), {"drop": None}],
                  [dport, {"accept": None}],
                  [dport, _match("ip", "saddr", "192.0.2.1"), {"drop": None}]):
        spec = parse_rule(exprs)
        assert spec.foreign and spec.raw, exprs
    assert render_rule(RuleSpec(2376, "pass", "2001:db8:1::/64")) == "tcp dport 2376 ip6 saddr 2001:db8:1::/64 accept"
    assert render_rule(RuleSpec(2376, "reject")) == "tcp dport 2376 reject with tcp reset"


def test_iptables_save_lines_round_trip() -> None:
    for spec in (RuleSpec(2376, "pass", "192.0.2.0/28"), RuleSpec(2376, "reject"), RuleSpec(2375, "drop")):
        line = render_rule_line(spec)
        assert parse_rule_line(line.split()[2:]) == spec, line
    assert parse_rule_line(["-p", "tcp", "-m", "tcp", "--dport", "2376", "-j", "ACCEPT"]).foreign
    assert parse_rule_line(["-i", "eth0", "-p", "tcp", "-m", "tcp", "--dport", "2376", "-j", "DROP"]).foreign


def nft_observation(rules: tuple[RuleSpec, ...], *, exists: bool = True, hooked: bool = True) -> FirewallObservation:
    backend = NftablesBackend()
    sel = Selection("auto", "nftables", "test", backend, {})
    return FirewallObservation(sel, FirewallState("nftables", (ChainState("inet nodeguard input", exists, hooked,
                                                                          "detail", rules),)))


def statuses(findings: list) -> dict[tuple[str, str | None], str]:  # type: ignore[type-arg]
    return {(f.rule, f.subject): f.status.value for f in findings}


def test_intact_rules_pass_every_rule() -> None:
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
    assert set(got.values()) == {"pass"}
    assert set(got) == {("backend-available", None), ("jump-present", None), ("chain-intact", None),
                        ("port-restricted", "2376"), ("port-restricted", "2375"), ("plaintext-blocked", "2375")}


def test_a_missing_rule_fails_its_port_only() -> None:
    p = policy()
    rules = tuple(r for r in rules_for(Desired.from_policy(fw(p)), None) if r.port != 2375)
    got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
    assert got[("port-restricted", "2375")] == "fail"
    assert got[("port-restricted", "2376")] == "pass"
    assert got[("chain-intact", None)] == "fail"
    assert got[("plaintext-blocked", "2375")] == "fail"


def test_a_foreign_accept_in_our_chain_fails_every_port() -> None:
    p = policy()
    rules = (RuleSpec(None, None, raw="tcp dport 2376 accept"), *rules_for(Desired.from_policy(fw(p)), None))
    got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
    assert got[("port-restricted", "2376")] == "fail" and got[("port-restricted", "2375")] == "fail"
    assert got[("chain-intact", None)] == "fail"


def test_an_unhooked_chain_protects_nothing() -> None:
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    got = statuses(FirewallControl().evaluate(nft_observation(rules, hooked=False), p))
    assert got[("jump-present", None)] == "fail"
    assert got[("port-restricted", "2376")] == "fail"
    assert got[("chain-intact", None)] == "pass"  # the rules are right; they just never run


def test_legacy_checks_both_families() -> None:
    p = policy()
    d = Desired.from_policy(fw(p))
    backend = XtablesLegacyBackend.__new__(XtablesLegacyBackend)  # rendering only: no worker, no lock
    v4, v6 = backend.desired_chains(d)
    broken_v6 = ChainState(v6.where, True, True, "ok", tuple(r for r in v6.rules if r.source is None))
    obs = FirewallObservation(Selection("iptables-legacy", "iptables-legacy", "test", backend, {}),
                              FirewallState("iptables-legacy", (v4, broken_v6)))
    got = statuses(FirewallControl().evaluate(obs, p))
    assert got[("port-restricted", "2376")] == "fail"  # IPv6 lost its allowed source
    assert got[("port-restricted", "2375")] == "pass"


def test_no_backend_is_a_finding_not_a_traceback() -> None:
    p = policy()
    sel = Selection("auto", None, "no netfilter backend: nft missing; no legacy xtables", None, {})
    findings = FirewallControl().evaluate(FirewallObservation(sel, None), p)
    got = statuses(findings)
    assert got[("backend-available", None)] == "fail"
    assert {s for (rule, _), s in got.items() if rule != "backend-available"} == {"skip"}
    assert "no netfilter backend" in findings[0].message
    unreadable = FirewallObservation(Selection("auto", "nftables", "x", NftablesBackend(), {}),
                                     FirewallState("nftables", error="Operation not permitted"))
    assert statuses(FirewallControl().evaluate(unreadable, p))[("backend-available", None)] == "fail"


def test_a_policy_that_opens_2375_fails_plaintext_blocked() -> None:
    for text in ("spec: {controls: {firewall: {ports: [{port: 2376, allow: []}]}}}",
                 "spec: {controls: {firewall: {ports: [{port: 2375, allow: [192.0.2.0/24]}]}}}"):
        p = policy(text)
        rules = rules_for(Desired.from_policy(fw(p)), None)
        got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
        assert got[("plaintext-blocked", "2375")] == "fail", text
        assert got[("chain-intact", None)] == "pass"


def listener(addr: str, port: int, pid: int, family: int = socket.AF_INET6, comm: str = "dockerd") -> Listener:
    return Listener(family, addr, port, 1000 + port, 0, False, (pid,), comm)


def test_listeners_plaintext_wildcard_and_unfirewalled() -> None:
    p = policy()
    obs = ListenersObservation([listener("::", 2376, 42), listener("127.0.0.1", 2375, 7, socket.AF_INET, "nc")],
                               daemon_pid=42, daemon_tls=True, firewalled_ports={2375})
    got = statuses(ListenersControl().evaluate(obs, p))
    assert got == {("plaintext-listener", "127.0.0.1:2375"): "fail", ("wildcard-listener", "[::]:2376"): "fail",
                   ("listener-firewalled", "[::]:2376"): "fail"}
    # A daemon without TLS: every TCP listener of it is plaintext, whatever its port.
    obs = ListenersObservation([listener("192.0.2.1", 2376, 42, socket.AF_INET)], daemon_pid=42, daemon_tls=False,
                               firewalled_ports={2376})
    got = statuses(ListenersControl().evaluate(obs, p))
    assert got == {("plaintext-listener", "192.0.2.1:2376"): "fail", ("wildcard-listener", None): "pass",
                   ("listener-firewalled", None): "pass"}


def test_newgen_notification_is_parsed() -> None:
    def attr(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">I", 77)) + attr(2, struct.pack(">I", 4242)) + \
        attr(3, b"nft\0")
    msg = struct.pack("=IHHII", 16 + len(body), (10 << 8) | 15, 0, 0, 0) + body
    other = struct.pack("=IHHII", 20, (10 << 8) | 2, 0, 0, 0) + b"\0" * 4  # a DELTABLE: not a generation
    assert parse_newgen(other + msg) == [(77, 4242, "nft")]


def test_a_sandbox_root_in_the_machines_own_namespace_never_writes(tmp_path: Path) -> None:
    # pytest runs in this machine's network namespace: a sandbox root here must refuse writes.
    why = writes_refused(HostRoot(tmp_path))
    assert why is not None and "machine's own network namespace" in why
    assert writes_refused(HostRoot("/")) is None


def test_netlink_constants_match_pyroute2() -> None:
    from pyroute2.netlink import NETLINK_NETFILTER
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, NFNLGRP_NFTABLES
    from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_NEWGEN

    from nodeguard.netfilter import monitor

    assert (monitor.NETLINK_NETFILTER, monitor.NFNL_SUBSYS_NFTABLES, monitor.NFNLGRP_NFTABLES,
            monitor.NFT_MSG_NEWGEN) == (NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, NFNLGRP_NFTABLES, NFT_MSG_NEWGEN)
