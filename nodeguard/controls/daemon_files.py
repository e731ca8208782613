"""daemon-files: owner and mode of the files that configure dockerd (CIS section 3).

Modes are compared as permission bits: "at most 0644" means no bit outside 0644 is set, so 0606
fails (world-writable) even though 606 < 644 as a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.host import FileStat
from nodeguard.policy import DaemonFilesPolicy, Policy, file_mode_bits
from nodeguard.structs import Finding, Rule, Severity, Status


@dataclass(frozen=True)
class FileSpec:
    """One file the policy holds to an owner and a most-permissive mode."""

    role: str  # rule prefix: "etc-docker" -> rules etc-docker-owner, etc-docker-mode
    path: str
    owner: str
    group: str
    max_mode: int


@dataclass
class FileObservation:
    spec: FileSpec
    stat: FileStat | None
    owner_ids: tuple[int | None, int | None]  # the policy's owner/group resolved on this host


@dataclass
class DaemonFilesObservation:
    files: list[FileObservation]
    uid_names: dict[int, str]
    gid_names: dict[int, str]


def excess_bits(mode: int, max_mode: int) -> int:
    return mode & ~max_mode & 0o7777


def _pair(role: str, title: str, cis_owner: str | None, cis_mode: str | None) -> tuple[Rule, Rule]:
    return (
        Rule(f"{role}-owner", f"{title} owned as the policy says", Severity.MEDIUM, cis_owner, True),
        Rule(f"{role}-mode", f"{title} no more permissive than the policy", Severity.MEDIUM, cis_mode, True),
    )


class DaemonFilesControl(Control):
    name: ClassVar[str] = "daemon-files"
    policy_key: ClassVar[str] = "daemonFiles"
    rules: ClassVar[tuple[Rule, ...]] = (
        *_pair("docker-service", "docker.service unit", "3.1", "3.2"),
        *_pair("docker-socket-unit", "docker.socket unit", "3.3", "3.4"),
        *_pair("etc-docker", "/etc/docker", "3.5", "3.6"),
        *_pair("tls-ca", "TLS CA certificate", "3.9", "3.10"),
        *_pair("tls-cert", "TLS server certificate", "3.11", "3.12"),
        *_pair("tls-key", "TLS server key", "3.13", "3.14"),
        *_pair("daemon-json", "daemon.json", "3.17", "3.18"),
        *_pair("extra", "a file the policy lists", None, None),
    )

    def _settings(self, policy: Policy) -> DaemonFilesPolicy:
        s = self.settings(policy)
        assert isinstance(s, DaemonFilesPolicy)
        return s

    def specs(self, ctx: Context) -> list[FileSpec]:
        settings = self._settings(ctx.policy)
        specs = [FileSpec("etc-docker", settings.config_dir, "root", "root", 0o755)]
        dc = ctx.daemon_config
        specs.append(FileSpec("daemon-json", dc.path, "root", "root", 0o644))
        cfg = dc.effective
        for role, key, mode in (("tls-ca", "tlscacert", 0o444), ("tls-cert", "tlscert", 0o444),
                                ("tls-key", "tlskey", 0o400)):
            if isinstance(cfg.get(key), str) and cfg[key]:
                specs.append(FileSpec(role, ctx.host.from_daemon_path(cfg[key]), "root", "root", mode))
        for role, unit in (("docker-service", "docker.service"), ("docker-socket-unit", "docker.socket")):
            # systemd takes the first unit file found along its search path.
            for folder in settings.unit_dirs:
                candidate = f"{folder.rstrip('/')}/{unit}"
                if ctx.host.lstat(candidate) is not None:
                    specs.append(FileSpec(role, candidate, "root", "root", 0o644))
                    break
        for extra in settings.extra:
            specs.append(FileSpec("extra", extra.path, extra.owner, extra.group, file_mode_bits(extra.file_mode)))
        return specs

    def watch_paths(self, ctx: Context) -> list[str]:
        folders = {s.path.rsplit("/", 1)[0] or "/" for s in self.specs(ctx)}
        folders.add(self._settings(ctx.policy).config_dir)
        return sorted(folders)

    def observe(self, ctx: Context) -> DaemonFilesObservation:
        acc = ctx.accounts
        files = []
        for spec in self.specs(ctx):
            # Follows symlinks inside the root (as `stat -c %a` would); a later chmod acts only on
            # a non-symlink whose inode matches this one, so a symlink is reported, not followed.
            st = ctx.host.stat(spec.path)
            files.append(FileObservation(spec, st, (acc.uid_of(spec.owner), acc.gid_of(spec.group))))
        return DaemonFilesObservation(
            files, {u.uid: u.name for u in acc.users.values()}, {g.gid: g.name for g in acc.groups.values()})

    def evaluate(self, observed: DaemonFilesObservation, policy: Policy) -> list[Finding]:
        out: list[Finding] = []
        present_roles = {f.spec.role for f in observed.files}
        for fo in observed.files:
            spec, st = fo.spec, fo.stat
            if st is None:
                out += self.skip_all(f"{spec.path} does not exist", [f"{spec.role}-owner", f"{spec.role}-mode"],
                                     spec.path)
                continue
            want_uid, want_gid = fo.owner_ids
            have = f"{observed.uid_names.get(st.uid, st.uid)}:{observed.gid_names.get(st.gid, st.gid)}"
            want = f"{spec.owner}:{spec.group}"
            if want_uid is None or want_gid is None:
                out.append(self.finding(f"{spec.role}-owner", Status.FAIL,
                                        f"{want} does not exist on this host", observed=have, expected=want,
                                        path=spec.path, subject=spec.path))
            else:
                ok = (st.uid, st.gid) == (want_uid, want_gid)
                out.append(self.finding(f"{spec.role}-owner", Status.PASS if ok else Status.FAIL,
                                        f"{spec.path} is owned by {have}", observed=have, expected=want,
                                        path=spec.path, subject=spec.path))
            extra = excess_bits(st.mode, spec.max_mode)
            out.append(self.finding(
                f"{spec.role}-mode", Status.FAIL if extra else Status.PASS,
                f"{spec.path} has mode {st.mode_octal}"
                + (f": bits {extra:04o} beyond {spec.max_mode:04o}" if extra else ""),
                observed=st.mode_octal, expected=f"at most {spec.max_mode:04o}", path=spec.path,
                subject=spec.path, details={"kind": st.kind}))
        for r in self.rules:
            role = r.id.rsplit("-", 1)[0]
            if role not in present_roles and role != "extra":
                out.append(self.finding(r.id, Status.SKIP, "not configured on this host"))
        return out

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        assert isinstance(observed, DaemonFilesObservation)
        fo = next((f for f in observed.files if f.spec.path == finding.subject and f.stat is not None), None)
        if fo is None or fo.stat is None:
            return Outcome(False, False, f"{finding.subject} is gone")
        if finding.rule.endswith("-mode"):
            new_mode = fo.stat.mode & fo.spec.max_mode
            ctx.host.chmod(fo.spec.path, new_mode, expect=fo.stat)
            return Outcome(True, True, f"chmod {new_mode:04o} {fo.spec.path}",
                           {"old_mode": fo.stat.mode_octal, "new_mode": f"{new_mode:04o}"})
        uid, gid = fo.owner_ids
        if uid is None or gid is None:
            return Outcome(False, False, f"{fo.spec.owner}:{fo.spec.group} does not exist on this host")
        ctx.host.chown(fo.spec.path, uid, gid, expect=fo.stat)
        return Outcome(True, True, f"chown {fo.spec.owner}:{fo.spec.group} {fo.spec.path}")
