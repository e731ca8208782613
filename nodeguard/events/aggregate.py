"""Rate: a drift that repeats identically is sent once, then summarized, so a flapping file cannot flood the SIEM.

Two drift events are identical when they share name, control, rule, subject and observed
value. The first one goes out at once. Repeats within the window that it opens are counted,
not sent; when the window closes, one summary event goes out: the last repeat, a new id, and
`nodeguard.aggregate.count` (how many repeats it stands for),
`nodeguard.aggregate.first_seen_unix_nano` / `..._last_seen_unix_nano` (the first and last of
them). The next repeat after that opens a new window. Lifecycle events are never aggregated.

With a store (the spool), the counts that grew are written down by `persist()`, which the agent's
committer calls after every pass (`Spool.hold_repeats`, one transaction, no fsync of its own), and
released in the same transaction that spools their summary: the next start sends the summaries the
previous run still owed. Not on the repeat itself: a repeat is a drift that a lane is about to
revert, and its write (~0.15 ms) stood between the inotify event and the revert. What this costs:
a SIGKILL in the milliseconds between a pass and its commit loses that pass's repeats from the
count, never an event (the first event of every window is spooled before its revert).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from nodeguard.events.model import Event, EventName

ATTR_COUNT = "nodeguard.aggregate.count"
ATTR_FIRST_SEEN = "nodeguard.aggregate.first_seen_unix_nano"
ATTR_LAST_SEEN = "nodeguard.aggregate.last_seen_unix_nano"
# Distinct drifts tracked at once; beyond it events pass unaggregated (memory stays bounded).
MAX_KEYS = 10_000

_AGGREGATED = frozenset({EventName.DRIFT_DETECTED, EventName.DRIFT_REVERTED, EventName.DRIFT_REVERT_FAILED,
                         EventName.DRIFT_RESOLVED, EventName.DRIFT_FLAPPING})


class RepeatStore(Protocol):
    def hold_repeats(self, held: Sequence[tuple[str, int, int, Event]]) -> None: ...

    def held_repeats(self) -> list[tuple[str, int, int, Event]]: ...

    def append_many(self, events: Sequence[Event], *, release: Sequence[str] = ()) -> list[Event]: ...


@dataclass
class _Window:
    closes_at: float
    repeats: int = 0
    first_seen: int = 0
    last: Event | None = None


def aggregation_key(event: Event) -> str | None:
    """What makes two events repeats of each other (name, finding and observed value), or None
    for an event never aggregated. Not a finding's identity (that is `reconcile.finding_key`):
    a drift detected and the same drift reverted, or seen with another value, are different keys."""
    if event.name not in _AGGREGATED:
        return None
    a = event.attributes
    return json.dumps([event.name.value, a.get("nodeguard.control"), a.get("nodeguard.rule"),
                       a.get("nodeguard.subject"), a.get("nodeguard.observed")], sort_keys=True, default=str)


class Aggregator:
    def __init__(self, window_seconds: float, forward: Callable[[Event], None],
                 clock: Callable[[], float] = time.monotonic, store: RepeatStore | None = None) -> None:
        self.window = window_seconds
        self._forward = forward
        self._clock = clock
        self._store = store
        self._lock = threading.Lock()
        # Orders the store's writes: a count persisted after its summary released it would be sent
        # again by the next start (taken before _lock, never the other way round).
        self._store_lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._unsaved: set[str] = set()
        self.suppressed = 0

    def recover(self) -> int:
        """Send the summaries a previous run counted but never sent (after a crash); returns how many."""
        if self._store is None:
            return 0
        held = self._store.held_repeats()
        for key, count, first_seen, last in held:
            self._send(key, summarize(last, count, first_seen))
        return len(held)

    def offer(self, event: Event) -> None:
        key = aggregation_key(event) if self.window > 0 else None
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
                    self._unsaved.add(key)
                elif len(self._windows) < MAX_KEYS:
                    self._windows[key] = _Window(closes_at=now + self.window)
        # Forwarded outside the lock: the spool's fsync must not hold up other emitters' counting.
        for due_key, summary in due:
            self._send(due_key, summary)
        if passthrough is not None:
            self._forward(passthrough)

    def flush_due(self) -> None:
        with self._lock:
            due = self._take_due(self._clock())
        for key, summary in due:
            self._send(key, summary)

    def flush_all(self) -> None:
        with self._lock:
            due = self._take_due(float("inf"))
        for key, summary in due:
            self._send(key, summary)

    def persist(self) -> None:
        """Write down the counts that grew since the last call (the agent's commit, once per pass)."""
        if self._store is None:
            return
        with self._store_lock:
            with self._lock:
                held = [(key, win.repeats, win.first_seen, win.last) for key in self._unsaved
                        if (win := self._windows.get(key)) is not None and win.last is not None]
                self._unsaved.clear()
            if held:
                self._store.hold_repeats(held)

    def _send(self, key: str, summary: Event) -> None:
        if self._store is not None:
            with self._store_lock:
                self._store.append_many([summary], release=[key])
        else:
            self._forward(summary)

    def _take_due(self, now: float) -> list[tuple[str, Event]]:
        out: list[tuple[str, Event]] = []
        for key in [k for k, w in self._windows.items() if w.closes_at <= now]:
            win = self._windows.pop(key)
            self._unsaved.discard(key)
            if win.repeats and win.last is not None:
                out.append((key, summarize(win.last, win.repeats, win.first_seen)))
        return out


def summarize(last: Event, count: int, first_seen: int) -> Event:
    attrs = dict(last.attributes)
    attrs[ATTR_COUNT] = count
    attrs[ATTR_FIRST_SEEN] = first_seen
    attrs[ATTR_LAST_SEEN] = last.time_unix_nano
    body = f"{last.body} (repeated {count} more time{'s' if count != 1 else ''})"
    return replace(last, body=body, attributes=attrs, id=str(uuid.uuid4()), time_unix_nano=time.time_ns())
