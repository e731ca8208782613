"""File exporters fed by the spool: the JSON-lines events file and the OCSF JSON-lines file.

A batch counts as delivered once its lines are written and fsynced, so a crash between the
write and the spool's acknowledgement repeats lines (same event id), never loses them. A file
moved away by logrotate is noticed (its inode changes) and re-created at the next batch.

The file is opened relative to its folder's descriptor with O_NOFOLLOW: a symlink planted where
the file should be is refused (ELOOP), never followed to /etc/shadow; anything but a regular file
(a FIFO, a device, a folder) is refused too, without blocking on it. The agent refuses at start a
folder that others can write to (nodeguard/cli/__init__.py), where such a plant would be possible.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from nodeguard.events.model import Event, EventName
from nodeguard.events.ocsf import finding_uid, is_finding, to_ocsf

log = logging.getLogger(__name__)


def open_append_nofollow(target: str) -> TextIO:
    """Open `target` to append, through its folder's descriptor, following no symlink at the last step.

    Raises OSError: ELOOP for a symlink, EINVAL for anything but a regular file.
    """
    folder, name = os.path.split(os.path.abspath(target))
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # O_NONBLOCK: a FIFO planted here must not hang the exporter waiting for a reader.
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                     0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{target} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


class LinesFileExporter:
    def __init__(self, name: str, target: str, render: Callable[[Event], str | None]) -> None:
        self.name = name
        self.target = target
        self._render = render
        self._out: TextIO | None = None

    def _stream(self) -> TextIO:
        if self.target == "-":
            return sys.stdout
        if self._out is not None:
            try:
                same = os.lstat(self.target).st_ino == os.fstat(self._out.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                self._out.close()
                self._out = None
        if self._out is None:
            self._out = open_append_nofollow(self.target)
        return self._out

    def export(self, events: Sequence[Event]) -> bool:
        lines = [line for line in map(self._render, events) if line is not None]
        try:
            out = self._stream()
            if lines:
                out.write("".join(line + "\n" for line in lines))
                out.flush()
                if out is not sys.stdout:
                    os.fsync(out.fileno())
        except OSError as exc:
            log.warning("%s: cannot write %s: %s", self.name, self.target, exc)
            if self._out is not None:
                self._out.close()
                self._out = None
            return False
        return True

    def shutdown(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def jsonl_exporter(target: str, resource: dict[str, str] | None = None) -> LinesFileExporter:
    """The agent's `--events-file`: Event.to_record() per line, chain attributes included, and the
    resource (service.*, host.*, k8s.*) each line's `resource`, as an OTLP receiver would see it."""
    def render(event: Event) -> str:
        return event.to_json_line(resource)

    return LinesFileExporter("events-file", target, render)


def ocsf_exporter(target: str, host: dict[str, str]) -> LinesFileExporter:
    """OCSF Compliance Findings, one JSON line each. When an event does not carry the engine's
    first-seen time, the time this exporter saw the finding created stands in for it, so
    `created_time` stays put across the finding's updates (at most one entry per open finding)."""
    opened: dict[str, int] = {}

    def render(event: Event) -> str | None:
        if not is_finding(event):
            return None
        uid = finding_uid(event, host)
        if event.name is EventName.DRIFT_DETECTED:
            opened.setdefault(uid, event.time_unix_nano)
        doc = to_ocsf(event, host, opened_unix_nano=opened.get(uid))
        if event.name in (EventName.DRIFT_REVERTED, EventName.DRIFT_RESOLVED):
            opened.pop(uid, None)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str)

    return LinesFileExporter("ocsf-file", target, render)
