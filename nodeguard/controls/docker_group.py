"""docker-group: who can reach the daemon socket through the `docker` group (CIS 1.1.2).

Counted: members in /etc/group, members and admins in /etc/gshadow, and users whose *primary*
GID is docker's (they never appear in the member list). Allow-lists match whole names: an
allowed `bobby` does not admit `bob`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.policy import DockerGroupPolicy, Policy
from nodeguard.shadow import remove_group_member, remove_group_members
from nodeguard.structs import Finding, Rule, Severity, Status


@dataclass
class DockerGroupObservation:
    group: str
    gid: int | None
    # member name -> where it was found: "group", "gshadow", "gshadow-admin"
    members: dict[str, list[str]] = field(default_factory=dict)
    primary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)


class DockerGroupControl(Control):
    name: ClassVar[str] = "docker-group"
    policy_key: ClassVar[str] = "dockerGroup"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("member-allowed", "only allowed users are members of the docker group", Severity.HIGH, "1.1.2", True),
        Rule("primary-group", "no user has the docker group as primary group", Severity.HIGH, "1.1.2", False),
    )

    def _settings(self, policy: Policy) -> DockerGroupPolicy:
        s = self.settings(policy)
        assert isinstance(s, DockerGroupPolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        return ["/etc"]

    def observe(self, ctx: Context) -> DockerGroupObservation:
        s = self._settings(ctx.policy)
        acc = ctx.accounts
        entry = acc.groups.get(s.group)
        obs = DockerGroupObservation(s.group, entry.gid if entry else None,
                                     problems=list(acc.problems), missing_files=list(acc.missing))
        if entry is not None:
            for m in entry.members:
                obs.members.setdefault(m, []).append("group")
            obs.primary = sorted(u.name for u in acc.users.values() if u.gid == entry.gid)
        admins, gs_members = acc.gshadow.get(s.group, ((), ()))
        for m in gs_members:
            obs.members.setdefault(m, []).append("gshadow")
        for m in admins:
            obs.members.setdefault(m, []).append("gshadow-admin")
        return obs

    def evaluate(self, observed: DockerGroupObservation, policy: Policy) -> list[Finding]:
        s = self._settings(policy)
        obs = observed
        if "/etc/group" in obs.missing_files:
            return self.skip_all("/etc/group does not exist under the host root", path="/etc/group")
        unreadable = [p for p in obs.problems if p.startswith("/etc/group: cannot read")]
        if unreadable:
            # A FIFO, a folder or a huge file in its place: say so rather than "no docker group".
            return self.skip_all(unreadable[0], path="/etc/group")
        if obs.gid is None and not obs.members:
            return self.skip_all(f"no group {s.group!r} on this host: nothing grants socket access by group",
                                 path="/etc/group")
        allowed = set(s.allowed_members)
        out: list[Finding] = []
        for member in sorted(obs.members):
            ok = member in allowed
            out.append(self.finding(
                "member-allowed", Status.PASS if ok else Status.FAIL,
                f"{member} is in group {s.group} ({', '.join(obs.members[member])})"
                + ("" if ok else ": not in allowedMembers, and membership is root on this host"),
                observed=member, expected=sorted(allowed), path="/etc/group", subject=member,
                details={"sources": obs.members[member]}))
        if not obs.members:
            out.append(self.finding("member-allowed", Status.PASS, f"group {s.group} has no members",
                                    observed=[], expected=sorted(allowed), path="/etc/group"))
        for user in obs.primary:
            ok = user in allowed
            out.append(self.finding(
                "primary-group", Status.PASS if ok else Status.FAIL,
                f"{user} has {s.group} as primary group" + ("" if ok else " and is not in allowedMembers"),
                observed=user, expected=sorted(allowed), path="/etc/passwd", subject=user))
        if not obs.primary:
            out.append(self.finding("primary-group", Status.PASS, f"no user has {s.group} as primary group",
                                    observed=[], expected=sorted(allowed), path="/etc/passwd"))
        return out

    def remediate_many(self, ctx: Context, findings: Sequence[Finding], observed: Any) -> list[Outcome]:
        # Every member of a pass in one locked rewrite of group/gshadow: a group of 100,000 members
        # is one write, not 100,000 rewrites of a 1 MB file (tests/bench/bench_limits.py).
        members = [f.subject for f in findings if f.rule == "member-allowed" and f.subject]
        if len(members) <= 1:
            return super().remediate_many(ctx, findings, observed)
        s = self._settings(ctx.policy)
        changed: list[str] = []
        error = None
        try:
            changed = remove_group_members(ctx.host, s.group, members)
        except OSError as exc:
            error = f"{exc.strerror or exc}"
        out = []
        for f in findings:
            if f.rule != "member-allowed" or not f.subject:
                out.append(self.remediate(ctx, f, observed))
            elif error is not None:
                out.append(Outcome(False, False, error))
            else:
                out.append(Outcome(bool(changed), True,
                                   f"removed {f.subject} from {s.group} in {', '.join(changed) or 'no file'}; "
                                   "sessions already connected to the socket are not cut", {"files": list(changed)}))
        return out

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        if finding.rule != "member-allowed" or not finding.subject:
            return Outcome(False, False, "a primary group is changed by an administrator (usermod -g), "
                                         "never by nodeguard")
        s = self._settings(ctx.policy)
        changed = remove_group_member(ctx.host, s.group, finding.subject)
        return Outcome(bool(changed), True,
                       f"removed {finding.subject} from {s.group} in {', '.join(changed) or 'no file'}; "
                       "sessions already connected to the socket are not cut",
                       {"files": changed})
