"""inotify watches that turn host changes into "look again at control X" triggers.

Folders, never files: editors and shadow-utils replace files by rename, and dockerd deletes and
re-creates its socket; a watch on the file itself would die with the old inode.

One thread reads one inotify descriptor (libc through ctypes, no library in between) and hands
each event's targets to the engine; it does no other I/O. watchdog was used here first; it costs
three thread hand-offs per event (buffer, emitter, dispatcher: each waits for the interpreter lock
while a lane works), a thread per watched folder, and it holds an unpaired IN_MOVED_FROM for 0.5 s
with every event queued behind it (a `mv daemon.json away` delayed the socket's revert by 0.5 s).
A queue overflow (IN_Q_OVERFLOW), which watchdog only logged, asks for a full resync here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from nodeguard.limits import explain_inotify_error

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], None]
RESYNC = "*"  # trigger target meaning "every control"

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
# Only changes: opening or reading a file (our own reads of /etc/group included) must not wake us,
# or every evaluation would trigger the next one.
CHANGE_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
               | IN_DELETE_SELF | IN_MOVE_SELF)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_KINDS = ((IN_CREATE, "created"), (IN_DELETE, "deleted"), (IN_MOVED_FROM, "moved"), (IN_MOVED_TO, "moved"),
          (IN_CLOSE_WRITE, "closed"), (IN_MODIFY, "modified"), (IN_ATTRIB, "attrib"),
          (IN_DELETE_SELF, "deleted"), (IN_MOVE_SELF, "moved"))


class Watcher(Protocol):
    """Anything that can wake the engine: inotify here, netlink or the Docker events stream elsewhere."""

    def start(self, trigger: Trigger) -> None: ...

    def stop(self) -> None: ...


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def kind_of(mask: int) -> str:
    return next((name for bit, name in _KINDS if mask & bit), "changed")


class FolderWatcher:
    """Watches real folders; `folders` maps a real folder to the targets it wakes. Targets in
    `attrib_blind` are not woken by a mode/owner/ACL change (IN_ATTRIB) alone."""

    def __init__(self, folders: dict[Path, set[str]], attrib_blind: frozenset[str] = frozenset()) -> None:
        self.folders = folders
        self.attrib_blind = attrib_blind
        self.failed: dict[str, str] = {}
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._watches: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, trigger: Trigger) -> None:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            # EMFILE: fs.inotify.max_user_instances reached. The periodic resync still covers every
            # folder; say so instead of failing the agent.
            err = ctypes.get_errno()
            self.failed["*"] = explain_inotify_error(OSError(err, os.strerror(err)), "(every folder)")
            log.error("%s", self.failed["*"])
            return
        merged: dict[Path, set[str]] = {}
        for folder, targets in self.folders.items():
            # A folder that does not exist yet (no /etc/docker before Docker is installed): watch its
            # nearest parent, so its creation wakes the controls; the resync covers the rest.
            merged.setdefault(nearest_existing(folder), set()).update(targets)
        for folder, targets in sorted(merged.items()):
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), CHANGE_MASK)
            if wd < 0:
                # ENOSPC: fs.inotify.max_user_watches reached. The periodic resync still covers this
                # folder; say so instead of failing the agent.
                err = ctypes.get_errno()
                self.failed[str(folder)] = explain_inotify_error(OSError(err, os.strerror(err)), str(folder))
                log.error("%s", self.failed[str(folder)])
                continue
            ordered = tuple(sorted(targets))
            entry = self._watches.get(wd)
            if entry is not None:  # two paths of one folder (a symlink): one watch, both target sets
                ordered = tuple(sorted({*entry[1], *ordered}))
            self._watches[wd] = (str(folder), ordered, tuple(t for t in ordered if t not in self.attrib_blind))
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(trigger,), name="nodeguard-inotify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    def _run(self, trigger: Trigger) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping.is_set():
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            if self._stopping.is_set():
                return
            if not any(fd == self._fd for fd, _ in ready):
                continue
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                log.error("inotify read failed (%s): the periodic resync covers the watched folders", exc)
                return
            try:
                self._dispatch(data, trigger)
            except Exception:  # a trigger must never end the reader
                log.exception("inotify dispatch failed")

    def _dispatch(self, data: bytes, trigger: Trigger) -> None:
        # One trigger per target per read: a burst (usermod's four files) wakes each lane once.
        woken: dict[str, str] = {}
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size: offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflow: a full resync")
                woken.setdefault(RESYNC, "inotify queue overflow")
                continue
            entry = self._watches.get(wd)
            if entry is None:
                continue
            folder, targets, attrib_targets = entry
            if mask & IN_IGNORED:
                # The folder itself went away (deleted, unmounted): its controls look, the resync
                # (and a restart of the watches by a reload) covers the rest.
                log.warning("inotify watch on %s ended", folder)
            chosen = attrib_targets if mask & CHANGE_MASK == IN_ATTRIB else targets
            if not chosen:
                continue
            reason = f"{kind_of(mask)} {folder}/{os.fsdecode(name)}" if name else f"{kind_of(mask)} {folder}"
            for target in chosen:
                woken.setdefault(target, reason)
        for target, reason in woken.items():
            trigger(target, reason)
