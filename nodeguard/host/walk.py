"""Open a path inside a host root: the one walker every HostRoot operation goes through.

Contract (`Walker.open`): resolve `path` as if `root_fd` were `/` (a chroot): an absolute symlink
restarts at the root, `..` never climbs above it, at most MAX_SYMLINKS symlinks are followed, and
the result is an O_PATH descriptor (nothing is opened for real: no FIFO blocks, no driver runs).
A missing component raises FileNotFoundError; a loop or a non-folder in the middle raises
HostPathError.

Two implementations of that contract:

- `Openat2Walker`: the kernel does the walk in one call, openat2(2) with RESOLVE_IN_ROOT (Linux
  5.6+), so a symlink swapped in mid-walk is resolved inside the root atomically, and
  RESOLVE_NO_MAGICLINKS refuses /proc "magic links" (/proc/self/root, /proc/self/fd/N), whose
  target is not their text.
- `UserspaceWalker`: the fallback where openat2 is missing or filtered (ENOSYS, or EPERM under a
  seccomp profile). One component at a time, each opened O_PATH|O_NOFOLLOW relative to the
  descriptor of the folder above; a symlink is read through its own descriptor and its text walked
  again from the root (absolute) or from the folder that holds it (relative). No path string is
  ever handed to the kernel to resolve on its own, so a folder swapped for a symlink between two
  steps is either never followed (we hold the old folder) or read as text and kept inside the root.
  A magic link is read as text too: it never jumps anywhere the text does not say.

`default_walker()` picks openat2 when this kernel lets us call it; DEFAULT ("auto", "openat2",
"userspace") lets tests run everything on one implementation.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections import deque
from collections.abc import Callable
from typing import Protocol

MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS: the 41st symlink of one walk is a loop

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic and x86_64 agree)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
# openat2 returns EAGAIN when a rename raced a `..` inside the walk: try again, a bounded number of
# times, then walk in userspace (which holds the folders it climbs back to).
_EAGAIN_RETRIES = 64


class HostPathError(OSError):
    """A host path could not be resolved safely (loop, too deep, or a component is not a folder)."""


class Walker(Protocol):
    name: str

    def open(self, root_fd: int, path: str, *, follow_last: bool, directory: bool = False) -> int:
        """An O_PATH descriptor (the caller closes it) on `path` resolved inside `root_fd`.

        follow_last=False opens a final symlink itself; directory=True requires a folder.
        """
        ...


def components(path: str) -> list[str]:
    """The names of a path, without the empty and "." ones (`..` is kept: it means something)."""
    return [p for p in path.split("/") if p not in ("", ".")]


class UserspaceWalker:
    name = "userspace"

    def open(self, root_fd: int, path: str, *, follow_last: bool, directory: bool = False) -> int:
        parts = deque(components(path))
        stack: list[int] = []  # descriptors we own, from below the root down to the current folder
        hops = 0
        try:
            while parts:
                name = parts.popleft()
                if name == "..":
                    if stack:  # at the root, `..` is the root
                        os.close(stack.pop())
                    continue
                here = stack[-1] if stack else root_fd
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
                keep = False
                try:
                    st = os.fstat(fd)
                    last = not parts
                    if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                        hops += 1
                        if hops > MAX_SYMLINKS:
                            raise HostPathError(errno.ELOOP, f"{path}: too many symlinks")
                        # Read through the link's own descriptor: the name may already be something else.
                        target = os.readlink("", dir_fd=fd)
                        if target.startswith("/"):
                            while stack:
                                os.close(stack.pop())
                        parts.extendleft(reversed(components(target)))
                        continue
                    if (not last or directory) and not stat.S_ISDIR(st.st_mode):
                        raise HostPathError(errno.ENOTDIR, f"{path}: {name} is not a folder")
                    stack.append(fd)
                    keep = True
                finally:
                    if not keep:
                        os.close(fd)
            if stack:
                return stack.pop()
            return os.dup(root_fd)
        finally:
            for fd in stack:
                os.close(fd)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Callable[..., int]:
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    return fn


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """The raw openat2(2) call; an OSError carries the kernel's errno."""
    how = _OpenHow(flags, 0, resolve)
    fd = _syscall()(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                 ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)}: {path}")
    return int(fd)


class Openat2Walker:
    name = "openat2"

    def __init__(self, fallback: Walker | None = None) -> None:
        self._fallback = fallback or UserspaceWalker()
        self._refused = False

    def open(self, root_fd: int, path: str, *, follow_last: bool, directory: bool = False) -> int:
        if self._refused:
            return self._fallback.open(root_fd, path, follow_last=follow_last, directory=directory)
        # The names as the userspace walker sees them: a trailing "/" or "/." does not demand a folder.
        path = "/".join(components(path)) or "."
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow_last else os.O_NOFOLLOW) | (os.O_DIRECTORY if directory else 0)
        for _ in range(_EAGAIN_RETRIES):
            try:
                return openat2(root_fd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    continue
                if exc.errno in (errno.ENOSYS, errno.EPERM):
                    # Not in this kernel, or filtered by a seccomp profile: the same walk, by hand.
                    self._refused = True
                    return self._fallback.open(root_fd, path, follow_last=follow_last, directory=directory)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise HostPathError(exc.errno, f"{path}: {os.strerror(exc.errno)}") from None
                raise
        # Renames kept racing the kernel's `..` checks: the userspace walker answers without them.
        return self._fallback.open(root_fd, path, follow_last=follow_last, directory=directory)


@functools.cache
def openat2_available() -> bool:
    """Whether this kernel runs openat2 with RESOLVE_IN_ROOT for us (not missing, not filtered)."""
    try:
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(openat2(root, ".", os.O_PATH | os.O_CLOEXEC, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS))
        return True
    except OSError:
        return False
    finally:
        os.close(root)


WALKERS: dict[str, type[Openat2Walker] | type[UserspaceWalker]] = {"openat2": Openat2Walker,
                                                                   "userspace": UserspaceWalker}
DEFAULT = "auto"  # or a key of WALKERS: tests set it to run every HostRoot on one implementation


def default_walker() -> Walker:
    if DEFAULT == "auto":
        return Openat2Walker() if openat2_available() else UserspaceWalker()
    return WALKERS[DEFAULT]()
