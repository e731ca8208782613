"""The listeners control's verdicts: what the daemon really listens on, against TLS and the firewall.

The observations are shaped exactly like the kernel's (nodeguard/sock_diag.py, which is checked
against pyroute2 on real sockets in test_sock_diag.py); the real agent reads them in
tests/integration/test_firewall_netns.py.
"""

from __future__ import annotations

import socket

from nodeguard.controls.listeners import Listener, ListenersControl, ListenersObservation
from nodeguard.netfilter.model import RuleSpec
from tests.unit.test_control_firewall import policy, statuses


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


def test_a_port_behind_a_foreign_rule_is_not_firewalled() -> None:
    from nodeguard.controls.listeners import _closed_ports

    ours = (RuleSpec(2376, "pass", "192.0.2.0/28"), RuleSpec(2376, "drop"), RuleSpec(2375, "drop"))
    assert _closed_ports(ours) == {2375, 2376}
    foreign = RuleSpec(None, None, raw="! -s 10.0.0.0/8 -j ACCEPT")
    assert _closed_ports((ours[0], ours[1], foreign, ours[2])) == {2376}
    assert _closed_ports((foreign, *ours)) == set()
