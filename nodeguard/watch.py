"""inotify watches (watchdog) that turn host changes into "look again at control X" triggers.

Folders, never files: editors and shadow-utils replace files by rename, and dockerd deletes and
re-creates its socket; a watch on the file itself would die with the old inode. The handler does
no I/O: it maps the event's folder to control names and hands them to the engine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from nodeguard.limits import explain_inotify_error

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], None]
RESYNC = "*"  # trigger target meaning "every control"

# Only changes: opening or reading a file (our own reads of /etc/group included) must not wake us,
# or every evaluation would trigger the next one.
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent, FileAttribEvent,
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent, DirAttribEvent,
]


class Watcher(Protocol):
    """Anything that can wake the engine: inotify here, netlink or the Docker events stream elsewhere."""

    def start(self, trigger: Trigger) -> None: ...

    def stop(self) -> None: ...


ATTRIB_EVENTS = (FileAttribEvent, DirAttribEvent)


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: str, targets: Iterable[str], trigger: Trigger,
                 attrib_blind: frozenset[str] = frozenset()) -> None:
        self.folder = folder
        self.targets = tuple(targets)
        # Targets that a mode/owner/ACL change in this folder cannot concern: not woken by one.
        self.attrib_targets = tuple(t for t in self.targets if t not in attrib_blind)
        self.trigger = trigger

    def on_any_event(self, event: FileSystemEvent) -> None:
        reason = f"{event.event_type} {os.fsdecode(event.src_path)}"
        for target in self.attrib_targets if isinstance(event, ATTRIB_EVENTS) else self.targets:
            self.trigger(target, reason)


class _OverflowHook(logging.Handler):
    """watchdog 7 logs an inotify queue overflow but never tells the handler: listen to the log."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__(logging.WARNING)
        self.trigger = trigger

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.trigger(RESYNC, "inotify queue overflow")


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class FolderWatcher:
    """Watches real folders; `folders` maps a real folder to the targets it wakes."""

    def __init__(self, folders: dict[Path, set[str]], attrib_blind: frozenset[str] = frozenset()) -> None:
        self.folders = folders
        self.attrib_blind = attrib_blind
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._hook: _OverflowHook | None = None
        self._lock = threading.Lock()
        self.failed: dict[str, str] = {}

    def start(self, trigger: Trigger) -> None:
        observer = Observer()
        merged: dict[Path, set[str]] = {}
        for folder, targets in self.folders.items():
            # A folder that does not exist yet (no /etc/docker before Docker is installed): watch its
            # nearest parent, so its creation wakes the controls; the resync covers the rest.
            merged.setdefault(nearest_existing(folder), set()).update(targets)
        self._hook = _OverflowHook(trigger)
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._hook)
        observer.daemon = True
        # Started before scheduling: watchdog adds a watch at schedule() only on a running observer.
        # Scheduled first, every inotify_add_watch happens inside observer.start(), whose first
        # ENOSPC aborts the whole start (found by tests/unit/test_limits.py).
        observer.start()
        for folder, targets in sorted(merged.items()):
            try:
                observer.schedule(_Handler(str(folder), sorted(targets), trigger, self.attrib_blind), str(folder),
                                  recursive=False, event_filter=CHANGE_EVENTS)
            except OSError as exc:
                # ENOSPC: fs.inotify.max_user_watches reached. The periodic resync still covers
                # this folder; say so instead of failing the agent.
                self.failed[str(folder)] = explain_inotify_error(exc, str(folder))
                log.error("%s", self.failed[str(folder)])
        with self._lock:
            self._observer = observer

    def stop(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
        if self._hook is not None:
            logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._hook)
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
