"""The agent's loop: triggers -> lanes -> observe, evaluate, remediate -> events -> one commit per pass.

Level-triggered like a Kubernetes controller: a trigger only says "look again at control X"; the
control re-reads the whole truth and compares it with the policy, so a lost or merged inotify event
costs nothing and the periodic resync catches what inotify cannot see.

Lanes, so that nothing slow stands in front of a cheap critical revert:

- fast lanes, one worker each for the surfaces whose observation is a few system calls on host
  files: the socket; the docker group; daemon.json and the daemon's files. A 20,000-member group
  rewrite, or shadow-utils' lock held by a `vipw -g` left open, delays only the group's own lane;
  the socket's lane has nothing in front of it.
- the slow lane: the Docker API (runtime), listeners, firewall reconcile, host checks, policy
  reloads and watcher rebuilds. Every Docker API call is bounded by the policy's timeout; a daemon
  that accepts and never answers is the runtime rule `daemon-unresponsive`, never a held lane.

Within a pass: the `detected` record is written first (it reaches the kernel: it survives a
SIGKILL), then the revert, then the outcome; the durable commit (one fsync of the spool's WAL,
one atomic write of findings.json) happens once per pass on the committer thread, never on a lane.
Every decision (transitions, flapping, back-off, retries, event bounds) is in nodeguard/reconcile.py;
the workers (lanes, committer) are in nodeguard/lanes.py.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nodeguard._version import __version__
from nodeguard.audit import evaluate_control
from nodeguard.controls import Context, Control, Outcome, all_controls
from nodeguard.events.metrics import record_reconcile
from nodeguard.events.model import (
    Event,
    EventName,
    EventSink,
    enable_group_commit,
    event_for_finding,
    lifecycle_event,
    sync,
)
from nodeguard.host import HostPathError, HostRoot
from nodeguard.lanes import POLICY_TARGET, SLOW_LANE, Committer, Lane
from nodeguard.memory import give_back
from nodeguard.policy import Policy
from nodeguard.policy_source import PolicySource
from nodeguard.reconcile import (
    Backoff,
    Bounded,
    FlapReport,
    FlapTracker,
    RetryNow,
    RetryTracker,
    Transition,
    bound_events,
    finding_key,
    split_key,
    transition,
)
from nodeguard.state import KnownFinding, StateStore
from nodeguard.structs import Finding, JSONValue, Mode, Severity, Status
from nodeguard.watch import RESYNC, FolderWatcher, NameFilters, Watcher

log = logging.getLogger(__name__)

# Fast lanes, in the order a start-up pass reaches them: the most critical surface first. Within a
# lane too: daemon.json (a plaintext TCP listener is critical) before the daemon's files' modes, whose
# look (every unit file, certificate and socket) would otherwise stand before each daemon.json revert.
FAST_LANES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("socket", ("socket",)),
    ("group", ("docker-group",)),
    ("daemon", ("daemon-config", "daemon-files")),
)
# Reverts that are a few system calls (a mode, an owner, an ACL, a group member): never backed off.
CHEAP_REVERTS = frozenset({"socket", "daemon-files", "docker-group"})
# Lanes whose thread runs at real-time priority 1 (nodeguard/priority.py says why): a pass is a few
# system calls, so it can never hold a CPU for long.
REALTIME_LANES = frozenset({"socket"})
# Controls a mode/owner/ACL change cannot concern: the runtime control watches the socket's folder for
# a daemon restart (the socket re-created), not for a chmod, which the socket's own lane handles; waking
# the slow lane there would make it compete with that very revert for the interpreter.
ATTRIB_BLIND = frozenset({"runtime"})
# An observed value larger than this (as JSON) is kept in the state as its digest.
OBSERVED_KEEP_BYTES = 4096
# After a pass that looked at this many findings, freed memory is handed back to the kernel.
BIG_PASS_FINDINGS = 1000
# A failed revert is retried after 0.1 s, 0.2 s, ... up to 5 s (never because our own write woke us).
RETRY_BACKOFF = Backoff(0.1, 5.0)
# A revert refused because the file changed under it is looked at again this soon.
RACE_RETRY_S = 0.05
# Seconds a lane may take to finish its pass at stop; a slow lane stuck in a bounded API call is left.
LANE_JOIN_S = 2.0

WatcherFactory = Callable[[Policy], list[Watcher]]


@dataclass
class EngineOptions:
    host: HostRoot
    state_dir: Path
    policy_path: Path | None = None
    mode_override: Mode | None = None
    proc: Path = Path("/proc")


def bounded_observed(value: JSONValue) -> JSONValue:
    """What the state keeps of an observed value: itself, or past OBSERVED_KEEP_BYTES its digest
    (a 50 MB daemon.json label list must not live in memory and in findings.json twice)."""
    if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) < 256):
        return value
    text = json.dumps(value, default=str, sort_keys=True)
    if len(text) <= OBSERVED_KEEP_BYTES:
        return value
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text)}


class Engine:
    def __init__(self, options: EngineOptions, policy: Policy | PolicySource, sink: EventSink,
                 watchers: Iterable[Watcher] | None = None, controls: Iterable[Control] | None = None,
                 on_pass: Callable[[], None] | None = None, watcher_factory: WatcherFactory | None = None) -> None:
        self.options = options
        self.host = options.host
        self.sink = sink
        if isinstance(policy, PolicySource):
            self.source = policy
            self.store = policy.store  # one StateStore per state dir
        else:
            self.store = StateStore(options.state_dir)
            self.source = PolicySource(options.policy_path, self.store, options.mode_override)
            self.source.adopt(policy)
        assert self.source.policy is not None
        self.policy: Policy = self.source.policy
        self.controls = list(controls) if controls is not None else all_controls()
        self._by_name = {c.name: c for c in self.controls}
        self._static_watchers = list(watchers) if watchers is not None else None
        self._watcher_factory = watcher_factory
        self._watchers: list[Watcher] = []
        self._folder_watcher: FolderWatcher | None = None
        self._on_pass = on_pass
        self.stopping = threading.Event()
        self._state_lock = threading.Lock()
        # Loaded here, not in run(): whoever reads the open drifts (the Kubernetes sink's condition)
        # sees findings.json's from the moment the engine exists, before any event of its own.
        known = self.store.load_findings()
        self._known: dict[str, KnownFinding] = known or {}
        self._baseline = known is not None
        self._dirty = False
        flap = self.policy.spec.agent.flapping
        self.flaps = FlapTracker(flap.threshold, flap.window_seconds, flap.max_backoff_seconds)
        self.retries = RetryTracker(RETRY_BACKOFF)
        self._decisions_lock = threading.Lock()  # flaps and retries are shared by the lanes
        self.passes = 0
        self._findings_in_pass = 0  # approximate across lanes: only decides when to trim the heap
        self._big_pass = False
        self._netns_refusal: str | None = None
        self._netns_checked = False  # computed lazily, by the slow lane only (it imports netfilter)
        self._refusal_reported: set[str] = set()
        self.lanes = self._make_lanes()
        self._fast_startups_left = sum(1 for lane in self.lanes if lane.name != SLOW_LANE)
        self._lane_of = {name: lane for lane in self.lanes for name in lane.names}
        self.committer = Committer(self._commit)

    def _make_lanes(self) -> list[Lane]:
        lanes: list[Lane] = []
        placed: set[str] = set()
        for lane_name, names in FAST_LANES:
            members = [self._by_name[n] for n in names if n in self._by_name]
            if members:
                lanes.append(Lane(self, lane_name, members, realtime=lane_name in REALTIME_LANES))
                placed.update(names)
        # The slow lane always exists: it also reloads the policy and rebuilds the watchers.
        lanes.append(Lane(self, SLOW_LANE, [c for c in self.controls if c.name not in placed]))
        return lanes

    # -- public ------------------------------------------------------------------------------

    def trigger(self, target: str, reason: str) -> None:
        """Ask for `target` (a control name, "policy" or "*") to be looked at again. Never blocks long."""
        if target == RESYNC:
            for lane in self.lanes:
                lane.trigger(target, reason)
            return
        if isinstance(reason, RetryNow):
            with self._decisions_lock:
                self.retries.release(target)
        self._lane_of.get(target, self.lanes[-1]).trigger(target, reason)

    def stop(self) -> None:
        self.stopping.set()
        for lane in self.lanes:
            lane.notify()

    def failing_keys(self) -> list[str]:
        """The identity (`finding_key`) of every finding failing now: the Kubernetes sink's open drifts.
        Any thread may call it: it only reads, with the same one-step copy as `open_drifts`."""
        fail = Status.FAIL.value  # once: an enum member's .value is a property call
        return [key for key, known in list(self._known.items()) if known.status == fail]

    def open_drifts(self) -> list[tuple[str, str, str]]:
        """(control, rule, severity) of every finding failing now: the open-drifts gauge reads it.

        Called from the metrics collector's thread: it only reads. `list(dict.items())` copies in
        one step under the GIL (str keys, no Python-level hashing), so a pass running meanwhile
        cannot make it fail.
        """
        out = []
        for key, known in list(self._known.items()):
            if known.status != Status.FAIL.value:
                continue
            control, rule, _subject = split_key(key)
            try:
                severity = self._by_name[control].rule(rule).severity.value
            except KeyError:
                severity = "unknown"
            out.append((control, rule, severity))
        return out

    def run(self) -> None:
        """Start-up evaluation, then watch until stop(); always ends with agent.stopped."""
        self._enable_group_commit()
        problems: dict[str, JSONValue] = {"state_problems": list(self.store.problems)} if self.store.problems else {}
        self._emit(lifecycle_event(EventName.AGENT_STARTED, f"nodeguard {__version__} started",
                                   version=__version__, mode=self.policy.spec.mode.value,
                                   host_root=str(self.host.root), **problems))
        self._emit(self.source.loaded_event())
        watch_map, only = self._watch_plan(self.policy)  # watch paths cost a daemon lookup: computed once for both
        self._sweep_temp_files(watch_map)
        self._start_watchers(watch_map, only)
        # The watch on the policy's folder is in place only now: a policy swapped between the
        # first read and this point would never wake us, so look at its content once more.
        if self.source.path is not None:
            self.check_policy("policy watch in place")
        self.committer.thread.start()
        try:
            for lane in self.lanes:
                lane.thread.start()
            while not self.stopping.wait(0.5):
                pass
        finally:
            self.stopping.set()
            deadline = time.monotonic() + LANE_JOIN_S
            for lane in self.lanes:
                lane.notify()
                if lane.thread.is_alive():
                    lane.thread.join(max(0.0, deadline - time.monotonic()))
            self._stop_watchers()
            self.committer.stop()
            self._emit(lifecycle_event(EventName.AGENT_STOPPED, "nodeguard stopped", passes=self.passes))
            self._commit()

    # -- reconcile ---------------------------------------------------------------------------

    def _context(self, policy: Policy) -> Context:
        return Context(self.host, policy, self.options.proc, self.options.state_dir)

    def reconcile(self, lane: Lane, controls: Iterable[Control], startup: bool = False) -> None:
        policy = self.policy  # one policy and one context per pass: dockerd and /etc/group are read once
        ctx = self._context(policy)
        for control in controls:
            if policy.mode_of(control.policy_key) is Mode.OFF:
                continue
            started = time.monotonic()
            try:
                self._reconcile_control(lane, control, ctx, startup)
            except Exception:  # one broken control must not stop the others or the agent
                log.exception("reconciling %s failed", control.name)
            record_reconcile(control.name, time.monotonic() - started)
        with self._state_lock:
            self.passes += 1
            if startup and lane.name != SLOW_LANE:
                self._fast_startups_left -= 1
            if startup or self._findings_in_pass >= BIG_PASS_FINDINGS:
                self._big_pass = True
            self._findings_in_pass = 0
        self.committer.request()
        if self._on_pass is not None:
            self._on_pass()

    @staticmethod
    def _max_events(policy: Policy) -> int:
        return policy.spec.agent.max_events_per_rule

    def _reconcile_control(self, lane: Lane, control: Control, ctx: Context, startup: bool) -> None:
        policy = ctx.policy
        result = evaluate_control(control, ctx)
        self._findings_in_pass += len(result.findings)
        now_wall, now = time.time(), time.monotonic()
        seen: set[str] = set()
        detected: list[Finding] = []
        while_down: set[str] = set()
        resolved: list[Finding] = []
        to_fix: list[Finding] = []
        baseline_start = startup and self._baseline
        with self._state_lock:
            for f in result.findings:
                key = finding_key(f)
                seen.add(key)
                prev = self._known.get(key)
                step = transition(None if prev is None else prev.status == Status.FAIL.value, f.status,
                                  startup_with_baseline=baseline_start)
                if step in (Transition.NEW, Transition.WHILE_DOWN):
                    detected.append(f)
                    if step is Transition.WHILE_DOWN:
                        while_down.add(key)
                    self._remember(key, f, now_wall)
                elif step is Transition.RESOLVED:
                    resolved.append(f)
                    self._remember(key, f, now_wall)
                elif prev is None or prev.status != f.status.value:
                    self._remember(key, f, now_wall)
            prefix = control.name + "/"
            vanished = [(k, self._known.pop(k)) for k in [k for k in self._known if k.startswith(prefix)
                                                           and k not in seen]]
            if vanished:
                self._dirty = True
        with self._decisions_lock:
            for f in result.findings:
                key = finding_key(f)
                if f.status is not Status.FAIL:
                    self.retries.succeeded(key)
                    continue
                if f.mode is not Mode.ENFORCE or not self._enforceable(control, f):
                    continue
                if control.changes_network and self._refusal():
                    if key not in self._refusal_reported:
                        self._refusal_reported.add(key)
                        self._emit(event_for_finding(EventName.DRIFT_REVERT_FAILED, f, outcome="revert_failed",
                                                     body=f"not reverted: {self._refusal()}"))
                    continue
                # A back-off (expensive reverts only) or a failed revert waiting for its retry timer:
                # a trigger (our own write's inotify event included) does not cut either short.
                # Both booked the lane's timer for their end when they were set (every wake-up
                # booked is kept: nodeguard/lanes.py).
                if self.flaps.blocked(key, now) or self.retries.waiting(key, now):
                    continue
                to_fix.append(f)
        limit = self._max_events(policy)
        fixing = {finding_key(f) for f in to_fix}
        # Write-ahead: what is about to be reverted is on record before the revert.
        shown, over = bound_events(detected, limit)
        summarized: set[tuple[str, str]] = set()
        for bulk in over:
            # More than N of one rule: one summary now; in enforce mode the first N get their
            # outcome event after the revert instead of a detected one (N + 1 events in all).
            self._emit(self._summary_event(EventName.DRIFT_DETECTED, "detected", bulk,
                                           enforcing=any(finding_key(f) in fixing for f in bulk.shown)))
            summarized.add(bulk.rule)
        for f in shown:
            key = finding_key(f)
            if (f.control, f.rule) in summarized and key in fixing:
                continue
            extra: dict[str, JSONValue] = {}
            body = f.message
            if key in while_down:
                extra["nodeguard.while_down"] = True
                body = f"{f.message} (changed while nodeguard was not running)"
            self._emit(event_for_finding(EventName.DRIFT_DETECTED, f, outcome="detected", body=body, extra=extra))
        self._emit_bounded(EventName.DRIFT_RESOLVED, "resolved", resolved, limit)
        before = {key: prev.observed for key, prev in vanished if prev.status == Status.FAIL.value}
        self._emit_bounded(EventName.DRIFT_RESOLVED, "resolved", [self._vanished_finding(k) for k in before], limit,
                           extra_of=lambda f: {"nodeguard.previously_observed": before.get(finding_key(f))})
        del fixing, seen, detected  # (100,000 keys of a bulk drift need not outlive the revert's own)
        changed = self._remediate(lane, control, ctx, result.observed, to_fix, summarized) if to_fix else False
        if result.observed is not None and not changed:
            # After the revert, not before: keeping a copy is a safe write (an fsync), and a revert
            # never needs the copy of what this very pass observed (a file that parses needs none).
            # A revert that wrote keeps its own result as the copy (what was observed is not good).
            try:
                control.remember(ctx, result.observed, self.store)
            except OSError as exc:
                # A full state disk must not blind the control: it still reports and enforces
                # (a revert that needs a quarantine copy then fails and says why).
                log.warning("%s: cannot keep the last good copy: %s", control.name, exc.strerror or exc)

    @staticmethod
    def _enforceable(control: Control, f: Finding) -> bool:
        try:
            return control.rule(f.rule).enforceable
        except KeyError:
            return False

    def _refusal(self) -> str | None:
        if not self._netns_checked:
            from nodeguard.netfilter.select import writes_refused

            self._netns_refusal = writes_refused(self.host, self.options.proc)
            self._netns_checked = True
        return self._netns_refusal

    def _remediate(self, lane: Lane, control: Control, ctx: Context, observed: object, findings: list[Finding],
                   summarized: set[tuple[str, str]]) -> bool:
        """Revert, verify, report; True when the host was changed."""
        started = time.monotonic()
        try:
            outcomes = control.remediate_many(ctx, findings, observed)
        except OSError as exc:  # e.g. the file was replaced under us: expected on a contested host
            log.info("%s: remediation did not apply: %s", control.name, exc)
            if exc.errno == errno.ESTALE:
                # Someone else's write landed between our read and our rename: not a failure of
                # ours, and their write wakes us again (a retry timer too, in case it does not).
                lane.wake_at(control.name, time.monotonic() + RACE_RETRY_S)
                return False
            outcomes = [Outcome(False, False, str(exc.strerror or exc)) for _ in findings]
        except Exception as exc:
            log.exception("%s: remediation failed", control.name)
            outcomes = [Outcome(False, False, f"{type(exc).__name__}: {exc}") for _ in findings]
        # The revert is done: what follows (verify, outcome events) runs at normal priority.
        lane.revert_done()
        changed = any(o.changed for o in outcomes)
        if changed:
            lane.reverted = True  # its inotify echo is looked at without the coalescing wait
        # Verify against the host, not against what we think we did.
        after = {finding_key(f): f for f in evaluate_control(control, self._context(ctx.policy)).findings}
        took_ms = round((time.monotonic() - started) * 1000, 3)
        now_wall, now = time.time(), time.monotonic()
        reverted: list[tuple[Finding, dict[str, JSONValue], str]] = []
        failed: list[tuple[Finding, dict[str, JSONValue], str]] = []
        flapping: list[tuple[Finding, FlapReport]] = []
        cheap = control.name in CHEAP_REVERTS
        limit = self._max_events(ctx.policy)
        per_rule: dict[str, int] = {}
        for f, outcome in zip(findings, outcomes, strict=True):
            key = finding_key(f)
            current = after.get(key)
            fixed = current is None or current.status is not Status.FAIL
            # Only the first N of a rule get an event (and flap tracking): no per-finding details
            # for the other 19,900 members of a bulk drift (memory stays bounded).
            nth = per_rule[f.rule] = per_rule.get(f.rule, 0) + 1
            details: dict[str, JSONValue] = {}
            if nth <= limit:
                details = {f"nodeguard.{k}": v for k, v in outcome.details.items()}
                details["nodeguard.revert_ms"] = took_ms
                if outcome.restart_required:
                    details["nodeguard.restart_required"] = True
            if fixed and outcome.ok:
                with self._state_lock:
                    if current is None:
                        # Gone from the host (a member removed): nothing left to remember.
                        self._known.pop(key, None)
                        self._dirty = True
                    else:
                        self._remember(key, current, now_wall)
                with self._decisions_lock:
                    self.retries.succeeded(key)
                    report = self.flaps.note_revert(key, now, cheap=cheap) if nth <= limit else None
                if report is not None:
                    flapping.append((f, report))
                    if report.backoff:
                        lane.wake_at(f.control, now + report.backoff)
                # (Past the first N only the finding is used: no event body for it.)
                reverted.append((f, details, f"reverted: {outcome.message}" if nth <= limit else ""))
            else:
                # Not a fight (nothing came back: we did not get through): retried on a timer.
                why = outcome.message if not outcome.ok else f"{outcome.message}; still failing afterwards"
                with self._decisions_lock:
                    attempts, due = self.retries.failed(key, now)
                lane.wake_at(f.control, due)
                details["nodeguard.attempt"] = attempts
                if attempts == 1:  # once per failing streak, not once per retry
                    failed.append((f, details, f"revert failed: {why}; retrying"))
        self._emit_outcomes(EventName.DRIFT_REVERTED, "reverted", reverted, limit, summarized)
        self._emit_outcomes(EventName.DRIFT_REVERT_FAILED, "revert_failed", failed, limit, set())
        cfg = ctx.policy.spec.agent.flapping
        for f, report in flapping[:limit]:
            tail = (f"backing off {report.backoff:g}s" if report.backoff else
                    "nodeguard keeps reverting (a revert of a few system calls is never backed off)")
            self._emit(event_for_finding(
                EventName.DRIFT_FLAPPING, f, outcome="flapping",
                body=f"{f.control}/{f.rule} came back {report.count} times in {cfg.window_seconds:g}s: "
                     f"something is fighting nodeguard; {tail}",
                extra={"nodeguard.backoff_seconds": report.backoff, "nodeguard.flap_level": report.level,
                       "nodeguard.flap_count": report.count}))
        return changed

    # -- events ------------------------------------------------------------------------------

    def _emit_outcomes(self, name: EventName, outcome: str, items: list[tuple[Finding, dict[str, JSONValue], str]],
                       limit: int, summarized: set[tuple[str, str]]) -> None:
        by_rule: dict[tuple[str, str], list[tuple[Finding, dict[str, JSONValue], str]]] = {}
        for item in items:
            by_rule.setdefault((item[0].control, item[0].rule), []).append(item)
        for rule, group in by_rule.items():
            for f, details, body in group[:limit]:
                self._emit(event_for_finding(name, f, outcome=outcome, body=body, extra=details))
            if len(group) > limit and rule not in summarized:
                # (A rule summarized before the revert already named what the rest are.)
                bulk = Bounded(rule, [g[0] for g in group[:limit]], [g[0] for g in group[limit:]])
                self._emit(self._summary_event(name, outcome, bulk))

    def _emit_bounded(self, name: EventName, outcome: str, findings: list[Finding], limit: int,
                      extra_of: Callable[[Finding], dict[str, JSONValue]] | None = None) -> None:
        shown, over = bound_events(findings, limit)
        for f in shown:
            self._emit(event_for_finding(name, f, outcome=outcome, extra=extra_of(f) if extra_of else None))
        for bulk in over:
            self._emit(self._summary_event(name, outcome, bulk))

    @staticmethod
    def _summary_event(name: EventName, outcome: str, bulk: Bounded, enforcing: bool = False) -> Event:
        s = bulk.summary()
        first = bulk.left_out[0]
        control, rule = bulk.rule
        what = {"detected": "found", "reverted": "reverted", "revert_failed": "not reverted",
                "resolved": "resolved"}.get(outcome, outcome)
        body = (f"{s['total']} findings of {control}/{rule} {what} in one pass; {s['left_out']} of them are "
                f"summarized here instead of one event each (sha256 of their names {str(s['left_out_sha256'])[:16]}…)")
        if enforcing:
            body += "; all of them are being reverted, the first ones' outcome events follow"
        # The digest as the observed value: two different bulk drifts are two events; only the very
        # same one repeated is folded by the aggregator.
        f = dataclasses.replace(first, subject=None, observed=s["left_out_sha256"], message=body)
        extra: dict[str, JSONValue] = {"nodeguard.summary": True}
        extra.update({f"nodeguard.summary.{k}": v for k, v in s.items()})
        return event_for_finding(name, f, outcome=outcome, body=body, extra=extra)

    def _vanished_finding(self, key: str) -> Finding:
        control, rule, subject = split_key(key)
        return Finding(control, rule, Status.PASS, Severity.INFO,
                       f"{control}/{rule}{' ' + subject if subject else ''} no longer applies",
                       observed=None, expected=None, subject=subject or None,
                       mode=self._by_name[control].rule_mode(self.policy, rule) if control in self._by_name
                       else Mode.OBSERVE)

    def _emit(self, event: Event) -> None:
        try:
            self.sink.emit(event)
        except Exception:  # an exporter problem must never stop enforcement
            log.exception("event sink failed for %s", event.name)

    def _enable_group_commit(self) -> None:
        try:
            enable_group_commit(self.sink)
        except Exception:
            log.exception("cannot switch the event sink to one commit per pass")

    # -- state -------------------------------------------------------------------------------

    def _remember(self, key: str, f: Finding, now: float) -> None:
        """Caller holds _state_lock."""
        self._known[key] = KnownFinding(f.status.value, bounded_observed(f.observed), now)
        self._dirty = True

    def _commit(self) -> None:
        """The group commit: events durable (one fsync), then the state (one atomic write);
        after a big pass (or the start-up pass) the freed heap goes back to the kernel too."""
        if self._big_pass:
            self._big_pass = False
            give_back()
        try:
            sync(self.sink)
        except Exception:
            log.exception("cannot commit the spooled events")
        with self._state_lock:
            # findings.json appears once every fast lane has looked at the host once (the start-up
            # evaluation of the host files is complete); the slow lane's findings join later.
            if not self._dirty or (self._fast_startups_left > 0 and not self.stopping.is_set()):
                return
            snapshot = dict(self._known)
            self._dirty = False
        try:
            self.store.save_findings(snapshot)
        except OSError as exc:
            with self._state_lock:
                self._dirty = True
            log.error("cannot save state under %s: %s", self.store.dir, exc)

    # -- policy ------------------------------------------------------------------------------

    def check_policy(self, reason: str) -> bool:
        """Re-read the policy (by content hash); True when a new valid policy is now in force."""
        new = self.source.reload(self._emit)
        if new is None:
            return False
        log.info("policy reloaded (%s)", reason)
        self.policy = new
        cfg = new.spec.agent.flapping
        with self._decisions_lock:
            self.flaps.configure(cfg.threshold, cfg.window_seconds, cfg.max_backoff_seconds)
        self._emit(self.source.loaded_event())
        self._rebuild_watchers()
        self.trigger(RESYNC, "policy changed")
        return True

    # -- watchers ----------------------------------------------------------------------------

    def _watch_map(self, policy: Policy) -> dict[Path, set[str]]:
        return self._watch_plan(policy)[0]

    def _watch_plan(self, policy: Policy) -> tuple[dict[Path, set[str]], NameFilters]:
        """Folders to watch -> the targets they wake, and the entry names some targets are limited to
        (a control's optional `watch_names`: the docker group needs 3 of /etc's many files)."""
        ctx = self._context(policy)
        folders: dict[Path, set[str]] = {}
        only: NameFilters = {}
        for control in self.controls:
            try:
                paths = control.watch_paths(ctx)
                names_of = getattr(control, "watch_names", None)
                names: dict[str, frozenset[str]] = names_of(ctx) if names_of is not None else {}
            except (OSError, HostPathError) as exc:
                log.warning("%s: cannot compute its watches: %s", control.name, exc)
                continue
            for host_path in paths:
                try:
                    real = self.host.resolve(host_path)
                except HostPathError as exc:
                    log.warning("%s: cannot watch %s: %s", control.name, host_path, exc)
                    continue
                folders.setdefault(real, set()).add(control.name)
                if host_path in names:
                    only.setdefault(real, {})[control.name] = names[host_path]
        if self.options.policy_path is not None:
            # The folder, for ConfigMap updates: kubelet swaps a `..data` symlink atomically.
            folders.setdefault(self.options.policy_path.resolve().parent, set()).add(POLICY_TARGET)
            folders.setdefault(self.options.policy_path.absolute().parent, set()).add(POLICY_TARGET)
        return folders, only

    def _build_watchers(self, policy: Policy) -> list[Watcher]:
        if self._static_watchers is not None:
            return self._static_watchers
        if self._watcher_factory is None:
            return []
        try:
            return self._watcher_factory(policy)
        except Exception:
            log.exception("cannot build the watchers; the periodic resync covers what they would see")
            return []

    def _start_folder_watcher(self, watch_map: dict[Path, set[str]], only: NameFilters) -> None:
        # Its reader thread at real-time priority: it is first on every revert's path (priority.py).
        self._folder_watcher = FolderWatcher(watch_map, ATTRIB_BLIND, only, realtime=True)
        self._folder_watcher.start(self.trigger)

    def _start_watchers(self, watch_map: dict[Path, set[str]], only: NameFilters) -> None:
        self._start_folder_watcher(watch_map, only)
        self._watchers = self._build_watchers(self.policy)
        self._start_each(self._watchers)

    def _start_each(self, watchers: list[Watcher]) -> None:
        for w in watchers:
            try:
                w.start(self.trigger)
            except Exception:
                log.exception("watcher %r failed to start; the periodic resync covers it", w)

    def _rebuild_watchers(self) -> None:
        """Every watcher from the new policy: folders, the Docker events stream, the firewall monitor.
        The new folder watches start before the old stop, and a resync follows: nothing falls between."""
        old_folder = self._folder_watcher
        self._start_folder_watcher(*self._watch_plan(self.policy))
        if old_folder is not None:
            old_folder.stop()
        if self._static_watchers is None:
            self._stop_each(self._watchers)
            self._watchers = self._build_watchers(self.policy)
            self._start_each(self._watchers)

    @staticmethod
    def _stop_each(watchers: list[Watcher]) -> None:
        for w in watchers:
            try:
                w.stop()
            except Exception:
                log.exception("watcher %r failed to stop", w)

    def _stop_watchers(self) -> None:
        self._stop_each(self._watchers)
        if self._folder_watcher is not None:
            self._folder_watcher.stop()

    def _sweep_temp_files(self, watch_map: dict[Path, set[str]]) -> None:
        """Temp files of an agent killed mid-write (SIGKILL) are removed; the target was never touched."""
        for real in {p for p in watch_map if p.is_dir()}:
            try:
                for child in real.iterdir():
                    if child.name.startswith(".") and ".nodeguard-" in child.name and child.name.endswith(".tmp"):
                        child.unlink(missing_ok=True)
            except OSError:
                continue
