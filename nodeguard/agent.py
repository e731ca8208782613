"""Assembling the agent: policy, event sinks, engine, watchers, signals. `nodeguard run` calls run_agent."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType

from nodeguard.attribution import AttributionSink, attribution_for
from nodeguard.engine import Engine, EngineOptions
from nodeguard.events.kube import KubeSink
from nodeguard.events.metrics import set_open_drifts_source
from nodeguard.events.model import Event, EventSink, enable_group_commit, sync
from nodeguard.health import write_heartbeat
from nodeguard.host import HostRoot
from nodeguard.memory import limit_arenas
from nodeguard.policy import Policy
from nodeguard.policy_source import PolicySource
from nodeguard.state import StateStore
from nodeguard.watch import Watcher

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 10.0
SWITCH_INTERVAL_S = 0.0005


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

    def enable_group_commit(self) -> None:
        """Events are written at once and made durable by sync(), once per pass (see engine.py)."""
        for sink in self.sinks:
            enable_group_commit(sink)

    def sync(self) -> None:
        # Not under the emit lock: a lane's emit never waits for this fsync.
        for sink in self.sinks:
            try:
                sync(sink)
            except Exception:
                log.exception("sink %r failed to sync", sink)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("sink %r failed to close", sink)


def heartbeat_writer(state_dir: Path, every: float = HEARTBEAT_EVERY_S) -> Callable[[], None]:
    """After each pass, the liveness file the pod's probe reads (at most once per `every` seconds:
    a storm of passes must not become a storm of writes). The engine passes at least once per resync."""
    last = [0.0]
    lock = threading.Lock()  # every lane calls it after its passes

    def beat() -> None:
        now = time.monotonic()
        with lock:
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
    # The lanes are threads: a lane with work waits at most this long for the GIL held by another
    # (a 20,000-member group pass must not hold the socket's revert for the default 5 ms slices).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    limit_arenas()
    store = StateStore(options.state_dir)
    sink = FanoutSink(list(sinks))
    attribution: AttributionSink | None = None
    try:
        source = PolicySource(options.policy_path, store, options.mode_override)
        policy = source.load_initial(sink.emit)  # PolicyError when neither the file nor a last good copy is valid
        # Drift events go out at once; their actor follows from the audit log (never delays a revert).
        attribution = attribution_for(options.host, options.proc, policy, sink)
        engine_sink: EventSink = attribution or sink

        def factory(policy: Policy) -> list[Watcher]:
            return default_watchers(options.host, policy)

        engine = Engine(options, source, engine_sink, watchers=watchers, watcher_factory=factory,
                        on_pass=heartbeat_writer(options.state_dir))
        set_open_drifts_source(engine.open_drifts)  # the nodeguard_open_drifts gauge reads the engine's level
        for each in sink.sinks:  # and so does the Node condition (held until now: findings.json is loaded)
            if isinstance(each, KubeSink):
                each.use_engine(engine.failing_keys)

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
