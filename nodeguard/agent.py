"""Assembling the agent: policy, event sinks, engine, watchers, signals. `nodeguard run` calls run_agent."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType

from nodeguard.attribution import AttributionSink, attribution_for
from nodeguard.engine import Engine, EngineOptions
from nodeguard.events.metrics import set_open_drifts_source
from nodeguard.events.model import Event, EventName, EventSink, lifecycle_event
from nodeguard.health import write_heartbeat
from nodeguard.host import HostRoot
from nodeguard.policy import Policy, PolicyError, load_policy, parse_policy, read_policy_bytes
from nodeguard.state import StateStore
from nodeguard.watch import Watcher

log = logging.getLogger(__name__)

LAST_GOOD_POLICY = "policy.yaml"
HEARTBEAT_EVERY_S = 10.0


class FanoutSink:
    """Hands every event to each sink; one failing sink never starves the others."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            for sink in self.sinks:
                try:
                    sink.emit(event)
                except Exception:
                    log.exception("sink %r failed", sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("sink %r failed to close", sink)


def initial_policy(options: EngineOptions, store: StateStore, sink: EventSink) -> Policy:
    """The policy file; if it is invalid, the last good one kept in the state dir (else PolicyError)."""
    try:
        policy = load_policy(options.policy_path)
    except PolicyError as exc:
        kept = store.last_good(LAST_GOOD_POLICY)
        sink.emit(lifecycle_event(EventName.POLICY_REJECTED,
                                  f"policy rejected at start:\n{exc.render()}" +
                                  ("; the last good policy stays in force" if kept else ""),
                                  policy_source=str(options.policy_path), problems=[p[2] for p in exc.problems]))
        if kept is None:
            raise
        return parse_policy(kept.decode(), "<last good policy>")
    if options.policy_path is not None:
        store.save_last_good(LAST_GOOD_POLICY, read_policy_bytes(options.policy_path))
    return policy


def heartbeat_writer(state_dir: Path, every: float = HEARTBEAT_EVERY_S) -> Callable[[], None]:
    """After each pass, the liveness file the pod's probe reads (at most once per `every` seconds:
    a storm of passes must not become a storm of writes). The engine passes at least once per resync."""
    last = [0.0]

    def beat() -> None:
        now = time.monotonic()
        if now - last[0] < every:
            return
        last[0] = now
        try:
            write_heartbeat(state_dir)
        except OSError as exc:
            log.warning("cannot write the heartbeat under %s: %s", state_dir, exc)

    return beat


def default_watchers(host: HostRoot, policy: Policy) -> list[Watcher]:
    """What wakes the engine besides inotify: Docker events (new containers), netfilter changes (tamper)."""
    from nodeguard.netfilter.monitor import watchers_for
    from nodeguard.watch_docker import DockerEventsWatcher

    return [DockerEventsWatcher(host, policy), *watchers_for(host, policy)]


def run_agent(options: EngineOptions, sinks: Iterable[EventSink], watchers: list[Watcher] | None = None) -> Engine:
    """Run until SIGTERM/SIGINT; returns the stopped engine (for its counters)."""
    store = StateStore(options.state_dir)
    sink = FanoutSink(list(sinks))
    attribution: AttributionSink | None = None
    try:
        policy = initial_policy(options, store, sink)
        # Drift events go out at once; their actor follows from the audit log (never delays a revert).
        attribution = attribution_for(options.host, options.proc, policy, sink)
        engine_sink: EventSink = attribution or sink
        engine = Engine(options, policy, engine_sink,
                        watchers=default_watchers(options.host, policy) if watchers is None else watchers,
                        on_pass=heartbeat_writer(options.state_dir))
        set_open_drifts_source(engine.open_drifts)  # the nodeguard_open_drifts gauge reads the engine's level

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            engine.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            engine.run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return engine
    finally:
        set_open_drifts_source(None)
        if attribution is not None:
            attribution.stop()
        sink.close()
