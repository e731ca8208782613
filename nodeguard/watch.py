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
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from watchdog.observers.inotify_c import CallbackId, InotifyEvent, InotifyFD, Mask, WatchDescriptor

from nodeguard.limits import explain_inotify_error
from nodeguard.priority import make_realtime

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

# Names that never carry what a control reads: shadow-utils' locks (`/etc/.pwd.lock`, `group.lock`,
# and `group.<pid>`, the file a lock is linked from) and nodeguard's own temporary files (a safe
# write's `.<name>.nodeguard-<pid>.tmp`). Every step of a group revert (or of usermod's) makes
# several of them in /etc: each would wake every lane that watches /etc in the middle of that
# revert. The change they lead up to is a rename of the real file, which wakes whom it concerns.
NOISE = re.compile(rb"\.pwd\.lock|(?:passwd|shadow|group|gshadow|subuid|subgid)\.(?:lock|\d+)|\..+\.nodeguard-\d+\.tmp")

# folder -> target -> the only entry names in that folder that concern the target (absent: any)
NameFilters = dict[Path, dict[str, frozenset[str]]]


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


class _Watch:
    """What one watched folder wakes: targets, those an IN_ATTRIB alone wakes, and the names some of
    them are limited to (an event naming no entry, on the folder itself, wakes them all)."""

    __slots__ = ("attrib_targets", "folder", "only", "targets")

    def __init__(self, folder: str, targets: tuple[str, ...], attrib_targets: tuple[str, ...],
                 only: dict[str, frozenset[bytes]]) -> None:
        self.folder = folder
        self.targets = targets
        self.attrib_targets = attrib_targets
        self.only = only


def _merge_limits(a: tuple[str, ...], a_only: dict[str, frozenset[bytes]], b: tuple[str, ...],
                  b_only: dict[str, frozenset[bytes]]) -> dict[str, frozenset[bytes]]:
    """The name limits of two target sets on one watch: unlimited on either side wins, else the union."""
    out: dict[str, frozenset[bytes]] = {}
    for target in {*a, *b}:
        sides = [only.get(target) for targets, only in ((a, a_only), (b, b_only)) if target in targets]
        if all(limit is not None for limit in sides):
            out[target] = frozenset().union(*(limit for limit in sides if limit is not None))
    return out


class FolderWatcher:
    """Watches real folders; `folders` maps a real folder to the targets it wakes. Targets in
    `attrib_blind` are not woken by a mode/owner/ACL change (IN_ATTRIB) alone. `only` limits a
    target to some entry names of a folder (the docker group reads three files of the busy /etc).
    A folder that does not exist yet wakes its targets only when its own name appears in the
    nearest parent that does."""

    def __init__(self, folders: dict[Path, set[str]], attrib_blind: frozenset[str] = frozenset(),
                 only: NameFilters | None = None, *, realtime: bool = False) -> None:
        self.folders = folders
        # The reader thread at real-time priority (nodeguard/priority.py): it is first on every revert's path.
        self.realtime = realtime
        self.attrib_blind = attrib_blind
        self.only = only or {}
        self.failed: dict[str, str] = {}
        self._inotify: InotifyFD | None = None
        self._trigger: Trigger | None = None
        self._watches: dict[int, _Watch] = {}

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
        # target -> names it is limited to in that folder; None: any name (wins over any limit)
        limits: dict[Path, dict[str, set[bytes] | None]] = {}
        for folder, targets in self.folders.items():
            # A folder that does not exist yet (no /etc/docker before Docker is installed): watch its
            # nearest parent, so its creation wakes the controls; the resync covers the rest.
            real = nearest_existing(folder)
            merged.setdefault(real, set()).update(targets)
            wanted = self.only.get(folder, {})
            for target in targets:
                if real != folder:
                    names: set[bytes] | None = {os.fsencode(folder.relative_to(real).parts[0])}
                else:
                    names = {os.fsencode(n) for n in wanted[target]} if target in wanted else None
                per_folder = limits.setdefault(real, {})
                if target not in per_folder:
                    per_folder[target] = names
                else:
                    prev = per_folder[target]
                    per_folder[target] = None if prev is None or names is None else prev | names
        for folder, targets in sorted(merged.items()):
            ordered = tuple(sorted(targets))
            only = {t: frozenset(n) for t, n in limits.get(folder, {}).items() if n is not None}
            try:
                with warnings.catch_warnings():
                    # One folder reached by two paths is one watch: watchdog warns that our (same)
                    # callback replaces itself; both paths' targets are merged just below.
                    warnings.filterwarnings("ignore", "Callback with id", RuntimeWarning)
                    wd = inotify.add_callback(os.fsencode(folder), Mask(CHANGE_MASK), self, CallbackId(0))
            except OSError as exc:
                # ENOSPC: fs.inotify.max_user_watches reached. The periodic resync still covers this
                # folder; say so instead of failing the agent.
                self.failed[str(folder)] = explain_inotify_error(exc, str(folder))
                log.error("%s", self.failed[str(folder)])
                continue
            entry = self._watches.get(wd)
            if entry is not None:  # two paths of one folder (a symlink): one watch, both target sets
                only = _merge_limits(entry.targets, entry.only, ordered, only)
                ordered = tuple(sorted({*entry.targets, *ordered}))
            self._watches[wd] = _Watch(str(folder), ordered, tuple(t for t in ordered if t not in self.attrib_blind),
                                       only)
        self._inotify = inotify
        inotify.start()
        if self.realtime and inotify.native_id is not None:
            make_realtime("the inotify reader", inotify.native_id)

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
        log.warning("inotify watch on %s ended", entry.folder)
        self._dispatch(wd, IN_DELETE_SELF, b"")

    def _dispatch(self, wd: int, mask: int, name: bytes) -> None:
        entry = self._watches.get(wd)
        if entry is None or self._trigger is None:
            return
        if name and NOISE.fullmatch(name):
            return
        chosen = entry.attrib_targets if mask & CHANGE_MASK == IN_ATTRIB else entry.targets
        if name and entry.only:
            chosen = tuple(t for t in chosen if t not in entry.only or name in entry.only[t])
        if not chosen:
            return
        folder = entry.folder
        reason = f"{kind_of(mask)} {folder}/{os.fsdecode(name)}" if name else f"{kind_of(mask)} {folder}"
        for target in chosen:
            self._trigger(target, reason)
