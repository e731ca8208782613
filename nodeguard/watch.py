"""inotify watches that turn host changes into "look again at control X" triggers.

Folders, never files: editors and shadow-utils replace files by rename, and dockerd deletes and
re-creates its socket; a watch on the file itself would die with the old inode.

Through watchdog's inotify layer (`InotifyFD`: one inotify descriptor, one reader thread, a
callback per event), not its Observer: the Observer costs three thread hand-offs per event
(buffer, emitter, dispatcher: each waits for the interpreter lock while a lane works), a thread per
watched folder, and it holds an unpaired IN_MOVED_FROM for 0.5 s with every event queued behind it
(a `mv daemon.json away` delayed the socket's revert by 0.5 s). Here the reader thread hands each
event's targets straight to the engine and does no other I/O. A queue overflow (IN_Q_OVERFLOW),
which the Observer only logs, asks for a full resync.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from watchdog.observers.inotify_c import CallbackId, InotifyEvent, InotifyFD, Mask, WatchDescriptor

from nodeguard.limits import explain_inotify_error

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], None]
RESYNC = "*"  # trigger target meaning "every control"

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
# Only changes: opening or reading a file (our own reads of /etc/group included) must not wake us,
# or every evaluation would trigger the next one.
CHANGE_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
               | IN_DELETE_SELF | IN_MOVE_SELF)
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


def kind_of(mask: int) -> str:
    return next((name for bit, name in _KINDS if mask & bit), "changed")


class FolderWatcher:
    """Watches real folders; `folders` maps a real folder to the targets it wakes. Targets in
    `attrib_blind` are not woken by a mode/owner/ACL change (IN_ATTRIB) alone."""

    def __init__(self, folders: dict[Path, set[str]], attrib_blind: frozenset[str] = frozenset()) -> None:
        self.folders = folders
        self.attrib_blind = attrib_blind
        self.failed: dict[str, str] = {}
        self._inotify: InotifyFD | None = None
        self._trigger: Trigger | None = None
        # wd -> (folder, targets, targets an IN_ATTRIB alone wakes)
        self._watches: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

    def start(self, trigger: Trigger) -> None:
        try:
            inotify = InotifyFD()
        except OSError as exc:
            # EMFILE: fs.inotify.max_user_instances reached. The periodic resync still covers every
            # folder; say so instead of failing the agent.
            self.failed["*"] = explain_inotify_error(exc, "(every folder)")
            log.error("%s", self.failed["*"])
            return
        inotify.name = "nodeguard-inotify"
        self._trigger = trigger
        merged: dict[Path, set[str]] = {}
        for folder, targets in self.folders.items():
            # A folder that does not exist yet (no /etc/docker before Docker is installed): watch its
            # nearest parent, so its creation wakes the controls; the resync covers the rest.
            merged.setdefault(nearest_existing(folder), set()).update(targets)
        for folder, targets in sorted(merged.items()):
            ordered = tuple(sorted(targets))
            try:
                wd = inotify.add_callback(os.fsencode(folder), Mask(CHANGE_MASK), self, CallbackId(0))
            except OSError as exc:
                # ENOSPC: fs.inotify.max_user_watches reached. The periodic resync still covers this
                # folder; say so instead of failing the agent.
                self.failed[str(folder)] = explain_inotify_error(exc, str(folder))
                log.error("%s", self.failed[str(folder)])
                continue
            entry = self._watches.get(wd)
            if entry is not None:  # two paths of one folder (a symlink): one watch, both target sets
                ordered = tuple(sorted({*entry[1], *ordered}))
            self._watches[wd] = (str(folder), ordered, tuple(t for t in ordered if t not in self.attrib_blind))
        self._inotify = inotify
        inotify.start()

    def stop(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.stop()  # closes the descriptor and wakes the reader
            inotify.join(timeout=5)

    # -- watchdog's WatchCallback: called on the reader thread, one event at a time ------------

    def on_event(self, event: InotifyEvent) -> None:
        try:
            self._dispatch(event.wd, event.mask, event.name)
        except Exception:  # a trigger must never end the reader
            log.exception("inotify dispatch failed")

    def on_queue_overflow(self) -> None:
        log.warning("inotify queue overflow: a full resync")
        if self._trigger is not None:
            self._trigger(RESYNC, "inotify queue overflow")

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        entry = self._watches.get(wd)
        if entry is None or self._inotify is None:
            return  # our own stop() removes every watch
        # The folder itself went away (deleted, unmounted): its controls look, the resync (and a
        # restart of the watches by a reload) covers the rest.
        log.warning("inotify watch on %s ended", entry[0])
        self._dispatch(wd, IN_DELETE_SELF, b"")

    def _dispatch(self, wd: int, mask: int, name: bytes) -> None:
        entry = self._watches.get(wd)
        if entry is None or self._trigger is None:
            return
        folder, targets, attrib_targets = entry
        chosen = attrib_targets if mask & CHANGE_MASK == IN_ATTRIB else targets
        if not chosen:
            return
        reason = f"{kind_of(mask)} {folder}/{os.fsdecode(name)}" if name else f"{kind_of(mask)} {folder}"
        for target in chosen:
            self._trigger(target, reason)
