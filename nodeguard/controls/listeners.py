"""listeners: what the daemon really listens on, read from the kernel (sock_diag), not the file.

`hosts` in daemon.json says what dockerd was asked for; a flag, a drop-in unit or a stale
process may say otherwise, and reverting the file never closes a listener that is open. The
kernel's socket table (inet_diag over netlink, in the agent's network namespace: the host's with
hostNetwork) is the truth; /proc maps each socket inode to the process holding it.
Report only: closing a daemon's listener means restarting the daemon.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.daemon_settings import tls_enabled
from nodeguard.netfilter.model import RuleSpec
from nodeguard.policy import Policy
from nodeguard.sock_diag import TcpListener
from nodeguard.sock_diag import tcp_listeners as diag_tcp_listeners
from nodeguard.structs import Finding, Rule, Severity, Status

if TYPE_CHECKING:
    from nodeguard.netfilter.observed import FirewallObservation

PLAINTEXT_PORT = 2375


@dataclass(frozen=True)
class Listener(TcpListener):
    """A listening socket as the kernel reports it, and the processes holding it."""

    pids: tuple[int, ...] = ()
    comm: str | None = None

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.address}:{self.port}"

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "pids": list(self.pids), "process": self.comm, "uid": self.uid,
                "dual_stack": self.family == socket.AF_INET6 and self.wildcard and self.v6only is False}


@dataclass
class ListenersObservation:
    listeners: list[Listener] = field(default_factory=list)
    error: str | None = None
    daemon_pid: int | None = None
    daemon_tls: bool | None = None  # None: no daemon configuration found
    firewalled_ports: set[int] | None = None  # None: the firewall could not be read

    def of_daemon(self) -> list[Listener]:
        if self.daemon_pid is not None:
            return [lst for lst in self.listeners if self.daemon_pid in lst.pids]
        return [lst for lst in self.listeners if lst.comm == "dockerd"]


def tcp_listeners(proc: Path = Path("/proc"), first: int | None = None) -> list[Listener]:
    """Every listening TCP socket of this network namespace (IPv4 and IPv6) via inet_diag, with the
    processes holding it (`first`: the pid whose descriptors are looked at before the rest)."""
    found = diag_tcp_listeners()
    owners = socket_owners({s.inode for s in found if s.inode}, proc, first)
    out = []
    for s in found:
        pids = tuple(owners.get(s.inode, ()))
        out.append(Listener(s.family, s.address, s.port, s.inode, s.uid, s.v6only, pids,
                            _comm(proc, pids[0]) if pids else None))
    return out


def socket_owners(inodes: set[int], proc: Path, first: int | None = None) -> dict[int, list[int]]:
    """socket inode -> pids holding it, from /proc/<pid>/fd; `first` is looked at before the rest."""
    owners: dict[int, list[int]] = {}
    wanted = {f"socket:[{i}]": i for i in inodes}
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return owners
    if first is not None:
        pids = [first, *(p for p in pids if p != first)]
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and pid not in owners.setdefault(inode, []):
                owners[inode].append(pid)
    return owners


def _comm(proc: Path, pid: int) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return None


def _closed_ports(rules: Sequence[RuleSpec]) -> set[int]:
    """Ports whose drop/reject for every source comes before any rule nodeguard did not write
    (a foreign rule may accept anything that reaches it: what follows it is not a guarantee)."""
    closed: set[int] = set()
    for r in rules:
        if r.foreign:
            break
        if r.port is not None and r.source is None and r.verdict != "pass":
            closed.add(r.port)
    return closed


def _firewalled_ports(fw: FirewallObservation) -> set[int] | None:
    """Ports for which nodeguard's chains are hooked and end in a drop/reject for all sources."""
    if fw.state is None or fw.state.error is not None or not fw.state.chains:
        return None
    per_chain = [_closed_ports(c.rules) if c.exists and c.hooked else set() for c in fw.state.chains]
    return set.intersection(*per_chain)


class ListenersControl(Control):
    name: ClassVar[str] = "listeners"
    policy_key: ClassVar[str] = "listeners"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("plaintext-listener", "dockerd has no plaintext TCP listener (and nothing listens on 2375)",
             Severity.CRITICAL, "2.7", False),
        Rule("wildcard-listener", "dockerd's TCP listeners are bound to chosen addresses, not 0.0.0.0 or ::",
             Severity.MEDIUM, None, False),
        Rule("listener-firewalled", "every TCP port dockerd listens on has nodeguard's firewall rules",
             Severity.HIGH, "2.7", False),
    )

    def observe(self, ctx: Context) -> ListenersObservation:
        obs = ListenersObservation()
        daemon = ctx.daemon
        obs.daemon_pid = daemon.pid if daemon is not None else None
        try:
            obs.listeners = tcp_listeners(ctx.proc, obs.daemon_pid)
        except OSError as exc:
            obs.error = f"socket diagnostics unavailable: {exc}"
            return obs
        cfg = ctx.daemon_config
        if cfg is not None and (cfg.config is not None or cfg.flags):
            obs.daemon_tls = tls_enabled(cfg.effective)
        obs.firewalled_ports = _firewalled_ports(ctx.netfilter)
        return obs

    def evaluate(self, observed: ListenersObservation, policy: Policy) -> list[Finding]:
        obs = observed
        if obs.error is not None:
            return self.skip_all(obs.error)
        daemon = obs.of_daemon()
        out: list[Finding] = []
        # 1. plaintext: any listener of a daemon without TLS, and anything at all on 2375.
        plain = [lst for lst in daemon if obs.daemon_tls is False]
        plain += [lst for lst in obs.listeners if lst.port == PLAINTEXT_PORT and lst not in plain]
        for lst in plain:
            who = lst.comm or "an unknown process"
            why = "dockerd runs without TLS" if lst in daemon and obs.daemon_tls is False \
                else f"{who} listens on the plaintext Docker port"
            out.append(self.finding("plaintext-listener", Status.FAIL, f"{lst.endpoint}: {why}",
                                    observed=lst.to_json(), expected="TLS with client verification, never 2375",
                                    subject=lst.endpoint))
        if not plain:
            out.append(self.finding("plaintext-listener", Status.PASS,
                                    f"no plaintext TCP listener ({len(daemon)} dockerd TCP listener(s), TLS)"
                                    if daemon else "dockerd has no TCP listener",
                                    observed=[lst.endpoint for lst in daemon], expected="no plaintext listener"))
        # 2. wildcard addresses.
        wild = [lst for lst in daemon if lst.wildcard]
        for lst in wild:
            out.append(self.finding("wildcard-listener", Status.FAIL,
                                    f"dockerd listens on {lst.endpoint}, every address of the host"
                                    + (" (IPv4 and IPv6)" if lst.to_json()["dual_stack"] else ""),
                                    observed=lst.to_json(), expected="a specific address", subject=lst.endpoint))
        if not wild:
            out.append(self.finding("wildcard-listener", Status.PASS, "no dockerd listener on a wildcard address",
                                    observed=[lst.endpoint for lst in daemon], expected="specific addresses"))
        # 3. a listening port without our firewall rules.
        open_ports = [lst for lst in daemon if obs.firewalled_ports is None or lst.port not in obs.firewalled_ports]
        for lst in open_ports:
            out.append(self.finding("listener-firewalled", Status.FAIL,
                                    f"dockerd listens on {lst.endpoint} and no nodeguard rule restricts tcp/{lst.port}",
                                    observed=lst.to_json(),
                                    expected=f"tcp/{lst.port} in firewall.ports, rules in place",
                                    subject=lst.endpoint))
        if not open_ports:
            out.append(self.finding("listener-firewalled", Status.PASS,
                                    "every dockerd TCP port is restricted by nodeguard's rules" if daemon
                                    else "dockerd has no TCP listener",
                                    observed=sorted({lst.port for lst in daemon}),
                                    expected="firewalled ports"))
        return out
