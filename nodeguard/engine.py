"""The agent's loop: triggers -> coalesced per control -> observe, evaluate, remediate -> events.

Level-triggered like a Kubernetes controller: a trigger only says "look again at control X"; the
control re-reads the whole truth and compares it with the policy, so a lost or merged inotify event
costs nothing and the periodic resync catches what inotify cannot see. One reconciler thread does
all the work (watchers only enqueue), so no two remediations ever race each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard._version import __version__
from nodeguard.audit import evaluate_control
from nodeguard.controls import Context, Control, Outcome, all_controls
from nodeguard.events.metrics import record_reconcile
from nodeguard.events.model import Event, EventName, EventSink, event_for_finding, lifecycle_event
from nodeguard.host import HostPathError, HostRoot
from nodeguard.netfilter.select import writes_refused
from nodeguard.policy import Policy, PolicyError, parse_policy, read_policy_bytes
from nodeguard.state import KnownFinding, StateStore, finding_key
from nodeguard.structs import Finding, Mode, Severity, Status
from nodeguard.watch import RESYNC, FolderWatcher, Watcher

log = logging.getLogger(__name__)

POLICY_TARGET = "policy"
# Seconds a first flap backs off; doubled on every further flap up to the policy's maximum.
FIRST_BACKOFF_S = 1.0


@dataclass
class FlapState:
    reverts: deque[float] = field(default_factory=deque)
    level: int = 0
    backoff_until: float = 0.0


@dataclass
class EngineOptions:
    host: HostRoot
    state_dir: Path
    policy_path: Path | None = None
    mode_override: Mode | None = None
    proc: Path = Path("/proc")


class Engine:
    def __init__(self, options: EngineOptions, policy: Policy, sink: EventSink,
                 watchers: Iterable[Watcher] = (), controls: Iterable[Control] | None = None,
                 on_pass: Callable[[], None] | None = None) -> None:
        self.options = options
        self.host = options.host
        self.sink = sink
        self.store = StateStore(options.state_dir)
        self.controls = list(controls) if controls is not None else all_controls()
        self._by_name = {c.name: c for c in self.controls}
        self._extra_watchers = list(watchers)
        self._folder_watcher: FolderWatcher | None = None
        self._on_pass = on_pass
        self._cv = threading.Condition(threading.RLock())
        self._pending: dict[str, str] = {}
        self._stop = threading.Event()
        self._known: dict[str, KnownFinding] = {}
        self._baseline = False
        self._dirty = False
        self._flaps: dict[str, FlapState] = {}
        self._policy_raw: bytes | None = self._read_policy_bytes()
        self.policy = self._effective(policy)
        self.passes = 0
        self._last_pass_end = 0.0
        self._netns_refusal = writes_refused(self.host, options.proc)
        self._refusal_reported: set[str] = set()

    # -- public ------------------------------------------------------------------------------

    def trigger(self, target: str, reason: str) -> None:
        """Ask for `target` (a control name, "policy" or "*") to be looked at again. Never blocks long."""
        log.debug("trigger %s: %s", target, reason)
        with self._cv:
            self._pending.setdefault(target, reason)
            self._cv.notify()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()

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
            control, rule = [*key.split("/", 2), ""][:2]
            try:
                severity = self._by_name[control].rule(rule).severity.value
            except KeyError:
                severity = "unknown"
            out.append((control, rule, severity))
        return out

    def run(self) -> None:
        """Start-up evaluation, then watch until stop(); always ends with agent.stopped."""
        self._emit(lifecycle_event(EventName.AGENT_STARTED, f"nodeguard {__version__} started",
                                   version=__version__, mode=self.policy.spec.mode.value,
                                   host_root=str(self.host.root)))
        self._emit(self._policy_loaded_event())
        known = self.store.load_findings()
        self._baseline = known is not None
        self._known = known or {}
        watch_map = self._watch_map()  # watch paths cost a daemon lookup: computed once for both
        self._sweep_temp_files(watch_map)
        self._start_watchers(watch_map)
        try:
            self._reconcile(self.controls, startup=True)
            next_resync = time.monotonic() + self.policy.spec.agent.resync_seconds
            while not self._stop.is_set():
                timeout = max(0.0, min(next_resync, self._next_backoff()) - time.monotonic())
                with self._cv:
                    if not self._pending and not self._stop.is_set():
                        self._cv.wait(timeout)
                if self._stop.is_set():
                    break
                # Leading edge: a change after a quiet spell is looked at at once (revert latency);
                # within coalesceMs of the last pass, triggers wait and merge, so a burst (an
                # editor's write+rename, usermod's four files, a storm) costs one pass per window.
                since_last = time.monotonic() - self._last_pass_end
                coalesce = self.policy.spec.agent.coalesce_ms / 1000
                if self._pending and since_last < coalesce:
                    self._stop.wait(coalesce - since_last)
                with self._cv:
                    pending, self._pending = self._pending, {}
                now = time.monotonic()
                if POLICY_TARGET in pending and self._reload_policy():
                    pending[RESYNC] = "policy changed"
                if now >= next_resync:
                    pending[RESYNC] = "periodic resync"
                if now >= self._next_backoff():
                    for key, flap in self._flaps.items():
                        if flap.backoff_until and now >= flap.backoff_until:
                            flap.backoff_until = 0.0
                            pending.setdefault(key.split("/", 1)[0], "back-off expired")
                if RESYNC in pending:
                    targets = self.controls
                    next_resync = now + self.policy.spec.agent.resync_seconds
                else:
                    # In the controls' own order: the cheap local ones (socket, group) first, the
                    # Docker API and netfilter ones after, so a slow API never delays a file revert.
                    targets = [c for c in self.controls if c.name in pending]
                if targets:
                    self._reconcile(targets)
        finally:
            self._stop_watchers()
            self._save_state()
            self._emit(lifecycle_event(EventName.AGENT_STOPPED, "nodeguard stopped", passes=self.passes))

    # -- reconcile ---------------------------------------------------------------------------

    def _context(self) -> Context:
        return Context(self.host, self.policy, self.options.proc, self.options.state_dir)

    def _reconcile(self, controls: Iterable[Control], startup: bool = False) -> None:
        ctx = self._context()  # one context per pass: dockerd and /etc/group are read once
        for control in controls:
            if control.settings(self.policy).rule_mode("", self.policy.spec.mode) is Mode.OFF:
                continue
            started = time.monotonic()
            try:
                self._reconcile_control(control, ctx, startup)
            except Exception:  # one broken control must not stop the others or the agent
                log.exception("reconciling %s failed", control.name)
            record_reconcile(control.name, time.monotonic() - started)
        self.passes += 1
        self._save_state()
        self._last_pass_end = time.monotonic()
        if self._on_pass is not None:
            self._on_pass()

    def _reconcile_control(self, control: Control, ctx: Context, startup: bool) -> None:
        result = evaluate_control(control, ctx)
        if result.observed is not None:
            try:
                control.remember(ctx, result.observed, self.store)
            except OSError as exc:
                # A full state disk must not blind the control: it still reports and enforces
                # (a revert that needs a quarantine copy then fails and says why).
                log.warning("%s: cannot keep the last good copy: %s", control.name, exc.strerror or exc)
        now = time.time()
        seen: set[str] = set()
        to_fix: list[Finding] = []
        for f in result.findings:
            key = finding_key(f)
            seen.add(key)
            prev = self._known.get(key)
            failing = f.status is Status.FAIL
            was_failing = prev is not None and prev.status == Status.FAIL.value
            if failing and not was_failing:
                extra = {}
                body = f.message
                if startup and self._baseline:
                    extra["nodeguard.while_down"] = True
                    body = f"{f.message} (changed while nodeguard was not running)"
                self._emit(event_for_finding(EventName.DRIFT_DETECTED, f, outcome="detected", body=body,
                                             extra=extra))
                self._remember(key, f, now)
            elif was_failing and not failing:
                self._emit(event_for_finding(EventName.DRIFT_RESOLVED, f, outcome="resolved"))
                self._remember(key, f, now)
            elif prev is None or prev.status != f.status.value:
                self._remember(key, f, now)
            if failing and f.mode is Mode.ENFORCE and control.changes_network and self._netns_refusal:
                if key not in self._refusal_reported:
                    self._refusal_reported.add(key)
                    self._emit(event_for_finding(EventName.DRIFT_REVERT_FAILED, f, outcome="revert_failed",
                                                 body=f"not reverted: {self._netns_refusal}"))
                continue
            if failing and f.mode is Mode.ENFORCE and self._enforceable(control, f):
                if self._in_backoff(key, now):
                    continue
                to_fix.append(f)
        prefix = control.name + "/"
        for key in [k for k in self._known if k.startswith(prefix) and k not in seen]:
            prev = self._known.pop(key)
            self._dirty = True
            if prev.status == Status.FAIL.value:
                self._emit(self._vanished_event(key, prev))
        if to_fix:
            self._remediate(control, ctx, result.observed, to_fix)

    @staticmethod
    def _enforceable(control: Control, f: Finding) -> bool:
        try:
            return control.rule(f.rule).enforceable
        except KeyError:
            return False

    def _remediate(self, control: Control, ctx: Context, observed: object, findings: list[Finding]) -> None:
        started = time.monotonic()
        try:
            outcomes = control.remediate_many(ctx, findings, observed)
        except OSError as exc:  # e.g. the file was replaced under us: expected on a contested host
            log.info("%s: remediation did not apply: %s", control.name, exc)
            outcomes = [Outcome(False, False, str(exc.strerror or exc)) for _ in findings]
        except Exception as exc:
            log.exception("%s: remediation failed", control.name)
            outcomes = [Outcome(False, False, f"{type(exc).__name__}: {exc}") for _ in findings]
        # Verify against the host, not against what we think we did.
        after_ctx = self._context()
        after = {finding_key(f): f for f in evaluate_control(control, after_ctx).findings}
        took_ms = round((time.monotonic() - started) * 1000, 3)
        now = time.time()
        for f, outcome in zip(findings, outcomes, strict=True):
            key = finding_key(f)
            current = after.get(key)
            fixed = current is None or current.status is not Status.FAIL
            details = {f"nodeguard.{k}": v for k, v in outcome.details.items()}
            details["nodeguard.revert_ms"] = took_ms
            if outcome.restart_required:
                details["nodeguard.restart_required"] = True
            if fixed and outcome.ok:
                self._emit(event_for_finding(EventName.DRIFT_REVERTED, f, outcome="reverted",
                                             body=f"reverted: {outcome.message}", extra=details))
                self._remember(key, current or dataclasses.replace(f, status=Status.PASS), now)
                self._note_revert(key, f, now)
            else:
                why = outcome.message if not outcome.ok else f"{outcome.message}; still failing afterwards"
                self._emit(event_for_finding(EventName.DRIFT_REVERT_FAILED, f, outcome="revert_failed",
                                             body=f"revert failed: {why}", extra=details))
                self._note_revert(key, f, now)

    # -- flapping ----------------------------------------------------------------------------

    def _note_revert(self, key: str, f: Finding, now: float) -> None:
        cfg = self.policy.spec.agent.flapping
        flap = self._flaps.setdefault(key, FlapState())
        flap.reverts.append(now)
        while flap.reverts and flap.reverts[0] < now - cfg.window_seconds:
            flap.reverts.popleft()
        if len(flap.reverts) <= cfg.threshold:
            return
        flap.level += 1
        backoff = min(cfg.max_backoff_seconds, FIRST_BACKOFF_S * 2 ** (flap.level - 1))
        flap.backoff_until = time.monotonic() + backoff
        flap.reverts.clear()
        self._emit(event_for_finding(
            EventName.DRIFT_FLAPPING, f, outcome="flapping",
            body=f"{f.control}/{f.rule} came back more than {cfg.threshold} times in {cfg.window_seconds:g}s: "
                 f"something is fighting nodeguard; backing off {backoff:g}s",
            extra={"nodeguard.backoff_seconds": backoff, "nodeguard.flap_level": flap.level}))

    def _in_backoff(self, key: str, now: float) -> bool:
        flap = self._flaps.get(key)
        if flap is None:
            return False
        if flap.backoff_until and time.monotonic() < flap.backoff_until:
            return True
        if flap.reverts and flap.reverts[-1] < now - self.policy.spec.agent.flapping.window_seconds * 4:
            flap.level = 0  # quiet for a while: the next flap starts from the first back-off again
        return False

    def _next_backoff(self) -> float:
        times = [f.backoff_until for f in self._flaps.values() if f.backoff_until]
        return min(times) if times else float("inf")

    # -- state and events --------------------------------------------------------------------

    def _remember(self, key: str, f: Finding, now: float) -> None:
        self._known[key] = KnownFinding(f.status.value, f.observed, now)
        self._dirty = True

    def _save_state(self) -> None:
        if not self._dirty:
            return
        try:
            self.store.save_findings(self._known)
            self._dirty = False
        except OSError as exc:
            log.error("cannot save state under %s: %s", self.store.dir, exc)

    def _vanished_event(self, key: str, prev: KnownFinding) -> Event:
        control, rule, subject = ([*key.split("/", 2), "", ""])[:3]
        f = Finding(control, rule, Status.PASS, Severity.INFO,
                    f"{control}/{rule}{' ' + subject if subject else ''} no longer applies",
                    observed=None, expected=None, subject=subject or None,
                    mode=self._by_name[control].rule_mode(self.policy, rule) if control in self._by_name
                    else Mode.OBSERVE)
        return event_for_finding(EventName.DRIFT_RESOLVED, f, outcome="resolved",
                                 extra={"nodeguard.previously_observed": prev.observed})

    def _emit(self, event: Event) -> None:
        try:
            self.sink.emit(event)
        except Exception:  # an exporter problem must never stop enforcement
            log.exception("event sink failed for %s", event.name)

    # -- policy ------------------------------------------------------------------------------

    def _effective(self, policy: Policy) -> Policy:
        return policy.with_mode(self.options.mode_override) if self.options.mode_override else policy

    def _read_policy_bytes(self) -> bytes | None:
        if self.options.policy_path is None:
            return None
        try:
            return read_policy_bytes(self.options.policy_path)
        except OSError:
            return None

    def _policy_loaded_event(self) -> Event:
        digest = hashlib.sha256(self._policy_raw or b"").hexdigest()
        return lifecycle_event(EventName.POLICY_LOADED, f"policy {self.policy.metadata.name} in force",
                               policy_name=self.policy.metadata.name, policy_sha256=digest,
                               policy_labels=[f"{k}={v}" for k, v in sorted(self.policy.metadata.labels.items())],
                               policy_source=str(self.options.policy_path or "<embedded default>"),
                               mode=self.policy.spec.mode.value)

    def _reload_policy(self) -> bool:
        """Load the policy file again; True when a new valid policy is now in force."""
        raw = self._read_policy_bytes()
        if raw is None or raw == self._policy_raw:
            return False
        self._policy_raw = raw
        source = str(self.options.policy_path)
        try:
            policy = parse_policy(raw.decode("utf-8", errors="replace"), source)
        except PolicyError as exc:
            self._emit(lifecycle_event(EventName.POLICY_REJECTED,
                                       f"policy rejected, the previous one stays in force:\n{exc.render()}",
                                       policy_source=source, problems=[p[2] for p in exc.problems]))
            return False
        self.policy = self._effective(policy)
        try:
            self.store.save_last_good("policy.yaml", raw)
        except OSError as exc:  # a full state disk: the new policy still applies, only not across a restart
            log.warning("cannot keep the last good policy: %s", exc.strerror or exc)
        self._emit(self._policy_loaded_event())
        self._restart_folder_watcher()
        return True

    # -- watchers ----------------------------------------------------------------------------

    def _watch_map(self) -> dict[Path, set[str]]:
        ctx = self._context()
        folders: dict[Path, set[str]] = {}
        for control in self.controls:
            try:
                paths = control.watch_paths(ctx)
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
        if self.options.policy_path is not None:
            # The folder, for ConfigMap updates: kubelet swaps a `..data` symlink atomically.
            folders.setdefault(self.options.policy_path.resolve().parent, set()).add(POLICY_TARGET)
            folders.setdefault(self.options.policy_path.absolute().parent, set()).add(POLICY_TARGET)
        return folders

    def _start_watchers(self, watch_map: dict[Path, set[str]]) -> None:
        self._folder_watcher = FolderWatcher(watch_map)
        self._folder_watcher.start(self.trigger)
        for w in self._extra_watchers:
            try:
                w.start(self.trigger)
            except Exception:
                log.exception("watcher %r failed to start; the periodic resync covers it", w)

    def _restart_folder_watcher(self) -> None:
        if self._folder_watcher is not None:
            self._folder_watcher.stop()
        self._folder_watcher = FolderWatcher(self._watch_map())
        self._folder_watcher.start(self.trigger)

    def _stop_watchers(self) -> None:
        for w in self._extra_watchers:
            try:
                w.stop()
            except Exception:
                log.exception("watcher %r failed to stop", w)
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
