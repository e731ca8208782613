"""Editing /etc/group and /etc/gshadow the way shadow-utils does, so we never race `usermod`.

shadow-utils takes `lckpwdf()` (a POSIX fcntl lock on /etc/.pwd.lock; `lockf`, because flock
does not exclude it), then `<file>.lock` made by link() of a file holding its pid, then writes
and renames. We take the same locks in the same order. A `.lock` left by a process we cannot
prove dead is never stolen: across pid namespaces a live holder looks dead, so we give up and
retry on the next pass instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Collection, Iterator

from nodeguard.host import HostRoot, NotRegularFile, file_kind
from nodeguard.locking import acquire_by

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
def file_lock(host: HostRoot, host_path: str) -> Iterator[None]:
    """`<file>.lock`, created by link() like shadow-utils' commonio_lock_nowait()."""
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
            os.link(tmp, lock, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            raise LockBusy(errno.EBUSY, f"{lock_path} exists; not stealing it") from None
        finally:
            os.unlink(tmp, dir_fd=dfd)
        try:
            yield
        finally:
            os.unlink(lock, dir_fd=dfd)


def remove_member_line(line: str, group: str, member: str, members_field: int) -> str:
    """Drop `member` from one group/gshadow line; other lines and spacing stay as they were."""
    return _drop_members(line, group, frozenset({member}), members_field)


def _drop_members(line: str, group: str, gone: frozenset[str], members_field: int) -> str:
    parts = line.split(":")
    if parts[0] != group or len(parts) <= members_field:
        return line
    members = parts[members_field].split(",")
    if not any(m.strip() in gone for m in members):
        return line
    parts[members_field] = ",".join(m for m in members if m.strip() and m.strip() not in gone)
    return ":".join(parts)


def _rewrite(text: str, group: str, gone: frozenset[str], members_fields: tuple[int, ...]) -> str:
    lines = text.split("\n")
    for members_field in members_fields:
        lines = [_drop_members(ln, group, gone, members_field) for ln in lines]
    return "\n".join(lines)


def remove_group_member(host: HostRoot, group: str, member: str, *,
                        lock_timeout: float = LOCK_TIMEOUT_S) -> list[str]:
    """Remove `member` from `group` in /etc/group and /etc/gshadow; returns the files changed."""
    return remove_group_members(host, group, [member], lock_timeout=lock_timeout)


def remove_group_members(host: HostRoot, group: str, members: Collection[str], *,
                         lock_timeout: float = LOCK_TIMEOUT_S) -> list[str]:
    """Remove every one of `members` from `group` under one lock and one rewrite per file.

    A member at a time would rewrite a 1 MB /etc/group 100,000 times for a group of 100,000.
    """
    gone = frozenset(members)
    changed = []
    # gshadow: field 2 lists the group's admins (who may add members), field 3 its members.
    files = [(path, fields) for path, fields in (("/etc/group", (3,)), ("/etc/gshadow", (2, 3)))
             if host.stat(path) is not None]
    with lckpwdf(host, lock_timeout), contextlib.ExitStack() as locks:
        # Both .lock files before either write, as gpasswd does: a busy gshadow.lock must not
        # leave the member removed from group but still listed in gshadow.
        for path, _ in files:
            locks.enter_context(file_lock(host, path))
        for path, members_fields in files:
            # surrogateescape: bytes that are not UTF-8 go back out exactly as they came in.
            before = host.read_bytes(path).decode("utf-8", "surrogateescape")
            after = _rewrite(before, group, gone, members_fields)
            if after != before:
                host.write_atomic(path, after.encode("utf-8", "surrogateescape"), expect=host.lstat(path))
                changed.append(path)
    return changed
