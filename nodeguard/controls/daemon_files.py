"""daemon-files: owner and mode of the files that configure dockerd (CIS section 3).

Modes are compared as permission bits: "at most 0644" means no bit outside 0644 is set, so 0606
fails (world-writable) even though 606 < 644 as a number.

Units are found the way systemd finds them: the first `docker.service` along the search path,
plus every `docker.service.d/*.conf` drop-in (a drop-in can rewrite ExecStart, so it is as
sensitive as the unit). Registry certificates under `certs.d` are checked one by one; a private
key there must be 0400 even though CIS 3.8 says "444": a world-readable client key lets any
local user impersonate the host to the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.formats.posix_acl import ACL_XATTR, AclEntry, drop_entries, parse_acl
from nodeguard.host import FileStat, HostRoot
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
    # POSIX ACL, read where the allowed mode has group bits and a named entry would hide behind
    # them (containerd's socket: `setfacl -m u:bob:rw` keeps 0660 and gives bob containerd).
    acl: list[AclEntry] | None = None
    acl_error: str | None = None


@dataclass
class DaemonFilesObservation:
    files: list[FileObservation]
    uid_names: dict[int, str]
    gid_names: dict[int, str]


def excess_bits(mode: int, max_mode: int) -> int:
    return mode & ~max_mode & 0o7777


# Roles whose ACL is read (see FileObservation.acl).
ACL_ROLES = frozenset({"containerd-sock"})
# A hostile certs.d with millions of files must not stall the pass.
MAX_CERT_FILES = 4096
KEY_SUFFIXES = (".key",)


def _masked(host: HostRoot, host_path: str) -> bool:
    """A unit or drop-in linked to /dev/null is masked: systemd ignores it."""
    st = host.lstat(host_path)
    if st is None or st.kind != "symlink":
        return False
    try:
        return os.readlink(host.resolve(host_path, follow_last=False)) == "/dev/null"
    except OSError:
        return False


def find_unit_files(host: HostRoot, unit_dirs: list[str], unit: str) -> tuple[str | None, list[str]]:
    """(the unit file systemd loads, its drop-ins), searched along `unit_dirs` in priority order.

    The first unit file found wins; drop-ins `UNIT.d/*.conf` come from every folder, a name in
    an earlier folder hiding the same name in a later one. Folders that are the same place
    (`/lib` -> `/usr/lib`) are read once.
    """
    main: str | None = None
    dropins: dict[str, str] = {}
    seen_dirs: set[str] = set()
    for folder in unit_dirs:
        base = folder.rstrip("/") or "/"
        real = str(host.resolve(base))
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        candidate = f"{base}/{unit}"
        if main is None and host.lstat(candidate) is not None:
            main = None if _masked(host, candidate) else candidate
            if main is None:
                return None, []  # masked: systemd will not start it at all
        for name in host.listdir(f"{base}/{unit}.d"):
            if name.endswith(".conf") and name not in dropins:
                dropins[name] = f"{base}/{unit}.d/{name}"
    kept = [path for _, path in sorted(dropins.items()) if not _masked(host, path)]
    return main, kept


def containerd_sockets(ctx: Context) -> list[str]:
    """The containerd sockets of this host that exist: the policy's, the one dockerd is told to use
    (`--containerd`), and the one of the containerd dockerd starts itself (`<exec-root>/containerd`)."""
    settings = ctx.policy.spec.controls.daemon_files
    cfg = ctx.daemon_config.effective
    candidates = [settings.containerd_socket]
    if isinstance(cfg.get("containerd"), str) and cfg["containerd"]:
        candidates.append(ctx.host.from_daemon_path(cfg["containerd"]))
    exec_root = cfg.get("exec-root") if isinstance(cfg.get("exec-root"), str) else None
    candidates.append(ctx.host.from_daemon_path(f"{(exec_root or '/var/run/docker').rstrip('/')}/containerd/"
                                                "containerd.sock"))
    out: dict[str, str] = {}
    for path in candidates:
        if ctx.host.lstat(path) is None:
            continue
        # /var/run/docker/... and /run/docker/... are one socket.
        out.setdefault(str(ctx.host.resolve(path)), path)
    return list(out.values())


def registry_cert_files(host: HostRoot, certs_dir: str) -> list[str]:
    """Every file under certs.d (CA certificates, client certificates and keys), as host paths."""
    top = host.resolve(certs_dir)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(host.host_path_of(Path(dirpath) / name))
            if len(out) >= MAX_CERT_FILES:
                return out
    return out


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
        *_pair("registry-cert", "registry certificates and keys under certs.d", "3.7", "3.8"),
        *_pair("etc-default-docker", "/etc/default/docker", "3.19", "3.22"),
        *_pair("etc-sysconfig-docker", "/etc/sysconfig/docker", "3.21", "3.20"),
        *_pair("containerd-sock", "containerd's socket", "3.23", "3.24"),
        Rule("containerd-sock-acl", "no ACL entry grants anyone else containerd's socket", Severity.HIGH, "3.24",
             True),
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
            # systemd takes the first unit file found along its search path, plus every drop-in.
            main, dropins = find_unit_files(ctx.host, settings.unit_dirs, unit)
            for unit_path in ([main] if main else []) + dropins:
                specs.append(FileSpec(role, unit_path, "root", "root", 0o644))
        certs_dir = f"{settings.config_dir.rstrip('/')}/certs.d"
        for cert in registry_cert_files(ctx.host, certs_dir):
            mode = 0o400 if cert.endswith(KEY_SUFFIXES) else 0o444
            specs.append(FileSpec("registry-cert", cert, "root", "root", mode))
        for role, env_file in (("etc-default-docker", "/etc/default/docker"),
                               ("etc-sysconfig-docker", "/etc/sysconfig/docker")):
            if ctx.host.lstat(env_file) is not None:
                specs.append(FileSpec(role, env_file, "root", "root", 0o644))
        for sock in containerd_sockets(ctx):
            specs.append(FileSpec("containerd-sock", sock, "root", "root", 0o660))
        for extra in settings.extra:
            specs.append(FileSpec("extra", extra.path, extra.owner, extra.group, file_mode_bits(extra.file_mode)))
        return specs

    def watch_paths(self, ctx: Context) -> list[str]:
        settings = self._settings(ctx.policy)
        folders = {s.path.rsplit("/", 1)[0] or "/" for s in self.specs(ctx)}
        folders.add(settings.config_dir)
        # A unit or drop-in created later must wake the control too: watch the folders that exist.
        for folder in [*settings.unit_dirs, "/etc/default", "/etc/sysconfig"]:
            if ctx.host.stat(folder) is not None:
                folders.add(folder.rstrip("/") or "/")
        return sorted(folders)

    def observe(self, ctx: Context) -> DaemonFilesObservation:
        acc = ctx.accounts
        files = []
        for spec in self.specs(ctx):
            # Follows symlinks inside the root (as `stat -c %a` would); a later chmod acts only on
            # a non-symlink whose inode matches this one, so a symlink is reported, not followed.
            st = ctx.host.stat(spec.path)
            fo = FileObservation(spec, st, (acc.uid_of(spec.owner), acc.gid_of(spec.group)))
            if st is not None and spec.role in ACL_ROLES:
                try:
                    blob = ctx.host.getxattr(spec.path, ACL_XATTR)
                    fo.acl = parse_acl(blob) if blob else []
                except (OSError, ValueError) as exc:
                    fo.acl_error = str(exc)
            files.append(fo)
        return DaemonFilesObservation(
            files, {u.uid: u.name for u in acc.users.values()}, {g.gid: g.name for g in acc.groups.values()})

    def evaluate(self, observed: DaemonFilesObservation, policy: Policy) -> list[Finding]:
        out: list[Finding] = []
        present_roles = {f.spec.role for f in observed.files}
        for fo in observed.files:
            spec, st = fo.spec, fo.stat
            if st is None:
                # Same subject as when the file exists: the agent keys findings by (rule, subject).
                out += [self.finding(r, Status.SKIP, f"{spec.path} does not exist", path=spec.path, subject=spec.path)
                        for r in (f"{spec.role}-owner", f"{spec.role}-mode")]
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
            if spec.role in ACL_ROLES:
                out.append(self._acl_finding(fo, observed))
        for r in self.rules:
            role = r.id.rsplit("-", 1)[0]
            if role not in present_roles and role != "extra":
                out.append(self.finding(r.id, Status.SKIP, "not configured on this host"))
        return out

    def _acl_finding(self, fo: FileObservation, observed: DaemonFilesObservation) -> Finding:
        rule, path = f"{fo.spec.role}-acl", fo.spec.path
        if fo.acl_error is not None:
            return self.finding(rule, Status.FAIL, f"ACL unreadable: {fo.acl_error}", observed=fo.acl_error,
                                expected="no named ACL entries", path=path, subject=path)
        bad = []
        for entry in fo.acl or []:
            if entry.tag in ("user", "group") and entry.perms:
                bad.append(entry.render(observed.uid_names if entry.tag == "user" else observed.gid_names))
        return self.finding(
            rule, Status.FAIL if bad else Status.PASS,
            f"ACL entries {bad} grant access that the mode does not show" if bad else "no named ACL entries",
            observed=bad or None, expected="no named ACL entries", path=path, subject=path)

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        assert isinstance(observed, DaemonFilesObservation)
        fo = next((f for f in observed.files if f.spec.path == finding.subject and f.stat is not None), None)
        if fo is None or fo.stat is None:
            return Outcome(False, False, f"{finding.subject} is gone")
        if finding.rule.endswith("-acl"):
            return self._strip_granting_entries(ctx, fo, observed)
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

    def _strip_granting_entries(self, ctx: Context, fo: FileObservation, observed: DaemonFilesObservation) -> Outcome:
        """`setfacl -x` of the named entries that grant something; the rest of the ACL is kept as it was."""
        assert fo.stat is not None
        blob = ctx.host.getxattr(fo.spec.path, ACL_XATTR)  # fresh: keep what changed since the observation
        if not blob:
            return Outcome(False, True, f"{fo.spec.path} has no ACL any more")
        try:
            edit = drop_entries(blob, lambda e: e.perms != 0, mask_cap=(fo.spec.max_mode >> 3) & 0o7)
        except ValueError as exc:  # the kernel validates ACLs, so this is not one: leave it to a human
            return Outcome(False, False, f"{fo.spec.path}: ACL not understood, not touched: {exc}")
        removed = [e.render(observed.uid_names if e.tag == "user" else observed.gid_names) for e in edit.removed]
        if not removed:
            return Outcome(False, True, f"{fo.spec.path}: no granting ACL entry left")
        ctx.host.setxattr(fo.spec.path, ACL_XATTR, edit.blob, expect=fo.stat)
        return Outcome(True, True, f"removed ACL entries {removed} from {fo.spec.path} (setfacl -x)",
                       {"removed": list(removed)})
