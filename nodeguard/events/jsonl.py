"""JSON lines: one event per line to a file or stdout (the agent's `--events-file`)."""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from nodeguard.events.model import Event


class JsonlSink:
    """Appends one JSON object per event; each line is flushed whole, so a reader never sees half."""

    def __init__(self, target: str) -> None:
        self._lock = threading.Lock()
        self._own = target != "-"
        self._out: TextIO = open(target, "a", encoding="utf-8") if self._own else sys.stdout  # noqa: SIM115

    def emit(self, event: Event) -> None:
        line = event.to_json_line() + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()
            if self._own:
                os.fsync(self._out.fileno())

    def close(self) -> None:
        with self._lock:
            self._out.flush()
            if self._own:
                self._out.close()
