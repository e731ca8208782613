"""File exporters fed by the spool: the JSON-lines events file and the OCSF JSON-lines file.

A batch counts as delivered once its lines are written and fsynced, so a crash between the
write and the spool's acknowledgement repeats lines (same event id), never loses them. A file
moved away by logrotate is noticed (its inode changes) and re-created at the next batch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from nodeguard.events.model import Event
from nodeguard.events.ocsf import is_finding, to_ocsf

log = logging.getLogger(__name__)


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
                same = os.stat(self.target).st_ino == os.fstat(self._out.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                self._out.close()
                self._out = None
        if self._out is None:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._out = os.fdopen(fd, "a", encoding="utf-8")
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


def jsonl_exporter(target: str) -> LinesFileExporter:
    """The agent's `--events-file`: Event.to_record() per line, chain attributes included."""
    return LinesFileExporter("events-file", target, Event.to_json_line)


def ocsf_exporter(target: str, host: dict[str, str]) -> LinesFileExporter:
    def render(event: Event) -> str | None:
        if not is_finding(event):
            return None
        return json.dumps(to_ocsf(event, host), separators=(",", ":"), ensure_ascii=False, default=str)

    return LinesFileExporter("ocsf-file", target, render)
