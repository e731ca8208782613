"""The engine's workers: lanes (one thread each, its own triggers, timers and resync) and the
committer (one group commit per pass). What a lane runs is the engine's (nodeguard/engine.py):
a lane only decides *when* its controls are looked at again.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nodeguard.controls import Control
from nodeguard.priority import make_realtime, to_normal_priority
from nodeguard.watch import RESYNC

if TYPE_CHECKING:
    from nodeguard.engine import Engine

log = logging.getLogger(__name__)

POLICY_TARGET = "policy"
SLOW_LANE = "slow"
# The slow lane lets a burst settle this long before its pass: the fast lanes woken by the same
# event revert first (a pass of the slow lane is CPU work that would compete with them).
SLOW_LANE_SETTLE_S = 0.05
TIMER_GRID_S = 0.01


class Lane:
    """One worker thread: its own pending triggers, timers and resync; runs its controls in order."""

    def __init__(self, engine: Engine, name: str, controls: Sequence[Control], *, realtime: bool = False) -> None:
        self.engine = engine
        # Real-time priority (nodeguard/priority.py) from the wake-up until a revert is written (a
        # pass with nothing to revert is only a look); the rest of a reverting pass (verify, outcome
        # events) runs at normal priority: it must not keep a CPU from the host's own tasks.
        self.realtime = realtime
        self._lowered = False
        self.name = name
        self.controls = list(controls)
        self.names = {c.name for c in self.controls}
        self._cv = threading.Condition(threading.Lock())
        self._pending: dict[str, str] = {}
        # Every wake-up asked for is kept (a heap of (when, target)), not only the earliest per
        # target: a back-off ending at t+2 must not swallow a failed revert's retry due at t+5.
        self._timers: list[tuple[float, str]] = []
        self._timer_set: set[tuple[float, str]] = set()
        self._last_pass_end = 0.0
        # Set by the engine when a pass changed the host (a revert). Our own write wakes the lane
        # again (its inotify echo): that one look runs at once instead of waiting out coalesceMs,
        # so it is over before the next drift comes and that drift is met on the leading edge.
        self.reverted = False
        self._echo_pass = False
        self.thread = threading.Thread(target=self._run, name=f"nodeguard-lane-{name}", daemon=True)

    def trigger(self, target: str, reason: str) -> None:
        with self._cv:
            self._pending.setdefault(target, reason)
            self._cv.notify()

    def wake_at(self, target: str, when: float) -> None:
        """Look at `target` again at monotonic time `when` (a retry or the end of a back-off)."""
        # Rounded up to a 10 ms grid: 20,000 failed reverts of one pass are one timer, not 20,000.
        timer = (math.ceil(when / TIMER_GRID_S) * TIMER_GRID_S, target)
        with self._cv:
            if timer not in self._timer_set:
                self._timer_set.add(timer)
                heapq.heappush(self._timers, timer)
            self._cv.notify()

    def revert_done(self) -> None:
        """Called on this lane's thread once a pass's revert is written: back to normal priority
        until the lane next waits for work."""
        if self.realtime and not self._lowered:
            self._lowered = to_normal_priority()

    def notify(self) -> None:
        with self._cv:
            self._cv.notify()

    def _run(self) -> None:
        eng = self.engine
        if self.realtime:
            self.realtime = make_realtime(f"the {self.name} lane")
        try:
            # The start-up pass always completes, even when stop() came first: what was found at
            # start is reported and what enforce mode must revert is reverted.
            eng.reconcile(self, self.controls, startup=True)
        except Exception:
            log.exception("lane %s: start-up pass failed", self.name)
        self._last_pass_end = time.monotonic()  # the start-up pass counts for coalescing too
        self._echo_pass, self.reverted = self.reverted, False
        next_resync = time.monotonic() + eng.policy.spec.agent.resync_seconds
        while not eng.stopping.is_set():
            if self._lowered:
                self._lowered = not make_realtime(f"the {self.name} lane")
            with self._cv:
                if not self._pending:
                    wake = min(next_resync, self._timers[0][0]) if self._timers else next_resync
                    self._cv.wait(max(0.0, wake - time.monotonic()))
            if eng.stopping.is_set():
                break
            # Leading edge: a change after a quiet spell is looked at at once (revert latency);
            # within coalesceMs of the last pass, triggers wait and merge, so a burst (an editor's
            # write+rename, usermod's four files, a storm) costs one pass per window.
            coalesce = eng.policy.spec.agent.coalesce_ms / 1000
            since_last = time.monotonic() - self._last_pass_end
            # Only one such pass in a row: a tool rewriting the file in a loop is coalesced as before.
            echo, self._echo_pass = self._echo_pass, False
            if self._pending and self.name == SLOW_LANE:
                eng.stopping.wait(max(SLOW_LANE_SETTLE_S, coalesce - since_last))
            elif self._pending and since_last < coalesce and not echo:
                eng.stopping.wait(coalesce - since_last)
            now = time.monotonic()
            with self._cv:
                pending, self._pending = self._pending, {}
                while self._timers and self._timers[0][0] <= now:
                    timer = heapq.heappop(self._timers)
                    self._timer_set.discard(timer)
                    pending.setdefault(timer[1], "retry")
            if now >= next_resync:
                pending[RESYNC] = "periodic resync"
            if RESYNC in pending:
                next_resync = now + eng.policy.spec.agent.resync_seconds
            try:
                if self.name == SLOW_LANE and (POLICY_TARGET in pending or RESYNC in pending):
                    # Every resync checks the policy's content hash: a change inotify missed is not lost.
                    eng.check_policy(pending.get(POLICY_TARGET) or pending[RESYNC])
                targets = self.controls if RESYNC in pending else [c for c in self.controls if c.name in pending]
                if targets:
                    eng.reconcile(self, targets)
            except Exception:  # one broken pass must not end the lane
                log.exception("lane %s: pass failed", self.name)
            self._last_pass_end = time.monotonic()
            self._echo_pass, self.reverted = self.reverted and not echo, False


class Committer:
    """The group commit: after each pass, one fsync of the event spool and one atomic write of the
    state, on a thread of its own so no lane ever waits for a disk."""

    def __init__(self, commit: Callable[[], None]) -> None:
        self._commit = commit
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self.commits = 0
        self.thread = threading.Thread(target=self._run, name="nodeguard-commit", daemon=True)

    def request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()
            self.once()

    def once(self) -> None:
        try:
            self._commit()
            self.commits += 1
        except Exception:
            log.exception("commit failed")

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self.thread.is_alive():
            self.thread.join(10)
