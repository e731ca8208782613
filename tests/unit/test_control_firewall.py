"""The firewall control's pure parts: rendering, parsing back, evaluating (the listeners control,
which reads the same netfilter observation, is tested in test_control_listeners.py).

No netfilter here (the integration tests own that, inside namespaces): these feed the controls
observations shaped exactly like the backends' and check the verdicts.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from nodeguard.controls.firewall import FirewallControl, FirewallObservation
from nodeguard.host import HostRoot
from nodeguard.netfilter import nftnl
from nodeguard.netfilter.model import ChainState, Desired, FirewallState, RuleSpec, TableOwner, rules_for
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


def nft_observation(rules: tuple[RuleSpec, ...], *, exists: bool = True, hooked: bool = True,
                    owner: TableOwner | None = None, now: Selection | None = None) -> FirewallObservation:
    backend = NftablesBackend()
    sel = Selection("auto", "nftables", "test", backend, {})
    return FirewallObservation(sel, FirewallState("nftables", (ChainState("inet nodeguard input", exists, hooked,
                                                                          "detail", rules),), owner=owner), now)


def statuses(findings: list) -> dict[tuple[str, str | None], str]:  # type: ignore[type-arg]
    return {(f.rule, f.subject): f.status.value for f in findings}


def test_intact_rules_pass_every_rule() -> None:
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
    assert set(got.values()) == {"pass"}
    assert set(got) == {("backend-available", None), ("backend-unchanged", None), ("table-owner", None),
                        ("jump-present", None), ("chain-intact", None),
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


def test_rules_nodeguard_cannot_parse_are_foreign_never_an_exception() -> None:
    # iptables-nft-save lines: an inverted source, a non-contiguous mask, an unknown target.
    for words in (["!", "-s", "10.0.0.0/8", "-p", "tcp", "-m", "tcp", "--dport", "2375", "-j", "ACCEPT"],
                  ["-s", "198.0.0.0/255.0.0.1", "-j", "ACCEPT"],
                  ["-s", "198.0.0.0/255.0.0.1", "-p", "tcp", "-m", "tcp", "--dport", "2375", "-j", "RETURN"],
                  ["-p", "tcp", "-m", "tcp", "--dport", "2375", "-j", "NFQUEUE", "--queue-num", "1"],
                  ["-j"], []):
        spec = parse_rule_line(words)
        assert spec.foreign and spec.raw is not None, words
    # nft JSON: an inverted match, a masked address, garbage in place of expressions.
    for exprs in ([{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                              "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"accept": None}],
                  [{"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "ip", "field": "saddr"}},
                                                         "255.0.0.1"]}, "right": "198.0.0.0"}}, {"accept": None}],
                  [_match("tcp", "dport", 2375), _match("ip", "saddr", "198.0.0.0/255.0.0.1"), {"accept": None}],
                  [_match("tcp", "dport", 2375), _match("ip", "saddr", {"prefix": {"addr": "x"}}), {"accept": None}],
                  ["not a dict", 5], None):
        spec = parse_rule(exprs)
        assert spec.foreign and spec.raw is not None, exprs


def test_a_foreign_rule_keeps_every_port_evaluated_and_failing() -> None:
    p = policy()
    rules = (RuleSpec(None, None, raw="! -s 10.0.0.0/8 -j ACCEPT"), *rules_for(Desired.from_policy(fw(p)), None))
    got = statuses(FirewallControl().evaluate(nft_observation(rules), p))
    assert got[("backend-available", None)] == "pass"
    assert got[("port-restricted", "2376")] == got[("port-restricted", "2375")] == "fail"
    assert got[("plaintext-blocked", "2375")] == got[("chain-intact", None)] == "fail"
    assert "skip" not in got.values()


def test_a_foreign_table_owner_is_a_critical_finding_naming_its_pid() -> None:
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    squatter = TableOwner(4242, (4242,), ("nft",), mine=False)
    findings = FirewallControl().evaluate(nft_observation(rules, owner=squatter), p)
    owner = next(f for f in findings if f.rule == "table-owner")
    assert owner.status.value == "fail" and owner.severity.value == "critical"
    assert owner.subject == "4242" and "nft[4242]" in owner.message
    assert owner.observed == {"pid": 4242, "pids": [4242], "process": ["nft"], "portid": 4242}
    ours = TableOwner(7, (os.getpid(),), ("nodeguard",), mine=True)
    findings = FirewallControl().evaluate(nft_observation(rules, owner=ours), p)
    assert next(f for f in findings if f.rule == "table-owner").status.value == "pass"


def test_a_backend_that_moved_under_auto_is_a_finding_and_not_followed() -> None:
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    moved = Selection("auto", "iptables-legacy", "nodeguard's own chain NODEGUARD is already in legacy xtables")
    findings = FirewallControl().evaluate(nft_observation(rules, now=moved), p)
    f = next(f for f in findings if f.rule == "backend-unchanged")
    assert f.status.value == "fail" and f.observed == "iptables-legacy" and f.expected == "nftables"
    assert "keeps nftables" in f.message
    # The rules are judged in the backend kept since start, not in the one the host now suggests.
    assert next(f for f in findings if f.rule == "chain-intact").status.value == "pass"


def _table_msg(name: str, flags: int, owner: int | None) -> bytes:
    def attr(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    body = struct.pack("=BBH", 1, 0, 0) + attr(1, name.encode() + b"\0") + attr(2, struct.pack(">I", flags))
    if owner is not None:
        body += attr(7, struct.pack(">I", owner))
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 0, 2, 1, 0) + body


def test_gettable_dump_gives_flags_and_owner() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + struct.pack("=i", 0)
    tables, finished, err = nftnl.parse_tables(_table_msg("nodeguard", 0x6, 9000) + _table_msg("other", 0, None) + done)
    assert finished and err == 0
    assert tables[0] == nftnl.TableInfo(1, "nodeguard", 0x6, 9000)
    assert tables[0].owned and tables[0].persistent and tables[0].flag_names() == ["owner", "persist"]
    assert tables[1].owner_portid is None and not tables[1].owned
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    assert nftnl.parse_tables(error) == ([], True, 1)


def test_a_netlink_portid_is_mapped_to_its_process(tmp_path: Path) -> None:
    """/proc/net/netlink and /proc/PID/fd as the kernel lays them out, in a temporary folder."""
    (tmp_path / "self" / "net").mkdir(parents=True)
    (tmp_path / "self" / "net" / "netlink").write_text(
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "00000000c6252c05 0   8795       00000000 0        0        0     2        0        11086\n"
        "0000000094750c64 12  8795       00000000 0        0        0     2        0        11168\n")
    for pid, target in ((8795, "socket:[11168]"), (8800, "socket:[11086]"), (8801, "pipe:[11168]")):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "fd" / "3").symlink_to(target)
    assert nftnl.netlink_inode(8795, tmp_path / "self" / "net") == 11168
    assert nftnl.owner_pids(8795, tmp_path) == [8795]
    assert nftnl.owner_pids(1, tmp_path) == []
    # A holder whose descriptors we may not read (no CAP_SYS_PTRACE): the portid names the process.
    (tmp_path / "8795" / "fd" / "3").unlink()
    assert nftnl.owner_pids(8795, tmp_path) == [8795]


def test_the_agent_holding_the_table_is_not_a_squatter(tmp_path: Path) -> None:
    for pid, argv in ((10, [b"/usr/bin/python3", b"-m", b"nodeguard", b"run", b"--host-root", b"/host"]),
                      (11, [b"/usr/local/bin/nodeguard", b"run"]),
                      (12, [b"/usr/local/bin/nodeguard", b"check"]),
                      (13, [b"nft", b"-i"])):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    assert [nftnl.is_nodeguard_agent(p, tmp_path) for p in (10, 11, 12, 13, 14)] == [True, True, False, False, False]
    p = policy()
    rules = rules_for(Desired.from_policy(fw(p)), None)
    agent = TableOwner(77, (77,), ("nodeguard",), mine=False, agent=True)
    findings = FirewallControl().evaluate(nft_observation(rules, owner=agent), p)
    assert next(f for f in findings if f.rule == "table-owner").status.value == "pass"
