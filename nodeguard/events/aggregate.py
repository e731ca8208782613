"""Rate: a drift that repeats identically is sent once, then summarized, so a flapping file cannot flood the SIEM.

Two drift events are identical when they share name, control, rule, subject and observed
value. The first one goes out at once. Repeats within the window that it opens are counted,
not sent; when the window closes, one summary event goes out: the last repeat, a new id, and
`nodeguard.aggregate.count` (how many repeats it stands for),
`nodeguard.aggregate.first_seen_unix_nano` / `..._last_seen_unix_nano` (the first and last of
them). The next repeat after that opens a new window. Lifecycle events are never aggregated.

The counts live in memory for at most one window: a SIGKILL can lose the count of repeats of a
drift whose first occurrence is already durable in the spool (never the occurrence itself).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from nodeguard.events.model import Event, EventName

ATTR_COUNT = "nodeguard.aggregate.count"
ATTR_FIRST_SEEN = "nodeguard.aggregate.first_seen_unix_nano"
ATTR_LAST_SEEN = "nodeguard.aggregate.last_seen_unix_nano"
# Distinct drifts tracked at once; beyond it events pass unaggregated (memory stays bounded).
MAX_KEYS = 10_000

_AGGREGATED = frozenset({EventName.DRIFT_DETECTED, EventName.DRIFT_REVERTED, EventName.DRIFT_REVERT_FAILED,
                         EventName.DRIFT_RESOLVED, EventName.DRIFT_FLAPPING})


@dataclass
class _Window:
    closes_at: float
    repeats: int = 0
    first_seen: int = 0
    last: Event | None = None


def drift_key(event: Event) -> tuple[str, ...] | None:
    if event.name not in _AGGREGATED:
        return None
    a = event.attributes
    observed = json.dumps(a.get("nodeguard.observed"), sort_keys=True, default=str)
    return (event.name.value, str(a.get("nodeguard.control")), str(a.get("nodeguard.rule")),
            str(a.get("nodeguard.subject", "")), observed)


class Aggregator:
    def __init__(self, window_seconds: float, forward: Callable[[Event], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self._forward = forward
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, ...], _Window] = {}
        self.suppressed = 0

    def offer(self, event: Event) -> None:
        key = drift_key(event) if self.window > 0 else None
        passthrough: Event | None = event
        with self._lock:
            now = self._clock()
            due = self._take_due(now)
            if key is not None:
                win = self._windows.get(key)
                if win is not None:
                    win.repeats += 1
                    win.first_seen = win.first_seen or event.time_unix_nano
                    win.last = event
                    self.suppressed += 1
                    passthrough = None
                elif len(self._windows) < MAX_KEYS:
                    self._windows[key] = _Window(closes_at=now + self.window)
        # Forwarded outside the lock: the spool's fsync must not hold up other emitters' counting.
        for summary in due:
            self._forward(summary)
        if passthrough is not None:
            self._forward(passthrough)

    def flush_due(self) -> None:
        with self._lock:
            due = self._take_due(self._clock())
        for summary in due:
            self._forward(summary)

    def flush_all(self) -> None:
        with self._lock:
            due = self._take_due(float("inf"))
        for summary in due:
            self._forward(summary)

    def _take_due(self, now: float) -> list[Event]:
        out: list[Event] = []
        for key in [k for k, w in self._windows.items() if w.closes_at <= now]:
            win = self._windows.pop(key)
            if win.repeats and win.last is not None:
                out.append(_summary(win))
        return out


def _summary(win: _Window) -> Event:
    assert win.last is not None
    last = win.last
    attrs = dict(last.attributes)
    attrs[ATTR_COUNT] = win.repeats
    attrs[ATTR_FIRST_SEEN] = win.first_seen
    attrs[ATTR_LAST_SEEN] = last.time_unix_nano
    body = f"{last.body} (repeated {win.repeats} more time{'s' if win.repeats != 1 else ''})"
    return replace(last, body=body, attributes=attrs, id=str(uuid.uuid4()), time_unix_nano=time.time_ns())
