"""socket: the daemon socket's owner, mode and POSIX ACL.

`setfacl -m u:mallory:rw docker.sock` leaves the mode at 0660 and gives mallory root: the ACL is
read from `system.posix_acl_access` itself, never inferred from the mode.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome

# Re-exported: the ACL format used to live here.
from nodeguard.formats.posix_acl import ACL_XATTR, AclEntry, drop_entries, parse_acl, perm_bits
from nodeguard.host import FileStat, HostRoot, file_kind
from nodeguard.host.accounts import AccountDB
from nodeguard.policy import Policy, SocketPolicy, file_mode_bits
from nodeguard.structs import Finding, Rule, Severity, Status

__all__ = ["ACL_XATTR", "AclEntry", "SocketControl", "SocketObservation", "acl_entry_allowed", "parse_acl"]


def acl_entry_allowed(entry: AclEntry, allowed_acl: list[str], uid_names: dict[int, str],
                      gid_names: dict[int, str]) -> bool:
    """A named entry the policy tolerates: same tag, same user/group (by name or id), no more perms.

    Base entries (owner, owning group, other, mask) are the mode, judged by `socket-mode`; a named
    entry with no permissions grants nothing.
    """
    if entry.tag not in ("user", "group") or entry.perms == 0:
        return True
    names = uid_names if entry.tag == "user" else gid_names
    # Named entries always carry an id; uid/gid 0 is one (never read it as "no qualifier").
    qualifier = -1 if entry.qualifier is None else entry.qualifier
    for a in allowed_acl:
        tag, who, perms = a.split(":")
        if tag == entry.tag and who in (names.get(qualifier), str(qualifier)) and entry.perms & ~perm_bits(perms) == 0:
            return True
    return False


def _account_files_key(host: HostRoot) -> tuple[object, ...] | None:
    """What identifies /etc/passwd, /etc/group and /etc/gshadow under the root right now, by lstat
    alone; None when one of them, or /etc, is not a plain file (folder): then no shortcut."""
    root = str(host.root).rstrip("/")
    try:
        etc = os.lstat(f"{root}/etc")
        if not stat.S_ISDIR(etc.st_mode):
            return None
        key: list[object] = [root, etc.st_dev, etc.st_ino]
        for name in ("passwd", "group", "gshadow"):
            try:
                st = os.lstat(f"{root}/etc/{name}")
            except FileNotFoundError:
                key.append(None)
                continue
            if not stat.S_ISREG(st.st_mode):
                return None
            key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        return None
    return tuple(key)


@dataclass
class SocketObservation:
    path: str
    stat: FileStat | None
    acl: list[AclEntry] | None
    acl_error: str | None
    want_uid: int | None
    want_gid: int | None
    uid_names: dict[int, str]
    gid_names: dict[int, str]


class SocketControl(Control):
    name: ClassVar[str] = "socket"
    policy_key: ClassVar[str] = "socket"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("socket-owner", "docker.sock owned by root:docker", Severity.HIGH, "3.15", True),
        Rule("socket-mode", "docker.sock no more permissive than 0660", Severity.CRITICAL, "3.16", True),
        Rule("socket-acl", "no ACL entry grants anyone else access to docker.sock", Severity.CRITICAL, "3.16",
             True),
    )

    _names_of: tuple[AccountDB, dict[int, str], dict[int, str]] | None = None
    _accounts_of: tuple[tuple[object, ...], AccountDB] | None = None

    def _settings(self, policy: Policy) -> SocketPolicy:
        s = self.settings(policy)
        assert isinstance(s, SocketPolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        real = ctx.host.resolve(self._settings(ctx.policy).path)
        return [ctx.host.host_path_of(real.parent)]

    def observe(self, ctx: Context) -> SocketObservation:
        s = self._settings(ctx.policy)
        st, blob, acl_error = self._stat_and_acl(ctx, s.path)
        acl: list[AclEntry] | None = None
        if st is not None and acl_error is None:
            try:
                acl = parse_acl(blob) if blob else []
            except ValueError as exc:
                acl_error = str(exc)
        acc = self._accounts(ctx)
        uid_names, gid_names = self._names(acc)
        # dockerd's -G flag or `group` key decides the socket's group; the policy names the one
        # it must be, resolved on the host.
        return SocketObservation(s.path, st, acl, acl_error, acc.uid_of(s.owner), acc.gid_of(s.group),
                                 uid_names, gid_names)

    def _accounts(self, ctx: Context) -> AccountDB:
        """ctx.accounts, without its path walk on every drift when the files have not changed: four
        lstat()s say so. Only plain files in a plain /etc take this path (a symlink among them: the
        context's own check, every time). The key is taken before the files are read, so a change
        racing the read makes the next look read them again."""
        key = _account_files_key(ctx.host)
        cached = self._accounts_of
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        acc = ctx.accounts
        if key is not None:
            self._accounts_of = (key, acc)
        return acc

    def _names(self, acc: AccountDB) -> tuple[dict[int, str], dict[int, str]]:
        """id -> name of every user and group, built once per parse of the account files (the
        context hands out the same AccountDB until one of them changes), not on every look."""
        cached = self._names_of
        if cached is not None and cached[0] is acc:
            return cached[1], cached[2]
        uid_names = {u.uid: u.name for u in acc.users.values()}
        gid_names = {g.gid: g.name for g in acc.groups.values()}
        self._names_of = (acc, uid_names, gid_names)  # one assignment: safe for a reader on another lane
        return uid_names, gid_names

    @staticmethod
    def _stat_and_acl(ctx: Context, path: str) -> tuple[FileStat | None, bytes | None, str | None]:
        """(stat, ACL xattr, why the ACL is unreadable) of the socket, in one walk of its path.

        The socket's lane runs this first on every drift: one descriptor-relative walk, then fstat
        and getxattr on the very inode, instead of a walk each (every system call is a moment a
        busy thread can take the interpreter from the revert). A final symlink keeps the general
        path: stat follows it, the ACL of a symlink is none.
        """
        host = ctx.host
        try:
            with host.open_parent(path, follow_last=False) as (dfd, name):
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return host.stat(path), None, None  # (a missing folder on the way: the general answer)
        try:
            raw = os.fstat(fd)
            if stat.S_ISLNK(raw.st_mode):
                return SocketControl._stat_and_acl_by_name(ctx, path)
            st = FileStat(path, raw.st_uid, raw.st_gid, stat.S_IMODE(raw.st_mode), file_kind(raw.st_mode),
                          raw.st_size, raw.st_dev, raw.st_ino)
            try:
                return st, os.getxattr(f"/proc/self/fd/{fd}", ACL_XATTR), None
            except OSError as exc:
                if exc.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTSUP, errno.EOPNOTSUPP):
                    return st, None, None
                return st, None, str(exc)
        finally:
            os.close(fd)

    @staticmethod
    def _stat_and_acl_by_name(ctx: Context, path: str) -> tuple[FileStat | None, bytes | None, str | None]:
        st = ctx.host.stat(path)
        if st is None:
            return None, None, None
        try:
            return st, ctx.host.getxattr(path, ACL_XATTR), None
        except OSError as exc:
            return st, None, str(exc)

    def _bad_acl(self, obs: SocketObservation, s: SocketPolicy) -> list[str]:
        return [e.render(obs.uid_names if e.tag == "user" else obs.gid_names) for e in obs.acl or []
                if not acl_entry_allowed(e, s.allowed_acl, obs.uid_names, obs.gid_names)]

    def evaluate(self, observed: SocketObservation, policy: Policy) -> list[Finding]:
        s = self._settings(policy)
        obs = observed
        if obs.stat is None:
            return self.skip_all(f"{obs.path} does not exist (is dockerd running?)", path=obs.path)
        if obs.stat.kind != "socket":
            return [self.finding(r.id, Status.FAIL, f"{obs.path} is a {obs.stat.kind}, not a socket",
                                 observed=obs.stat.kind, expected="socket", path=obs.path) for r in self.rules]
        out = []
        have = f"{obs.uid_names.get(obs.stat.uid, obs.stat.uid)}:{obs.gid_names.get(obs.stat.gid, obs.stat.gid)}"
        want = f"{s.owner}:{s.group}"
        if obs.want_uid is None or obs.want_gid is None:
            out.append(self.finding("socket-owner", Status.FAIL, f"{want} does not exist on this host",
                                    observed=have, expected=want, path=obs.path))
        else:
            ok = (obs.stat.uid, obs.stat.gid) == (obs.want_uid, obs.want_gid)
            out.append(self.finding("socket-owner", Status.PASS if ok else Status.FAIL,
                                    f"{obs.path} is owned by {have}", observed=have, expected=want, path=obs.path))
        allowed_mode = file_mode_bits(s.file_mode)
        extra = obs.stat.mode & ~allowed_mode & 0o7777
        out.append(self.finding(
            "socket-mode", Status.FAIL if extra else Status.PASS,
            f"{obs.path} has mode {obs.stat.mode_octal}"
            + (f": bits {extra:04o} beyond {allowed_mode:04o} give others the daemon" if extra else ""),
            observed=obs.stat.mode_octal, expected=f"at most {allowed_mode:04o}", path=obs.path))
        if obs.acl_error:
            out.append(self.finding("socket-acl", Status.FAIL, f"ACL unreadable: {obs.acl_error}",
                                    observed=obs.acl_error, expected="no extra ACL entries", path=obs.path))
        else:
            bad = self._bad_acl(obs, s)
            out.append(self.finding(
                "socket-acl", Status.FAIL if bad else Status.PASS,
                f"ACL entries {bad} grant access to the daemon" if bad else "no extra ACL entries",
                observed=bad or [e.render({}) for e in obs.acl or []] or None,
                expected=s.allowed_acl or "no named ACL entries", path=obs.path))
        return out

    def remediate(self, ctx: Context, finding: Finding, observed: Any) -> Outcome:
        assert isinstance(observed, SocketObservation)
        s = self._settings(ctx.policy)
        st = observed.stat
        if st is None or st.kind != "socket":
            return Outcome(False, False, f"{observed.path} is not a socket; not touched")
        if finding.rule == "socket-mode":
            new_mode = st.mode & file_mode_bits(s.file_mode)
            ctx.host.chmod(observed.path, new_mode, expect=st)
            return Outcome(True, True, f"chmod {new_mode:04o} {observed.path}",
                           {"old_mode": st.mode_octal, "new_mode": f"{new_mode:04o}"})
        if finding.rule == "socket-owner":
            if observed.want_uid is None or observed.want_gid is None:
                return Outcome(False, False, f"{s.owner}:{s.group} does not exist on this host")
            ctx.host.chown(observed.path, observed.want_uid, observed.want_gid, expect=st)
            return Outcome(True, True, f"chown {s.owner}:{s.group} {observed.path}")
        if finding.rule == "socket-acl":
            return self._strip_forbidden(ctx, observed, s)
        return super().remediate(ctx, finding, observed)

    def _strip_forbidden(self, ctx: Context, obs: SocketObservation, s: SocketPolicy) -> Outcome:
        """`setfacl -x` of exactly the forbidden entries: allowed ones stay byte-identical.

        The xattr is read again here, not taken from the observation: an entry an admin added
        since the pass observed must survive too (it is judged on the next pass).
        """
        blob = ctx.host.getxattr(obs.path, ACL_XATTR)
        if not blob:
            return Outcome(False, True, f"{obs.path} has no ACL any more")
        try:
            edit = drop_entries(blob, lambda e: not acl_entry_allowed(e, s.allowed_acl, obs.uid_names, obs.gid_names),
                                mask_cap=(file_mode_bits(s.file_mode) >> 3) & 0o7)
        except ValueError as exc:  # the kernel validates ACLs, so this is not one: leave it to a human
            return Outcome(False, False, f"{obs.path}: ACL not understood, not touched: {exc}")
        removed = [e.render(obs.uid_names if e.tag == "user" else obs.gid_names) for e in edit.removed]
        if not removed:
            return Outcome(False, True, f"{obs.path}: no forbidden ACL entry left")
        # The kernel sets the mode's group bits from the new mask.
        ctx.host.setxattr(obs.path, ACL_XATTR, edit.blob, expect=obs.stat)
        return Outcome(True, True, f"removed ACL entries {removed} from {obs.path} (setfacl -x)",
                       {"removed": list(removed)})
