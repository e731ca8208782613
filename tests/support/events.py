"""An event sink that keeps what it is given: the engine's and the sinks' tests read it back."""

from __future__ import annotations

import threading

from nodeguard.events.model import Event


class RecordingSink:
    """Every emitted event, in order, in `events` (emit may come from any lane's thread)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def close(self) -> None:
        pass
