"""What every control is: observe the host, evaluate against the policy (pure), remediate.

A control is level-triggered: `observe` reads the whole truth of its surface every time, so a
lost or merged inotify event costs nothing. `evaluate` is a pure function of what was observed and
the policy, which is what the unit tests exercise. `remediate` (enforce mode) acts on one failing
finding and says what it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard.daemon_settings import DaemonConfigObservation
from nodeguard.docker_api import CallCounter, DaemonReads, read_daemon
from nodeguard.dockerd import DaemonProcess
from nodeguard.host import HostRoot
from nodeguard.host.accounts import AccountDB
from nodeguard.observations import Observations
from nodeguard.policy import ControlPolicy, Policy
from nodeguard.structs import Finding, JSONValue, Mode, Rule, Status

if TYPE_CHECKING:
    from nodeguard.formats.mountinfo import MountTable
    from nodeguard.netfilter.observed import FirewallObservation
    from nodeguard.state import StateStore


@dataclass
class Context:
    """One pass over the host. What several controls need (the running daemon, daemon.json, the
    account files, netfilter) is read once, on first use, and shared (nodeguard.observations);
    a new pass, and the look that verifies a revert, make a new Context and read the host again."""

    host: HostRoot
    policy: Policy
    proc: Path = Path("/proc")  # fixed for the pass: the shared observations read under it
    # State that outlives a pass (last good daemon.json, quarantine): the agent's --state-dir.
    state_dir: Path | None = None
    # How the runtime control reads the Docker API (the pass's one reader of it): in this process,
    # or a `check`'s forked reader (nodeguard.api_prefetch) that imported the Docker SDK meanwhile.
    read_daemon: Callable[[Path, str, float, CallCounter | None], DaemonReads] = field(
        default=read_daemon, repr=False, compare=False)
    observed: Observations = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.observed = Observations(self.host, self.policy, self.proc)

    @property
    def daemon(self) -> DaemonProcess | None:
        return self.observed.daemon()

    @property
    def accounts(self) -> AccountDB:
        return self.observed.accounts()

    @property
    def daemon_config(self) -> DaemonConfigObservation:
        return self.observed.daemon_config()

    @property
    def netfilter(self) -> FirewallObservation:
        return self.observed.netfilter()

    @property
    def mounts(self) -> MountTable:
        return self.observed.mounts()


@dataclass(slots=True)  # one per reverted member: 100,000 of them for a 100,000-member group
class Outcome:
    """What a remediation did: `changed` is False when there was nothing to do or it failed."""

    changed: bool
    ok: bool
    message: str
    details: dict[str, JSONValue] = field(default_factory=dict)
    restart_required: bool = False


class Control:
    """Base class: subclasses set the ClassVars and implement observe/evaluate (and remediate)."""

    name: ClassVar[str]  # in findings and events: "daemon-config"
    # True for a control whose remediation changes the current network namespace (netfilter), not
    # files under the host root: see nodeguard.netfilter.select.writes_refused.
    changes_network: ClassVar[bool] = False
    policy_key: ClassVar[str]  # under spec.controls: "daemonConfig"
    rules: ClassVar[Sequence[Rule]]

    @classmethod
    def rule(cls, rule_id: str) -> Rule:
        for r in cls.rules:
            if r.id == rule_id:
                return r
        raise KeyError(f"{cls.name} has no rule {rule_id!r}")

    def settings(self, policy: Policy) -> ControlPolicy:
        return policy.control(self.policy_key)

    def rule_mode(self, policy: Policy, rule_id: str) -> Mode:
        return policy.mode_of(self.policy_key, rule_id)

    def watch_paths(self, ctx: Context) -> list[str]:
        """Host folders whose changes should wake this control."""
        return []

    def observe(self, ctx: Context) -> Any:
        raise NotImplementedError

    def evaluate(self, observed: Any, policy: Policy) -> list[Finding]:
        raise NotImplementedError

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        return Outcome(False, False, f"{self.name}/{finding.rule} has no automatic remediation")

    def remediate_many(self, ctx: Context, findings: Sequence[Finding], observed: Any) -> list[Outcome]:
        """One Outcome per finding, in order. Override to batch (one write for several keys)."""
        outcomes = []
        for f in findings:
            try:
                outcomes.append(self.remediate(ctx, f, observed))
            except OSError as exc:
                outcomes.append(Outcome(False, False, f"{exc.strerror or exc}"))
        return outcomes

    def remember(self, ctx: Context, observed: Any, store: StateStore) -> None:
        """Keep what a later remediation may need (e.g. the last valid daemon.json). Default: nothing."""

    # -- helpers for subclasses ------------------------------------------------------------

    def finding(
        self,
        rule_id: str,
        status: Status,
        message: str,
        *,
        observed: JSONValue = None,
        expected: JSONValue = None,
        path: str | None = None,
        subject: str | None = None,
        details: dict[str, JSONValue] | None = None,
    ) -> Finding:
        r = self.rule(rule_id)
        return Finding(
            control=self.name,
            rule=rule_id,
            status=status,
            severity=r.severity,
            cis=r.cis,
            message=message,
            observed=observed,
            expected=expected,
            path=path,
            subject=subject,
            details=details or {},
        )

    def skip_all(self, message: str, rule_ids: Iterable[str] | None = None, path: str | None = None) -> list[Finding]:
        ids = list(rule_ids) if rule_ids is not None else [r.id for r in self.rules]
        return [self.finding(r, Status.SKIP, message, path=path) for r in ids]

