"""docker-group: who can reach the daemon socket through the `docker` group (CIS 1.1.2).

Membership is what glibc grants, not what looks tidy (nodeguard.formats.nss_files): every /etc/group line
whose gid is docker's, whatever its name, including a commented or blank-led line that initgroups
still reads; members and admins in /etc/gshadow; and users whose *primary* GID is docker's (they
never appear in a member list). A second `docker` line, another group with docker's gid or a
hidden line granting it is itself a finding (`single-entry`), and so is a group password anyone
could type at `newgrp docker` (`group-password`). Allow-lists match whole names: an allowed
`bobby` does not admit `bob`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.formats import nss_files
from nodeguard.host.accounts import display
from nodeguard.host.shadow import lock_group_password, remove_group_members
from nodeguard.policy import DockerGroupPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

# /etc/group, /etc/gshadow (members, admins, passwords) and /etc/passwd (primary groups): what
# observe() reads (through ctx.accounts).
ACCOUNT_NAMES = frozenset({"group", "gshadow", "passwd"})


@dataclass
class DockerGroupObservation:
    group: str
    gid: int | None
    # member name -> where it was found: "group", "gshadow", "gshadow-admin"
    members: dict[str, list[str]] = field(default_factory=dict)
    primary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    # Every gid getgrnam may answer for the group (more than one is itself a finding).
    gids: list[int] = field(default_factory=list)
    # Shown name -> name as written (bytes that are not UTF-8 kept): what the rewrite must match.
    raw_names: dict[str, str] = field(default_factory=dict)
    # Lines that make the group ambiguous: a second line of its name, another name with its gid, a
    # commented or blank-led line that initgroups still reads.
    ambiguous: list[str] = field(default_factory=list)
    # Where a usable group password is written: "/etc/gshadow:3".
    passwords: list[str] = field(default_factory=list)


class DockerGroupControl(Control):
    name: ClassVar[str] = "docker-group"
    policy_key: ClassVar[str] = "dockerGroup"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("member-allowed", "only allowed users are members of the docker group", Severity.HIGH, "1.1.2", True),
        Rule("primary-group", "no user has the docker group as primary group", Severity.HIGH, "1.1.2", False),
        Rule("single-entry", "one docker group line, and no other group with its gid", Severity.HIGH, "1.1.2",
             False),
        Rule("group-password", "the docker group has no password (newgrp docker)", Severity.HIGH, "1.1.2", True),
    )

    def _settings(self, policy: Policy) -> DockerGroupPolicy:
        s = self.settings(policy)
        assert isinstance(s, DockerGroupPolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        return ["/etc"]

    def watch_names(self, ctx: Context) -> dict[str, frozenset[str]]:
        """Of the busy /etc, only the files membership is read from wake the group's lane: an
        editor's temporary file, /etc/mtab or a resolv.conf rewrite is not a look at 20,000 members."""
        return {"/etc": ACCOUNT_NAMES}

    def observe(self, ctx: Context) -> DockerGroupObservation:
        s = self._settings(ctx.policy)
        acc = ctx.accounts
        gids = nss_files.docker_gids(acc.group_lines, s.group)
        named = [g for g in acc.group_lines if g.listed and g.name == s.group]
        # The line getgrnam answers (or, for a group given by number, getgrgid).
        first = named[0] if named else next((g for g in acc.group_lines if g.listed and g.gid in gids), None)
        obs = DockerGroupObservation(s.group, first.gid if first else (min(gids) if gids else None),
                                     problems=list(acc.problems), missing_files=list(acc.missing),
                                     gids=sorted(gids))

        def add(raw: str, source: str) -> None:
            shown = display(raw)
            obs.raw_names.setdefault(shown, raw)
            sources = obs.members.setdefault(shown, [])
            if source not in sources:
                sources.append(source)

        for g in acc.group_lines:
            if g.init_gid not in gids and not (g.listed and g.gid in gids):
                continue
            if g is first:
                source = "group"
            elif g.listed and g.name == s.group:
                source = f"group (line {g.line}, another {display(s.group)!r} line)"
            elif g.listed:
                source = f"group {display(g.name)!r} (line {g.line}, same gid {g.gid})"
            else:
                source = f"group (line {g.line}, commented or blank-led: initgroups still reads it)"
            # initgroups grants the gid to the members of the raw line (what a login gets).
            grants = g.init_members if g.init_gid in gids else ()
            if source != "group" and (grants or g.listed):
                obs.ambiguous.append(f"/etc/group:{g.line}: {source.removeprefix('group ')}"
                                     + (f" grants {', '.join(display(m) for m in grants)}" if grants else ""))
            for m in grants:
                add(m, source)
        gshadow_named = [e for e in acc.gshadow_lines if e.name == s.group]
        for i, e in enumerate(gshadow_named):
            if i:
                obs.ambiguous.append(f"/etc/gshadow:{e.line}: another {display(s.group)!r} line")
            for m in e.members:
                add(m, "gshadow")
            for m in e.admins:
                add(m, "gshadow-admin")
            if nss_files.is_usable_password(e.password):
                obs.passwords.append(f"/etc/gshadow:{e.line}")
        # newgrp reads the password from /etc/group only when gshadow has no line; a hash left there
        # is reported either way (it is readable by everyone).
        obs.passwords += [f"/etc/group:{g.line}" for g in named if nss_files.is_usable_password(g.password)]
        primary = {display(u.name): u.name for u in acc.passwd_lines if u.gid in gids}
        obs.raw_names.update({k: v for k, v in primary.items() if k not in obs.raw_names})
        obs.primary = sorted(primary)
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
        # One `expected` list and one details dict per distinct list of sources, shared by the
        # findings (read-only): 100,000 members are not 100,000 copies of the same values.
        expected = sorted(allowed)
        details: dict[tuple[str, ...], dict[str, Any]] = {}
        for member in sorted(obs.members):
            ok = member in allowed
            sources = obs.members[member]
            shared = details.get(tuple(sources))
            if shared is None:
                shared = details[tuple(sources)] = {"sources": sources}
            out.append(self.finding(
                "member-allowed", Status.PASS if ok else Status.FAIL,
                f"{member} is in group {s.group} ({', '.join(sources)})"
                + ("" if ok else ": not in allowedMembers, and membership is root on this host"),
                observed=member, expected=expected, path="/etc/group", subject=member,
                details=shared))
        if not obs.members:
            out.append(self.finding("member-allowed", Status.PASS, f"group {s.group} has no members",
                                    observed=[], expected=sorted(allowed), path="/etc/group"))
        for user in obs.primary:
            ok = user in allowed
            out.append(self.finding(
                "primary-group", Status.PASS if ok else Status.FAIL,
                f"{user} has {s.group} as primary group" + ("" if ok else " and is not in allowedMembers"),
                observed=user, expected=expected, path="/etc/passwd", subject=user))
        if not obs.primary:
            out.append(self.finding("primary-group", Status.PASS, f"no user has {s.group} as primary group",
                                    observed=[], expected=sorted(allowed), path="/etc/passwd"))
        out.append(self.finding(
            "single-entry", Status.FAIL if obs.ambiguous else Status.PASS,
            f"group {s.group} is defined more than once, as glibc reads the files: {'; '.join(obs.ambiguous)}"
            if obs.ambiguous else f"group {s.group} has one line and gid {obs.gid}",
            observed=obs.ambiguous or None, expected="one line, one gid", path="/etc/group",
            details={"gids": list(obs.gids)}))
        out.append(self.finding(
            "group-password", Status.FAIL if obs.passwords else Status.PASS,
            f"group {s.group} has a password ({', '.join(obs.passwords)}): whoever knows it gets the group "
            f"with newgrp {s.group}" if obs.passwords else f"group {s.group} has no usable password",
            observed=obs.passwords or None, expected="no password (! or empty)",
            path=obs.passwords[0].rsplit(":", 1)[0] if obs.passwords else "/etc/gshadow"))
        return out

    def remediate_many(self, ctx: Context, findings: Sequence[Finding], observed: Any) -> list[Outcome]:
        # Every member of a pass in one locked rewrite of group/gshadow: a group of 100,000 members
        # is one write, not 100,000 rewrites of a 1 MB file (tests/bench/bench_limits.py).
        members = [f.subject for f in findings if f.rule == "member-allowed" and f.subject]
        raw = observed.raw_names if isinstance(observed, DockerGroupObservation) else {}
        s = self._settings(ctx.policy)
        changed: list[str] = []
        error = None
        if members:
            try:
                changed = remove_group_members(ctx.host, s.group, [raw.get(m, m) for m in members])
            except OSError as exc:
                error = f"{exc.strerror or exc}"
        out = []
        removed = {"files": list(changed)}  # one dict for every member's outcome (read-only)
        for f in findings:
            if f.rule != "member-allowed" or not f.subject:
                try:
                    out.append(self.remediate(ctx, f, observed))
                except OSError as exc:
                    out.append(Outcome(False, False, f"{exc.strerror or exc}"))
            elif error is not None:
                out.append(Outcome(False, False, error))
            else:
                out.append(Outcome(bool(changed), True,
                                   f"removed {f.subject} from {s.group} in {', '.join(changed) or 'no file'}; "
                                   "sessions already connected to the socket are not cut", removed))
        return out

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        s = self._settings(ctx.policy)
        if finding.rule == "group-password":
            changed = lock_group_password(ctx.host, s.group)
            return Outcome(bool(changed), True,
                           f"locked the password of {s.group} (!) in {', '.join(changed) or 'no file'}",
                           {"files": changed})
        if finding.rule == "member-allowed" and finding.subject:
            return self.remediate_many(ctx, [finding], observed)[0]
        if finding.rule == "single-entry":
            return Outcome(False, False, "which of the lines is meant is an administrator's call; "
                                         "their members are removed by member-allowed")
        return Outcome(False, False, "a primary group is changed by an administrator (usermod -g), "
                                     "never by nodeguard")
