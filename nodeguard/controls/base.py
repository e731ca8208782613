"""What every control is: observe the host, evaluate against the policy (pure), remediate.

A control is level-triggered: `observe` reads the whole truth of its surface every time, so a
lost or merged inotify event costs nothing. `evaluate` is a pure function of what was observed and
the policy, which is what the unit tests exercise. `remediate` (enforce mode) acts on one failing
finding and says what it did.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard.accounts import AccountDB, load_accounts
from nodeguard.dockerd import DaemonProcess, find_daemon
from nodeguard.host import HostPathError, HostRoot
from nodeguard.policy import ControlPolicy, Policy
from nodeguard.structs import Finding, JSONValue, Mode, Rule, Status

if TYPE_CHECKING:
    from nodeguard.state import StateStore


ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/gshadow")
_ACCOUNTS_CACHE: dict[str, tuple[tuple[object, ...], AccountDB]] = {}


def _accounts_key(host: HostRoot) -> tuple[object, ...] | None:
    """What identifies the account files' contents: inode, size, mtime and ctime (any write moves ctime)."""
    key: list[object] = []
    for path in ACCOUNT_FILES:
        try:
            st = os.stat(host.resolve(path))
        except FileNotFoundError:
            key.append(None)
            continue
        except (OSError, HostPathError):
            return None  # not cacheable: read it every time
        key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


@dataclass
class Context:
    """One pass over the host: what several controls need is read once and shared."""

    host: HostRoot
    policy: Policy
    proc: Path = Path("/proc")
    # State that outlives a pass (last good daemon.json, quarantine): the agent's --state-dir.
    state_dir: Path | None = None

    @cached_property
    def daemon(self) -> DaemonProcess | None:
        return find_daemon(self.host, self.policy.spec.daemon.pid_file, self.proc)

    @cached_property
    def accounts(self) -> AccountDB:
        # The agent asks every pass (the socket's group name, the docker group): parsed again only
        # when one of the files changed. A 20,000-member /etc/group is not re-read for a chmod.
        key = _accounts_key(self.host)
        root = str(self.host.root)
        cached = _ACCOUNTS_CACHE.get(root)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        db = load_accounts(self.host)
        if key is not None:
            _ACCOUNTS_CACHE.clear()  # one host root per process in practice: never more than one kept
            _ACCOUNTS_CACHE[root] = (key, db)
        return db

    @cached_property
    def daemon_config(self) -> Any:
        # Several controls need the effective daemon configuration (TLS file paths, hosts, the
        # socket's group); it is observed once per pass by the daemon-config control.
        from nodeguard.controls.daemon_config import DaemonConfigControl

        return DaemonConfigControl().observe(self)


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
        controls = policy.spec.controls
        for field_name, info in type(controls).model_fields.items():
            if (info.alias or field_name) == self.policy_key:
                value: ControlPolicy = getattr(controls, field_name)
                return value
        raise KeyError(self.policy_key)

    def rule_mode(self, policy: Policy, rule_id: str) -> Mode:
        return self.settings(policy).rule_mode(rule_id, policy.spec.mode)

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

