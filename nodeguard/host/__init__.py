"""Every host path goes through a HostRoot: `/` from a shell, `/host` in a pod, a temp folder in tests.

Paths are resolved *inside* the root the way a chroot would: an absolute symlink such as
`/var/run -> /run` lands on `<root>/run`, and `..` never climbs above the root. No module builds a
host path by string concatenation; they all ask a HostRoot. Every resolution, read, metadata change
and write goes through one walker (nodeguard.host.walk: openat2 with RESOLVE_IN_ROOT where the
kernel has it, a descriptor-by-descriptor userspace walk otherwise); `resolve` names the result
for messages and other programs, it is never what HostRoot itself opens.

Writes are safe by construction: a temporary file in the same folder (opened relative to the
folder's descriptor), fsync, rename over, fsync the folder; the target must be a regular file
(never a symlink, FIFO or folder); owner, mode, ACLs and other extended attributes are kept, and
a folder's default ACL never reaches the new file. Metadata changes (chmod/chown/ACL) go through
an O_PATH descriptor whose device/inode is compared with what was audited, so a file swapped
between the check and the change is refused, not modified.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nodeguard.host.atomic import replace_file
from nodeguard.host.walk import MAX_SYMLINKS as MAX_SYMLINKS
from nodeguard.host.walk import HostPathError as HostPathError
from nodeguard.host.walk import Walker, components, default_walker

# A host file larger than this is not read whole: it is reported instead. 64 MiB covers any
# sane daemon.json or /etc/group while bounding the agent's memory on a hostile host.
DEFAULT_READ_LIMIT = 64 * 1024 * 1024


class FileTooLarge(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{path} is {size} bytes, above the {limit}-byte limit")
        self.size = size
        self.limit = limit


class NotRegularFile(OSError):
    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{path} is a {kind}, not a regular file; refusing to touch it")
        self.kind = kind


class HardLinked(OSError):
    def __init__(self, path: str, links: int) -> None:
        super().__init__(errno.EMLINK, f"{path} has {links} hard links: a change would reach the other names too; "
                                       "not touched")
        self.links = links


class DiskFull(OSError):
    def __init__(self, path: str, size: int) -> None:
        super().__init__(errno.ENOSPC, f"no space left to write {size} bytes to {path}: the old file is kept whole, "
                                       "nothing was half-written")


class FileChanged(OSError):
    def __init__(self, path: str) -> None:
        super().__init__(errno.ESTALE, f"{path} was replaced between the check and the change; not touched")


@dataclass(frozen=True)
class FileStat:
    """What the audit needs of a file's metadata, detached from os.stat_result."""

    host_path: str
    uid: int
    gid: int
    mode: int  # permission bits only (07777)
    kind: str  # "file", "dir", "socket", "symlink", "fifo", "char", "block"
    size: int
    dev: int
    ino: int

    @property
    def mode_octal(self) -> str:
        return f"{self.mode:04o}"


def file_kind(st_mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
    ):
        if test(st_mode):
            return name
    return "unknown"


def _to_filestat(host_path: str, st: os.stat_result) -> FileStat:
    return FileStat(
        host_path=host_path,
        uid=st.st_uid,
        gid=st.st_gid,
        mode=stat.S_IMODE(st.st_mode),
        kind=file_kind(st.st_mode),
        size=st.st_size,
        dev=st.st_dev,
        ino=st.st_ino,
    )


class HostRoot:
    """A view of a host's filesystem rooted at `root`."""

    def __init__(self, root: str | os.PathLike[str] = "/", *, walker: Walker | None = None) -> None:
        self.root = Path(os.path.realpath(root))
        # openat2 where the kernel has it, the userspace walker otherwise (nodeguard.host.walk).
        self.walker = walker or default_walker()
        if not self.root.is_dir():
            raise HostPathError(errno.ENOTDIR, f"host root {self.root} is not a folder")

    def __repr__(self) -> str:
        return f"HostRoot({str(self.root)!r})"

    # -- path resolution ---------------------------------------------------------------------

    def resolve(self, host_path: str, *, follow_last: bool = True) -> Path:
        """Map an absolute host path to a real path under the root, following symlinks inside it.

        A missing component is fine (the result names where it would be); a loop or a
        non-folder in the middle raises HostPathError. The name is for messages and for the
        callers that hand a path to another program: HostRoot's own reads and writes go through
        descriptors, never through this string.
        """
        try:
            # Where it exists: one walk, and the kernel's name for what it opened.
            fd = self._open(host_path, follow_last=follow_last)
        except FileNotFoundError:
            with self._locate(host_path, follow_last=follow_last) as (dfd, name, missing):
                base = Path(os.readlink(f"/proc/self/fd/{dfd}"))
        else:
            try:
                base, name, missing = Path(os.readlink(f"/proc/self/fd/{fd}")), ".", []
            finally:
                os.close(fd)
        try:
            walked = base.relative_to(self.root).parts
        except ValueError:  # the folder was moved out of the root while we looked
            raise HostPathError(errno.EXDEV, f"{host_path}: left the host root while resolving") from None
        out: list[str] = []
        # Only what does not exist yet is collapsed by name: `..` after a missing folder.
        for p in (*walked, name, *missing):
            if p == "..":
                if out:
                    out.pop()
            elif p not in ("", "."):
                out.append(p)
        return self.root.joinpath(*out)

    def host_path_of(self, real: Path) -> str:
        """The host-side name of a real path under the root (for messages and events)."""
        try:
            rel = real.relative_to(self.root)
        except ValueError:
            return str(real)
        return "/" + str(rel) if str(rel) != "." else "/"

    def from_daemon_path(self, daemon_path: str) -> str:
        """Turn a path as dockerd sees it into a host path.

        dockerd names paths in the host's own namespace, which is what the host root maps. In a
        sandbox (tests, or a host root mounted somewhere odd) a daemon may already name a path
        under the root; such a path is taken as it is rather than prefixed twice.
        """
        if self.root != Path("/") and (daemon_path + "/").startswith(str(self.root) + "/"):
            return self.host_path_of(Path(daemon_path))
        return daemon_path

    # -- descriptor-relative walking ---------------------------------------------------------

    def _open(self, host_path: str, *, follow_last: bool, directory: bool = False) -> int:
        """An O_PATH descriptor on `host_path` inside the root, opened by the one walker."""
        with self._root_fd() as root_fd:
            return self.walker.open(root_fd, host_path, follow_last=follow_last, directory=directory)

    @contextlib.contextmanager
    def _root_fd(self) -> Iterator[int]:
        # Opened per call, not kept: a descriptor held across a fork or a long sleep is one more thing to get wrong.
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locate(self, host_path: str, *, follow_last: bool) -> Iterator[tuple[int, str, list[str]]]:
        """(descriptor of the deepest existing folder, the name below it, the missing names after it).

        The walker opens the folder part; the final name is looked at here because a caller that
        creates, renames or locks needs the folder and the name, not the file. A final symlink
        (followed) is read through its own descriptor and its text walked again: an absolute
        target from the root, a relative one from the folder that holds it (the folder part and the
        target joined: walking "a/b" is walking "b" from where "a" ends). When a folder on the way
        is missing, the deepest one that exists is returned with the rest of the names, so that
        `resolve` can name where the file would be.
        """
        with self._root_fd() as root_fd:
            walk = functools.partial(self.walker.open, root_fd, follow_last=True, directory=True)
            path = host_path
            hops = 0
            while True:
                parts = components(path)
                if not parts or parts[-1] == "..":
                    fd = walk(path)
                    name, missing = ".", list[str]()
                else:
                    folder, name = parts[:-1], parts[-1]
                    try:
                        fd = walk("/".join(folder))
                        missing = []
                    except FileNotFoundError:
                        fd, i, link = self._deepest(walk, folder)
                        if i == len(folder) or link is not None:
                            os.close(fd)
                            hops += 1  # walked again: bounded like any symlink
                            if hops > MAX_SYMLINKS:
                                raise HostPathError(errno.ELOOP, f"{host_path}: too many symlinks") from None
                            if link is not None:  # a dangling symlink on the way: its text is the way on
                                rest = [*folder[i + 1:], name]
                                path = "/".join([link, *rest] if link.startswith("/") else [*folder[:i], link, *rest])
                            continue
                        name, missing = folder[i], [*folder[i + 1:], name]
                    else:
                        link = self._final_link(fd, name) if follow_last else None
                        if link is not None:
                            os.close(fd)
                            hops += 1
                            if hops > MAX_SYMLINKS:
                                raise HostPathError(errno.ELOOP, f"{host_path}: too many symlinks")
                            path = link if link.startswith("/") else "/".join([*folder, link])
                            continue
                try:
                    yield fd, name, missing
                finally:
                    os.close(fd)
                return

    def _deepest(self, walk: Callable[[str], int], folder: list[str]) -> tuple[int, int, str | None]:
        """Where a folder path stops existing: (descriptor of the deepest folder that exists, the
        index of the first name that does not, that name's text when it is a dangling symlink).

        The index is len(folder) when every folder exists after all (created while we looked).
        """
        fd = walk("/")
        for i, name in enumerate(folder):
            try:
                nxt = walk("/".join(folder[:i + 1]))
            except FileNotFoundError:
                try:
                    return fd, i, self._final_link(fd, name)
                except BaseException:
                    os.close(fd)
                    raise
            os.close(fd)
            fd = nxt
        return fd, len(folder), None

    @staticmethod
    def _final_link(dfd: int, name: str) -> str | None:
        """The text of `name` in `dfd` when it is a symlink; None when it is not (or is missing)."""
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                return None
            return os.readlink("", dir_fd=fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_parent(self, host_path: str, *, follow_last: bool = True) -> Iterator[tuple[int, str]]:
        """(descriptor of the folder that holds the final component, its name), race-free.

        The folder is opened by the walker (see nodeguard.host.walk): no path string is ever handed
        to the kernel to resolve outside the root. The final name may not exist (a missing folder
        above it raises FileNotFoundError); when the path names a folder itself the name is ".".
        """
        with self._locate(host_path, follow_last=follow_last) as (dfd, name, missing):
            if missing:
                raise FileNotFoundError(errno.ENOENT, f"{host_path}: a folder on the way is missing")
            yield dfd, name

    @contextlib.contextmanager
    def _open_inode(self, host_path: str, *, follow_last: bool) -> Iterator[tuple[int, os.stat_result]]:
        """An O_PATH descriptor on the final component (a symlink itself when not followed).

        O_PATH opens nothing: no FIFO blocks, no device driver's open() runs (a planted
        /dev/watchdog named daemon.json must not arm the watchdog). Callers check the kind on the
        descriptor, then reopen it through /proc/self/fd, which names that very inode.
        """
        fd = self._open(host_path, follow_last=follow_last)
        try:
            yield fd, os.fstat(fd)
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------

    def lstat(self, host_path: str) -> FileStat | None:
        """Metadata of the final component itself (a symlink is reported as a symlink)."""
        try:
            with self._open_inode(host_path, follow_last=False) as (_, st):
                return _to_filestat(host_path, st)
        except FileNotFoundError:
            return None

    def stat(self, host_path: str) -> FileStat | None:
        """Metadata after following symlinks inside the root; None when missing."""
        try:
            with self._open_inode(host_path, follow_last=True) as (_, st):
                return _to_filestat(host_path, st)
        except FileNotFoundError:
            return None

    def exists(self, host_path: str) -> bool:
        return self.stat(host_path) is not None

    def read_bytes(self, host_path: str, *, limit: int = DEFAULT_READ_LIMIT, follow: bool = True) -> bytes:
        """Read a regular file whole, refusing symlinks (follow=False), FIFOs, devices and anything above `limit`."""
        with self._open_inode(host_path, follow_last=follow) as (pfd, st):
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(host_path, file_kind(st.st_mode))
            if st.st_size > limit:
                raise FileTooLarge(host_path, st.st_size, limit)
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            total = 0
            # The whole file in the first read when it can: one buffer, never chunks plus their join
            # (twice the file's size for a moment: 100 MB for a 50 MB daemon.json).
            size = min(st.st_size, limit) + 1
            while True:
                chunk = os.read(fd, size)
                size = 1 << 20
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:  # the file grew while we read it
                    raise FileTooLarge(host_path, total, limit)
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def holds(self, host_path: str, data: bytes, *, follow: bool = True) -> bool:
        """Whether the regular file holds exactly `data`, compared a MiB at a time: no second copy of
        a big file is made to learn that it did not change. False for anything else."""
        with self._open_inode(host_path, follow_last=follow) as (pfd, st):
            if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
                return False
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            pos = 0
            while chunk := os.read(fd, 1 << 20):
                if view[pos:pos + len(chunk)] != chunk:
                    return False
                pos += len(chunk)
            return pos == len(data)
        finally:
            os.close(fd)

    def read_text(self, host_path: str, *, limit: int = DEFAULT_READ_LIMIT) -> str:
        return self.read_bytes(host_path, limit=limit).decode("utf-8", errors="replace")

    def listdir(self, host_path: str) -> list[str]:
        try:
            with self._open_inode(host_path, follow_last=True) as (pfd, st):
                if not stat.S_ISDIR(st.st_mode):
                    return []
                fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)
        except FileNotFoundError:
            return []

    def getxattr(self, host_path: str, name: str) -> bytes | None:
        try:
            with self._open_inode(host_path, follow_last=False) as (fd, st):
                if stat.S_ISLNK(st.st_mode):
                    return None  # symlinks carry no ACL
                return os.getxattr(f"/proc/self/fd/{fd}", name)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise

    # -- changing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_path(self, host_path: str, expect: FileStat | None) -> Iterator[int]:
        """An O_PATH descriptor on the file itself (never a symlink), checked against `expect`.

        A non-folder with more than one hard link is refused: a chmod/chown acts on the inode, so
        a hard link planted under the watched name would carry the change to the other name too
        (`ln /etc/shadow /etc/docker/daemon.json`, then "fix" its mode to 0644).
        """
        with self._open_inode(host_path, follow_last=False) as (fd, st):
            if stat.S_ISLNK(st.st_mode):
                raise NotRegularFile(host_path, "symlink")
            if expect is not None and (st.st_dev, st.st_ino) != (expect.dev, expect.ino):
                raise FileChanged(host_path)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                raise HardLinked(host_path, st.st_nlink)
            yield fd

    def chmod(self, host_path: str, mode: int, *, expect: FileStat | None = None) -> None:
        with self._open_path(host_path, expect) as fd:
            # chmod through the O_PATH magic link acts on the opened inode, not on a name.
            os.chmod(f"/proc/self/fd/{fd}", mode)

    def chown(self, host_path: str, uid: int, gid: int, *, expect: FileStat | None = None) -> None:
        with self._open_path(host_path, expect) as fd:
            os.chown(f"/proc/self/fd/{fd}", uid, gid)

    def setxattr(self, host_path: str, name: str, value: bytes, *, expect: FileStat | None = None) -> None:
        with self._open_path(host_path, expect) as fd:
            os.setxattr(f"/proc/self/fd/{fd}", name, value)

    def removexattr(self, host_path: str, name: str, *, expect: FileStat | None = None) -> None:
        with self._open_path(host_path, expect) as fd:
            try:
                os.removexattr(f"/proc/self/fd/{fd}", name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise

    def write_atomic(
        self,
        host_path: str,
        data: bytes,
        *,
        default_mode: int = 0o644,
        default_owner: tuple[int, int] = (0, 0),
        expect: FileStat | None = None,
    ) -> None:
        """Replace a file in one step: readers see the old bytes or the new, never half of them.

        The new file gets the old one's owner, mode, POSIX ACL and every other extended attribute it
        can carry (SELinux label, user.*); a default ACL on the folder never reaches it.
        A full disk (ENOSPC/EDQUOT) raises DiskFull after removing the temporary file: the old
        file stays whole.
        """
        with self.open_parent(host_path, follow_last=False) as (pfd, name):
            # O_PATH descriptors cannot be fsync'ed: reopen the very same folder for real.
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        try:
            old_fd = None
            try:
                old_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                st = os.fstat(old_fd)
            except FileNotFoundError:
                if expect is not None:
                    raise FileChanged(host_path) from None
                mode, owner = default_mode, default_owner
                xattrs: dict[str, bytes] = {}
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise NotRegularFile(host_path, file_kind(st.st_mode))
                if expect is not None and (st.st_dev, st.st_ino) != (expect.dev, expect.ino):
                    raise FileChanged(host_path)
                mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
                xattrs = _read_xattrs(old_fd)
            finally:
                if old_fd is not None:
                    os.close(old_fd)
            def prepare(fd: int) -> None:
                os.fchown(fd, *owner)
                _copy_attributes(fd, xattrs)

            try:
                replace_file(dfd, name, data, mode=mode, prepare=prepare)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(host_path, len(data)) from exc
                raise
        finally:
            os.close(dfd)


ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"  # folders only: never on a file
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


def _read_xattrs(path_fd: int) -> dict[str, bytes]:
    """Every extended attribute of the file behind an O_PATH descriptor: ACL, SELinux label, user.*..."""
    path = f"/proc/self/fd/{path_fd}"
    try:
        names = os.listxattr(path)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return {}
        raise
    out = {}
    for attr in names:
        try:
            out[attr] = os.getxattr(path, attr)
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:
                raise
    return out


def _copy_attributes(fd: int, xattrs: dict[str, bytes]) -> None:
    """Give the new file the old one's extended attributes, as shadow-utils' commonio does.

    The access ACL always: the old one copied, or the one inherited from the folder's default ACL
    removed, so that a default ACL on /etc never widens a rewritten gshadow. A failure there stops
    the write. Any other attribute (the SELinux label, user.*, security.*) is copied where the
    kernel lets us; one it refuses (EPERM for trusted.*, ENOTSUP on a filesystem without them) is
    left out rather than failing the revert.
    """
    if ACL_ACCESS in xattrs:
        os.setxattr(fd, ACL_ACCESS, xattrs[ACL_ACCESS])
    else:
        try:
            os.removexattr(fd, ACL_ACCESS)
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:
                raise
    for attr, value in xattrs.items():
        if attr in (ACL_ACCESS, ACL_DEFAULT):
            continue
        try:
            os.setxattr(fd, attr, value)
        except OSError as exc:
            if exc.errno not in (*_NO_XATTRS, errno.EPERM, errno.EACCES, errno.EINVAL):
                raise


def expand_glob(pattern: str, list_dir: Callable[[str], list[str]]) -> list[str]:
    """Host paths matching an absolute glob, component by component through `list_dir` (so inside a
    host root, never through the agent's own filesystem), like glob(3): sorted per component, and a
    leading dot matched only by a pattern that starts with one. Literal components are kept as they
    are, existing or not: the caller stats what it needs."""
    found = ["/"]
    for part in [p for p in pattern.split("/") if p]:
        nxt = []
        for base in found:
            prefix = base.rstrip("/") + "/"
            if any(c in part for c in "*?["):
                nxt += [prefix + name for name in sorted(list_dir(base))
                        if fnmatch.fnmatchcase(name, part) and not (name.startswith(".") and not part.startswith("."))]
            else:
                nxt.append(prefix + part)
        found = nxt
    return found
