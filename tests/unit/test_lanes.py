"""A lane's timers (nodeguard/lanes.py): every wake-up asked for happens, with a real lane thread.

The CI failure this guards against: a daemon.json fight left the file drifted for good once the
fighter stopped. A back-off ending at t+2 and a failed revert's retry due at t+5 were booked for
the same control; the lane kept only the earlier time, the revert was still waiting at t+2, and
nothing looked again until the next inotify event or the 60 s resync.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from nodeguard.lanes import Lane


class _Control:
    name = "daemon-config"


class _Engine:
    """What a lane calls: a policy for its timings, `reconcile` (recorded), `stopping`."""

    def __init__(self) -> None:
        agent = SimpleNamespace(resync_seconds=3600, coalesce_ms=0)
        self.policy = SimpleNamespace(spec=SimpleNamespace(agent=agent))
        self.stopping = threading.Event()
        self.passes: list[float] = []
        self._lock = threading.Lock()

    def reconcile(self, lane: Lane, controls: Any, startup: bool = False) -> None:
        if not startup:
            with self._lock:
                self.passes.append(time.monotonic())

    def check_policy(self, reason: str) -> None:
        pass


def _run_lane(engine: _Engine) -> Lane:
    lane = Lane(engine, "daemon", [_Control()])  # type: ignore[arg-type, list-item]
    lane.thread.start()
    return lane


def test_two_wake_ups_for_one_control_both_happen() -> None:
    engine = _Engine()
    lane = _run_lane(engine)
    try:
        start = time.monotonic()
        lane.wake_at("daemon-config", start + 0.6)  # the later one first: it must survive
        lane.wake_at("daemon-config", start + 0.2)
        deadline = start + 5
        while len(engine.passes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(engine.passes) == 2, engine.passes
        first, second = (t - start for t in engine.passes)
        assert 0.2 <= first < 0.6 and second >= 0.6, (first, second)
    finally:
        engine.stopping.set()
        lane.notify()
        lane.thread.join(5)


def test_a_bulk_of_equal_wake_ups_is_one_timer_and_one_pass() -> None:
    engine = _Engine()
    lane = _run_lane(engine)
    try:
        due = time.monotonic() + 0.2
        for i in range(20_000):  # one pass's 20,000 failed member reverts
            lane.wake_at("daemon-config", due + i * 1e-7)
        assert len(lane._timers) <= 2
        time.sleep(0.5)
        assert len(engine.passes) in (1, 2), engine.passes
    finally:
        engine.stopping.set()
        lane.notify()
        lane.thread.join(5)
