"""The attribution companion of the event sink: drift events go out at once, the actor follows.

`AttributionSink` sits between the engine and the exporters. `emit` hands every event on
unchanged and at once (the revert never waits for the audit log); a drift event (detected,
reverted, revert_failed, flapping) is also queued, bounded, for a worker thread. The worker
reads the end of the audit log until a record of the change shows up or `waitMs` has passed
since the drift event (auditd writes its records a few milliseconds after the syscall), then
emits `nodeguard.drift.attributed` for the same finding (same control, rule, subject and
path, and `nodeguard.attributed.event_id` naming the event it completes), with the actor or
with `nodeguard.actor.source: unavailable` and the reason.

One window per drift episode: it ends when the drift was first seen (the detected event), so
the agent's own revert, which comes after, is never taken for the actor of the reverted event.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard.attribution.enrich import actor_attributes, describe, user_names
from nodeguard.attribution.logfile import DEFAULT_MAX_BYTES, LogUnreadable, TailScan, log_path_from_conf
from nodeguard.attribution.match import Actor, find_actor
from nodeguard.attribution.reasons import auditd_running, rule_covers
from nodeguard.attribution.records import AuditEvent, EventKey, gather
from nodeguard.events import model
from nodeguard.events.model import Event, EventName, EventSink
from nodeguard.host import HostPathError, HostRoot
from nodeguard.structs import JSONValue

log = logging.getLogger(__name__)

DRIFT_EVENTS = frozenset({EventName.DRIFT_DETECTED, EventName.DRIFT_REVERTED, EventName.DRIFT_REVERT_FAILED,
                          EventName.DRIFT_FLAPPING})
# The finding's identity, copied onto the attributed event so a SIEM joins it to the drift.
IDENTITY = ("nodeguard.control", "nodeguard.rule", "nodeguard.subject", "file.path", "nodeguard.cis",
            "nodeguard.mode", "nodeguard.severity")
ATTR_EVENT_ID = "nodeguard.attributed.event_id"
ATTR_EVENT_NAME = "nodeguard.attributed.event_name"
# How far before the drift was seen a change may lie: an inotify wake-up takes milliseconds,
# the periodic resync (60 s by default) finds what inotify missed.
LOOKBACK_NS = 60 * 1_000_000_000
POLL_S = 0.02
# The first look waits this long after the drift event: auditd needs a few milliseconds to write
# the record anyway, and the engine is busy reverting right then (one GIL for both threads).
FIRST_LOOK_S = 0.015
# ... and it waits for the engine to be quiet this long (no drift event emitted): a look is Python
# work that would share the GIL with the next revert of a burst. Past half of waitMs it looks anyway.
QUIET_S = 0.03
QUEUE_MAX = 1024
SYNC_FALLBACK_S = 1.0
# A fight (a tool rewriting the file many times a second) must not double the event stream: past
# this many attributions per finding per minute, only flapping events are attributed.
PER_FINDING_PER_MINUTE = 60
MAX_EPISODES = 10_000


@dataclass(frozen=True)
class AttributionSettings:
    audit_log: str | None = None  # host path; None: log_file of the host's auditd.conf
    wait_ms: int = 500
    per_finding_per_minute: int = PER_FINDING_PER_MINUTE
    rules_files: tuple[str, ...] = ("/etc/audit/audit.rules",)
    rules_dirs: tuple[str, ...] = ("/etc/audit/rules.d",)
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass
class Pending:
    """A drift event waiting for its actor."""

    event_id: str
    event_name: str
    identity: dict[str, JSONValue]
    path: str | None
    cutoff_ns: int  # the window's end: when the drift was first seen
    seen_mono: float  # when the drift event was emitted
    deadline_mono: float
    # Where the last look at the log ended (inode, offset): the next one reads only what follows.
    resume: tuple[int, int] | None = None


def own_pids(proc: Path = Path("/proc")) -> frozenset[int]:
    """This process's pid in every pid namespace /proc shows (NSpid), to skip the agent's own writes."""
    pids = {os.getpid()}
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                pids.update(int(p) for p in line.split()[1:] if p.isdigit())
    except OSError:
        pass
    return frozenset(pids)


def target_matcher(host: HostRoot, host_path: str) -> Callable[[str], bool]:
    """Whether a name from the audit log is the finding's file.

    The log names paths as the process wrote them, in the host's namespace (or under the root, in
    a sandbox): `/var/run/docker.sock` and `/run/docker.sock` are one file when /var/run is a symlink.
    """
    lexical = posixpath.normpath(host_path)
    base = posixpath.basename(lexical)

    def resolved(path: str) -> str:
        try:
            return host.host_path_of(host.resolve(path, follow_last=False))
        except (HostPathError, OSError):
            return path

    want = {lexical, resolved(lexical)}
    cache: dict[str, bool] = {}

    def is_target(name: str) -> bool:
        if posixpath.basename(name) != base:
            return False
        if name not in cache:
            hp = host.from_daemon_path(name)
            cache[name] = hp in want or resolved(hp) in want
        return cache[name]

    return is_target


@dataclass
class _Stats:
    queued: int = 0
    attributed: int = 0
    unavailable: int = 0
    dropped: int = 0
    skipped: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class AttributionSink:
    """An EventSink wrapper: passes events through at once, follows drift events with their actor."""

    def __init__(self, inner: EventSink, host: HostRoot, proc: Path, settings: AttributionSettings) -> None:
        self.inner = inner
        self.host = host
        self.proc = proc
        self.settings = settings
        self.stats = _Stats()
        self._exclude = own_pids()
        # Drifts waiting for the worker (None: stop), guarded by _lock. Appending does not wake the
        # worker by itself: with the engine's group commit on, the wake-up is sync(), after the pass,
        # so the worker never takes the interpreter from a lane in the middle of a revert.
        self._queue: deque[Pending | None] = deque()
        self._wake = threading.Event()
        self._wake_on_emit = True
        self._lock = threading.Lock()
        self._episode: dict[tuple[str, ...], int] = {}
        self._recent: dict[tuple[str, ...], deque[float]] = {}
        self._last_drift = 0.0  # monotonic time of the last drift event (the engine's busy signal)
        self._thread = threading.Thread(target=self._run, name="nodeguard-attribution", daemon=True)
        self._thread.start()

    # -- the engine's side: nothing here reads a file ----------------------------------------

    def emit(self, event: Event) -> None:
        if event.name is EventName.AGENT_STOPPED:
            # agent.stopped stays the last event: the actors still being looked up go out first
            # (each within its wait, and within the stop budget SIGTERM gives the agent).
            self.stop(timeout=min(self.settings.wait_ms / 1000 + 0.5, 1.5))
        self.inner.emit(event)
        if event.name not in DRIFT_EVENTS:
            if event.name is EventName.DRIFT_RESOLVED:
                with self._lock:
                    self._episode.pop(self._key(event), None)
            return
        self._last_drift = time.monotonic()
        try:
            with self._lock:  # the fast and the slow lane may both emit
                queued = self._enqueue(event)
        except Exception:  # attribution must never cost the engine an event
            log.exception("attribution: cannot queue %s", event.name)
            return
        # (A pass emitting hundreds of drifts wakes it at half the queue, so none is dropped.)
        if queued and (self._wake_on_emit or len(self._queue) >= QUEUE_MAX // 2):
            self._wake.set()

    # The engine's group commit (one fsync per pass) goes through to the sink that spools.
    def enable_group_commit(self) -> None:
        model.enable_group_commit(self.inner)
        # The engine calls sync() once per pass, on its committer thread: the worker is woken
        # there, after the revert, never by the lane's emit (its first look waits FIRST_LOOK_S anyway).
        self._wake_on_emit = False

    def sync(self) -> None:
        try:
            model.sync(self.inner)
        finally:
            if self._queue:
                self._wake.set()

    def _key(self, event: Event) -> tuple[str, ...]:
        a = event.attributes
        return (str(a.get("nodeguard.control", "")), str(a.get("nodeguard.rule", "")),
                str(a.get("nodeguard.subject", "")))

    def _enqueue(self, event: Event) -> bool:
        """Caller holds _lock. True when a drift was queued for the worker."""
        key = self._key(event)
        now = time.monotonic()
        if event.name is EventName.DRIFT_DETECTED or key not in self._episode:
            if len(self._episode) >= MAX_EPISODES:
                self._episode.pop(next(iter(self._episode)))
            self._episode[key] = event.time_unix_nano
        recent = self._recent.setdefault(key, deque())
        while recent and recent[0] < now - 60:
            recent.popleft()
        if event.name is not EventName.DRIFT_FLAPPING and len(recent) >= self.settings.per_finding_per_minute:
            self.stats.skipped += 1
            return False
        recent.append(now)
        if len(self._recent) > MAX_EPISODES:
            self._recent.pop(next(iter(self._recent)))
        path = event.attributes.get("file.path")
        item = Pending(event.id, event.name.value, {k: event.attributes[k] for k in IDENTITY if k in event.attributes},
                       str(path) if path else None, self._episode[key], now,
                       now + self.settings.wait_ms / 1000)
        if len(self._queue) >= QUEUE_MAX:
            self.stats.dropped += 1
            log.warning("attribution queue full: %s of %s goes unattributed", event.name.value, key)
            return False
        self._queue.append(item)
        self.stats.queued += 1
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued (each within its wait), then stop the worker."""
        with self._lock:
            self._queue.append(None)
        self._wake.set()
        self._thread.join(timeout if timeout is not None else self.settings.wait_ms / 1000 + 5)

    def close(self) -> None:
        self.stop()
        self.inner.close()

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[Pending] = []
        stopping = False
        while not (stopping and not pending):
            # Woken by sync() under group commit; SYNC_FALLBACK_S is a safety net, should no
            # pass ever follow (a drift emitted outside the engine's passes).
            self._wake.wait(POLL_S if pending else None if self._wake_on_emit else SYNC_FALLBACK_S)
            self._wake.clear()
            with self._lock:
                taken = list(self._queue)
                self._queue.clear()
            for item in taken:
                if item is None:
                    stopping = True
                else:
                    pending.append(item)
            now = time.monotonic()
            due = [p for p in pending if now >= p.seen_mono + FIRST_LOOK_S]
            quiet = now - self._last_drift >= QUIET_S
            overdue = any(now >= p.seen_mono + max(FIRST_LOOK_S, self.settings.wait_ms / 2000) for p in pending)
            if not stopping and (not due or not (quiet or overdue)):
                continue
            if pending:
                try:
                    pending = self._attempt(pending)
                except Exception as exc:  # hostile log or a bug: say so on the events, keep running
                    log.exception("attribution failed")
                    for p in pending:
                        self._emit_unavailable(p, f"attribution failed: {type(exc).__name__}")
                    pending = []

    def _log_path(self) -> str:
        return self.settings.audit_log or log_path_from_conf(self.host)

    def _attempt(self, pending: list[Pending]) -> list[Pending]:
        """Look once at the log for every pending drift; emit what is settled, return the rest."""
        now = time.monotonic()
        with_path = [p for p in pending if p.path]
        for p in pending:
            if not p.path:
                self._emit_unavailable(p, "the finding names no file: the audit trail cannot say who")
        if not with_path:
            return []
        log_path = self._log_path()
        # Drifts already looked for need only what auditd appended since (same file, same window).
        resumes = {p.resume for p in with_path}
        resume = resumes.pop() if len(resumes) == 1 else None
        try:
            scan = TailScan(self.host, log_path, min(p.cutoff_ns for p in with_path) - LOOKBACK_NS,
                            self.settings.max_bytes, resume)
        except LogUnreadable as exc:
            for p in with_path:
                self._emit_unavailable(p, f"the audit log is unreadable: {exc.strerror or exc}")
            return []
        targets = {id(p): (target_matcher(self.host, str(p.path)), self._inode(str(p.path))) for p in with_path}
        found: dict[int, Actor] = {}
        by_key: dict[EventKey, AuditEvent] = {}
        for chunk in scan.chunks():
            # Newest chunk first; an event whose records straddle two chunks is completed by the
            # older one (its SYSCALL comes first in the file), so only events touched now are tried.
            touched = gather(by_key, chunk)
            for p in with_path:
                if id(p) in found:
                    continue
                is_target, inode = targets[id(p)]
                actor = find_actor(touched.values(), is_target, p.cutoff_ns - LOOKBACK_NS, p.cutoff_ns,
                                   self._exclude, inode)
                if actor is not None:
                    found[id(p)] = actor
            if len(found) == len(with_path):
                break
        names: dict[int, str] | None = None
        left = []
        for p in with_path:
            actor = found.get(id(p))
            if actor is not None:
                if names is None:
                    names = user_names(self.host)
                self._emit_actor(p, actor_attributes(actor, names, self.proc))
            elif now >= p.deadline_mono:
                self._emit_unavailable(p, self._why(str(p.path), log_path))
            else:
                p.resume = scan.resume_point
                left.append(p)
        return left

    def _inode(self, path: str) -> tuple[int, int, int] | None:
        """The file's (device major, minor, inode) now: the name the change used may be another."""
        try:
            st = os.lstat(self.host.resolve(path, follow_last=False))
        except (HostPathError, OSError):
            return None
        return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)

    def _why(self, path: str, log_path: str) -> str:
        running = auditd_running(self.proc)
        if running is False:
            return "auditd is not running"
        if not rule_covers(self.host, path, list(self.settings.rules_files), list(self.settings.rules_dirs)):
            return f"no audit rule covers {path}"
        return (f"no audit record of a change to {path} in {log_path} within {LOOKBACK_NS // 10**9}s before "
                "the drift was seen (changed through a path no rule watches, or auditd is behind)")

    def _event(self, p: Pending, body: str, attrs: dict[str, JSONValue]) -> Event:
        out: dict[str, JSONValue] = dict(p.identity)
        out["nodeguard.outcome"] = "attributed"
        out[ATTR_EVENT_ID] = p.event_id
        out[ATTR_EVENT_NAME] = p.event_name
        out.update(attrs)
        latency = round((time.monotonic() - p.seen_mono) * 1000, 3)
        out["nodeguard.actor.latency_ms"] = latency
        self.stats.latencies_ms.append(latency)
        return Event(EventName.DRIFT_ATTRIBUTED, "INFO", body, out)

    def _emit_actor(self, p: Pending, attrs: dict[str, JSONValue]) -> None:
        self.stats.attributed += 1
        what = f"{p.identity.get('nodeguard.control')}/{p.identity.get('nodeguard.rule')}"
        self._send(self._event(p, f"{what}: {p.path} changed by {describe(attrs)}", attrs))

    def _emit_unavailable(self, p: Pending, reason: str) -> None:
        self.stats.unavailable += 1
        what = f"{p.identity.get('nodeguard.control')}/{p.identity.get('nodeguard.rule')}"
        self._send(self._event(p, f"{what}: no actor known: {reason}",
                               {"nodeguard.actor.source": "unavailable", "nodeguard.actor.reason": reason}))

    def _send(self, event: Event) -> None:
        try:
            self.inner.emit(event)
        except Exception:
            log.exception("event sink failed for %s", event.name)
