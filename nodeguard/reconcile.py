"""The reconciler's decisions as pure code: no I/O, no threads, time passed in.

The engine (nodeguard/engine.py) observes, remediates and emits; every *decision* it takes on the
way lives here, so it is unit-tested without sleeping (tests/unit/test_reconcile.py):

- `transition`: what a finding's new status means against what was known (new, still failing,
  resolved, changed while nodeguard was down).
- `FlapTracker`: a revert that keeps coming back. A cheap revert (a mode, an owner, an ACL, a
  group member: a few system calls) is never backed off, the fight is only reported, at most
  once per window with its count; an expensive one (daemon.json rewrite + SIGHUP) backs off,
  doubling up to the policy's cap.
- `RetryTracker`: a revert that *failed* (a busy lock, a file replaced under us) is retried on a
  timer, never because the agent's own writes woke it, and is never counted as a fight.
- `Backoff`: the one back-off computation every retry here uses.
- `bound_events`: more than N findings of one rule in one pass become N events plus a summary.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nodeguard.structs import Finding, JSONValue, Status

# Findings whose fights are tracked at once before the finished ones are forgotten.
MAX_TRACKED = 4096
# Names of the findings left out of a summary that are still listed in it (the rest: a digest).
SUMMARY_SAMPLE = 20


def finding_key(f: Finding) -> str:
    """The one identity of a finding, shared by the state file, the engine and the events: control/rule/subject."""
    return "/".join(f.key)


def event_finding_key(attributes: Mapping[str, object]) -> str:
    """`finding_key` of the finding an event is about, from its nodeguard.control/rule/subject
    attributes (event_for_finding writes them from the finding, leaving out an empty subject)."""
    subject = attributes.get("nodeguard.subject")
    return "/".join((str(attributes.get("nodeguard.control") or ""), str(attributes.get("nodeguard.rule") or ""),
                     "" if subject is None else str(subject)))


def split_key(key: str) -> tuple[str, str, str]:
    control, rule, subject = ([*key.split("/", 2), "", ""])[:3]
    return control, rule, subject


class Transition(enum.Enum):
    NEW = "new"  # failing now, not failing before: drift.detected
    WHILE_DOWN = "while_down"  # the same, found at start with a baseline: it happened while we were down
    STILL_FAILING = "still_failing"  # nothing to report (enforce mode still reverts)
    RESOLVED = "resolved"  # failing before, not now: drift.resolved
    QUIET = "quiet"  # neither before nor now


def transition(was_failing: bool | None, status: Status, *, startup_with_baseline: bool = False) -> Transition:
    """`was_failing`: the known status (None when the finding was never seen)."""
    failing = status is Status.FAIL
    if failing and not was_failing:
        return Transition.WHILE_DOWN if startup_with_baseline else Transition.NEW
    if failing:
        return Transition.STILL_FAILING
    if was_failing:
        return Transition.RESOLVED
    return Transition.QUIET


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: `initial * 2**attempt`, capped at `maximum` (attempt 0 is the first retry)."""

    initial: float
    maximum: float

    def delay(self, attempt: int) -> float:
        return float(min(self.maximum, self.initial * 2.0 ** min(max(attempt, 0), 60)))


@dataclass
class _Flap:
    reverts: deque[float] = field(default_factory=deque)
    reported_at: float | None = None
    level: int = 0
    blocked_until: float = 0.0


@dataclass(frozen=True)
class FlapReport:
    """What to say (drift.flapping) after a revert: `count` reverts in the window; `backoff` 0 = none."""

    count: int
    backoff: float
    level: int


class FlapTracker:
    def __init__(self, threshold: int, window: float, max_backoff: float, first_backoff: float = 1.0) -> None:
        self.threshold = threshold
        self.window = window
        self.backoff = Backoff(first_backoff, max_backoff)
        self._flaps: dict[str, _Flap] = {}

    def configure(self, threshold: int, window: float, max_backoff: float) -> None:
        self.threshold, self.window = threshold, window
        self.backoff = Backoff(self.backoff.initial, max_backoff)

    def note_revert(self, key: str, now: float, *, cheap: bool) -> FlapReport | None:
        """A successful revert of `key` at `now`; a FlapReport when the fight is to be reported now."""
        if len(self._flaps) > MAX_TRACKED and key not in self._flaps:
            self._prune(now)
        flap = self._flaps.setdefault(key, _Flap())
        flap.reverts.append(now)
        while flap.reverts and flap.reverts[0] <= now - self.window:
            flap.reverts.popleft()
        if flap.reverts and len(flap.reverts) > 4 * max(self.threshold, 1) + 64:
            flap.reverts.popleft()  # bounded memory in a hot fight; the count is then a floor
        count = len(flap.reverts)
        if count <= self.threshold:
            return None
        if cheap:
            # Never back off; report at most once per window, with the count seen in it.
            if flap.reported_at is not None and now < flap.reported_at + self.window:
                return None
            flap.reported_at = now
            return FlapReport(count, 0.0, 0)
        if flap.reported_at is not None and now - flap.reported_at > 4 * self.window:
            flap.level = 0  # quiet for a while: the next fight starts from the first back-off again
        flap.level += 1
        delay = self.backoff.delay(flap.level - 1)
        flap.blocked_until = now + delay
        flap.reported_at = now
        flap.reverts.clear()
        return FlapReport(count, delay, flap.level)

    def _prune(self, now: float) -> None:
        """Forget fights that are over (nothing in the window, no back-off running): bounded memory."""
        for key in [k for k, f in self._flaps.items()
                    if f.blocked_until <= now and (not f.reverts or f.reverts[-1] <= now - self.window)]:
            del self._flaps[key]

    def blocked(self, key: str, now: float) -> bool:
        flap = self._flaps.get(key)
        return flap is not None and now < flap.blocked_until

    def forget(self, key: str) -> None:
        self._flaps.pop(key, None)


class RetryNow(str):
    """A trigger's reason that also says the obstacle to a failed revert is gone (the owner of
    nodeguard's nf_tables table exited): the control's waiting retries are cut short, not left to
    their timers. Only a watcher that knows the event is not the agent's own write may say it."""

    __slots__ = ()


class RetryTracker:
    """Failed reverts, retried on a back-off timer: neither inotify (our own writes) nor a fight."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._due: dict[str, tuple[int, float]] = {}  # key -> (attempts, due)

    def failed(self, key: str, now: float) -> tuple[int, float]:
        """Record a failed attempt; returns (attempts so far, when to retry)."""
        attempts = self._due.get(key, (0, 0.0))[0] + 1
        due = now + self.backoff.delay(attempts - 1)
        self._due[key] = (attempts, due)
        return attempts, due

    def waiting(self, key: str, now: float) -> bool:
        """True while a failed revert of `key` waits for its retry time."""
        entry = self._due.get(key)
        return entry is not None and now < entry[1]

    def release(self, control: str) -> list[str]:
        """Every failed revert of `control` may be tried at once (their attempt counts stay, so a
        renewed failure is not reported as a new streak); returns the keys released."""
        prefix = control + "/"
        keys = [k for k in self._due if k.startswith(prefix)]
        for key in keys:
            self._due[key] = (self._due[key][0], 0.0)
        return keys

    def attempts(self, key: str) -> int:
        return self._due.get(key, (0, 0.0))[0]

    def succeeded(self, key: str) -> None:
        self._due.pop(key, None)


@dataclass(frozen=True)
class Bounded:
    """One rule's findings of a pass: `shown` go out one event each; `left_out` are summarized."""

    rule: tuple[str, str]
    shown: list[Finding]
    left_out: list[Finding]

    @property
    def total(self) -> int:
        return len(self.shown) + len(self.left_out)

    def summary(self) -> dict[str, JSONValue]:
        names = sorted(f.subject or "" for f in self.left_out)
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
        sample: list[JSONValue] = list(names[:SUMMARY_SAMPLE])
        return {"total": self.total, "shown": len(self.shown), "left_out": len(self.left_out),
                "left_out_sample": sample, "left_out_sha256": digest}


def bound_events(findings: Sequence[Finding], limit: int) -> tuple[list[Finding], list[Bounded]]:
    """Split findings (in order) into those with an event of their own and, per (control, rule)
    with more than `limit`, the ones left out: the first `limit` of each rule keep their events."""
    by_rule: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        by_rule.setdefault((f.control, f.rule), []).append(f)
    keep: list[Finding] = []
    over: list[Bounded] = []
    for rule, group in by_rule.items():
        if len(group) <= limit:
            keep += group
        else:
            keep += group[:limit]
            over.append(Bounded(rule, group[:limit], group[limit:]))
    order = {id(f): i for i, f in enumerate(findings)}
    keep.sort(key=lambda f: order[id(f)])
    return keep, over
