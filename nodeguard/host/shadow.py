"""Editing /etc/group and /etc/gshadow the way shadow-utils does, so we never race `usermod`.

shadow-utils takes `lckpwdf()` (a POSIX fcntl lock on /etc/.pwd.lock; `lockf`, because flock
does not exclude it), then `<file>.lock` made by link() of a file holding its pid, then writes
and renames. We take the same locks in the same order.

A `.lock` is released as stale the way shadow-utils' commonio does it (the pid it holds no longer
exists), but only when nodeguard sees the host's own pid namespace (the initial one: the chart runs
with hostPID). Anywhere else a live holder in another namespace looks dead, so the lock is never
stolen and the pass retries later. The fcntl lock on .pwd.lock dies with its process by itself.

Lines are found the way glibc finds them (nodeguard.formats.nss_files): a member is removed from every line
that gives the group's gid, including a commented or blank-led line initgroups still reads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from nodeguard.formats import nss_files
from nodeguard.host import HostRoot, NotRegularFile, file_kind
from nodeguard.host.locking import acquire_by, pid_is_gone, started_after

PWD_LOCK = "/etc/.pwd.lock"
LOCK_TIMEOUT_S = 15.0  # what lckpwdf() waits


class LockBusy(OSError):
    pass


def _open_lock_file(host: HostRoot) -> int:
    """A writable descriptor on /etc/.pwd.lock that is surely a regular file of this root.

    Opened relative to the folder's descriptor; an existing entry is first opened O_PATH and checked,
    so a FIFO planted there cannot block us and a device's open() never runs.
    """
    with host.open_parent(PWD_LOCK, follow_last=False) as (dfd, name):
        try:
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                           dir_fd=dfd)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(PWD_LOCK, file_kind(st.st_mode))
        return os.open(f"/proc/self/fd/{pfd}", os.O_WRONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)


@contextlib.contextmanager
def lckpwdf(host: HostRoot, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    fd = _open_lock_file(host)
    try:
        try:
            acquire_by(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), timeout, 0.05)
        except OSError as exc:
            raise LockBusy(errno.EBUSY, f"{PWD_LOCK} is held by another process") from exc
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(host: HostRoot, host_path: str, proc: Path = Path("/proc")) -> Iterator[None]:
    """`<file>.lock`, created by link() like shadow-utils' commonio_lock_nowait(); a lock whose
    pid is provably gone (see `_release_if_stale`) is removed first, as commonio does."""
    with host.open_parent(host_path, follow_last=False) as (dfd, name):
        tmp = f"{name}.{os.getpid()}"
        lock = f"{name}.lock"
        lock_path = f"{host_path.rsplit('/', 1)[0]}/{lock}"
        # Never O_TRUNC an existing entry: a hard link planted under this name would carry the
        # truncation to another file. Unlink whatever is there, then create exclusively.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            os.write(fd, f"{os.getpid()}".encode())
        finally:
            os.close(fd)
        try:
            try:
                os.link(tmp, lock, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                if not _release_if_stale(dfd, lock, proc):
                    raise LockBusy(errno.EBUSY, f"{lock_path} exists; not stealing it") from None
                try:
                    os.link(tmp, lock, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                except FileExistsError:  # someone else took it in between: theirs now
                    raise LockBusy(errno.EBUSY, f"{lock_path} exists; not stealing it") from None
        finally:
            os.unlink(tmp, dir_fd=dfd)
        try:
            yield
        finally:
            os.unlink(lock, dir_fd=dfd)


# A lock file holds a decimal pid; anything longer is not shadow-utils' and is never judged.
_LOCK_READ_LIMIT = 32


def _release_if_stale(dfd: int, lock: str, proc: Path) -> bool:
    """Unlink `lock` when the pid it names provably no longer exists; True if it was removed.

    shadow-utils' rule (commonio.c, do_lock_file): read the pid, kill(pid, 0), ESRCH means stale.
    Also stale: a live pid whose process started after the lock file was written (recycled).
    Proof needs the host's pid namespace (locking.pid_is_gone); an unreadable, empty or odd lock
    file is never stale. The file is checked by inode before the unlink so that a lock taken by
    someone else in between is not the one removed.
    """
    try:
        # O_PATH first: a device planted as the lock is never open()ed (no driver code runs).
        pfd = os.open(lock, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return False
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            return False
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, _LOCK_READ_LIMIT).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        os.close(pfd)
    pid = nss_files.strtoul_id(text) if text.isdigit() else None
    if pid is None or pid <= 0:
        return False
    # Gone (commonio's own rule), or alive but started after the lock was written: a recycled pid,
    # e.g. nodeguard's own SIGKILLed instance whose pid went to some later process.
    if not (pid_is_gone(pid, proc) or started_after(pid, st.st_mtime, proc)):
        return False
    try:
        now = os.stat(lock, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return False
    os.unlink(lock, dir_fd=dfd)
    return True


def remove_member_line(line: str, group: str, member: str, members_field: int) -> str:
    """Drop `member` from one line of `group` (gshadow-style: by name); other bytes stay as they were."""
    entries, _ = nss_files.gshadow_lines(line)
    if not entries or entries[0].name != group:
        return line
    return nss_files.drop_members(line, frozenset({member}), members_field)


def rewrite_group(text: str, group: str, gone: frozenset[str]) -> str:
    """/etc/group without `gone` in any line that grants the group's gid, as initgroups reads them."""
    entries, _ = nss_files.group_lines(text)
    gids = nss_files.docker_gids(entries, group)
    hit = {e.line for e in entries if e.init_gid in gids and gone.intersection(e.init_members)}
    if not hit:
        return text
    lines = text.split("\n")
    for number in hit:
        lines[number - 1] = nss_files.drop_members(lines[number - 1], gone, 3, limit=3)
    return "\n".join(lines)


def rewrite_gshadow(text: str, group: str, gone: frozenset[str]) -> str:
    """/etc/gshadow without `gone` among the admins (field 2) or members (field 3) of every `group` line."""
    entries, _ = nss_files.gshadow_lines(text)
    hit = {e.line for e in entries if e.name == group and gone.intersection(e.admins + e.members)}
    if not hit:
        return text
    lines = text.split("\n")
    for number in hit:
        lines[number - 1] = nss_files.drop_members(nss_files.drop_members(lines[number - 1], gone, 2), gone, 3)
    return "\n".join(lines)


def lock_passwords(text: str, group: str, gshadow: bool) -> str:
    """Every usable password of `group` replaced by `!` (locked), in gshadow or group format."""
    if gshadow:
        hit = {e.line for e in nss_files.gshadow_lines(text)[0]
               if e.name == group and nss_files.is_usable_password(e.password)}
    else:
        hit = {e.line for e in nss_files.group_lines(text)[0]
               if e.listed and e.name == group and nss_files.is_usable_password(e.password)}
    if not hit:
        return text
    lines = text.split("\n")
    for number in hit:
        # The blank-led form keeps its blanks: set_password edits fields, not the name.
        lines[number - 1] = nss_files.set_password(lines[number - 1], "!")
    return "\n".join(lines)


Edit = Callable[[str, bool], str]  # (file text, is gshadow) -> new text


def edit_group_files(host: HostRoot, edit: Edit, *, lock_timeout: float = LOCK_TIMEOUT_S,
                     proc: Path = Path("/proc")) -> list[str]:
    """Apply `edit` to /etc/group and /etc/gshadow under shadow-utils' locks; returns the files changed."""
    changed = []
    files = [path for path in ("/etc/group", "/etc/gshadow") if host.stat(path) is not None]
    with lckpwdf(host, lock_timeout), contextlib.ExitStack() as locks:
        # Both .lock files before either write, as gpasswd does: a busy gshadow.lock must not
        # leave the member removed from group but still listed in gshadow.
        for path in files:
            locks.enter_context(file_lock(host, path, proc))
        for path in files:
            # surrogateescape: bytes that are not UTF-8 go back out exactly as they came in.
            before = host.read_bytes(path).decode("utf-8", "surrogateescape")
            after = edit(before, path == "/etc/gshadow")
            if after != before:
                host.write_atomic(path, after.encode("utf-8", "surrogateescape"), expect=host.lstat(path))
                changed.append(path)
    return changed


def remove_group_member(host: HostRoot, group: str, member: str, *,
                        lock_timeout: float = LOCK_TIMEOUT_S) -> list[str]:
    """Remove `member` from `group` in /etc/group and /etc/gshadow; returns the files changed."""
    return remove_group_members(host, group, [member], lock_timeout=lock_timeout)


def remove_group_members(host: HostRoot, group: str, members: Collection[str], *,
                         lock_timeout: float = LOCK_TIMEOUT_S, proc: Path = Path("/proc")) -> list[str]:
    """Remove every one of `members` from `group` under one lock and one rewrite per file.

    A member at a time would rewrite a 1 MB /etc/group 100,000 times for a group of 100,000.
    """
    gone = frozenset(members)

    def edit(text: str, is_gshadow: bool) -> str:
        return rewrite_gshadow(text, group, gone) if is_gshadow else rewrite_group(text, group, gone)

    return edit_group_files(host, edit, lock_timeout=lock_timeout, proc=proc)


def lock_group_password(host: HostRoot, group: str, *, lock_timeout: float = LOCK_TIMEOUT_S,
                        proc: Path = Path("/proc")) -> list[str]:
    """Lock (`!`) every usable password of `group` in gshadow and group; returns the files changed."""
    return edit_group_files(host, lambda text, is_gshadow: lock_passwords(text, group, is_gshadow),
                            lock_timeout=lock_timeout, proc=proc)
