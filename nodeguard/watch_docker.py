"""Following the daemon's events stream: a new container is looked at within a second.

A watcher for the agent's engine: `start(trigger)` / `stop()`. Each container create, start,
update or destroy, and each daemon reload, calls `trigger("runtime", reason)`; the runtime control
then re-reads everything (level-triggered, like the inotify watches: an event only means "look
again"). When the stream breaks (daemon restart, socket gone) the watcher reconnects with
exponential back-off and asks for a resync, since events in the gap were never seen.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from nodeguard.docker_api import DaemonUnavailable, connect, describe_error
from nodeguard.host import HostRoot
from nodeguard.policy import Policy
from nodeguard.reconcile import Backoff
from nodeguard.structs import Mode

log = logging.getLogger(__name__)

Trigger = Callable[[str, str], None]

# Container actions that can change what the runtime rules see; exec_*, attach, resize, top... cannot.
CONTAINER_ACTIONS = frozenset({"create", "start", "restart", "update", "rename", "destroy", "die", "stop"})
DAEMON_ACTIONS = frozenset({"reload"})


def event_reason(event: dict[str, Any]) -> str | None:
    """The trigger reason for one decoded event, or None when it cannot change a finding."""
    kind = event.get("Type")
    action = str(event.get("Action") or event.get("status") or "")
    attrs = (event.get("Actor") or {}).get("Attributes") or {}
    if kind == "container" and action in CONTAINER_ACTIONS:
        name = attrs.get("name") or str(event.get("id", ""))[:12]
        return f"docker event: container {name} {action}"
    if kind == "daemon" and action in DAEMON_ACTIONS:
        return f"docker event: daemon {action}"
    return None


class DockerEventsWatcher:
    """Watches `GET /events` (container and daemon events) on the policy's socket."""

    def __init__(self, host: HostRoot, policy: Policy, *, control: str = "runtime",
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.host = host
        self.policy = policy
        self.control = control
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        # Observable state, for health reporting and tests.
        self.connected = threading.Event()
        self.connects = 0
        self.last_error: str | None = None

    def start(self, trigger: Trigger) -> None:
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        if self.policy.mode_of("runtime") is Mode.OFF:
            # The runtime control is off: no reason to hold a connection to a root-equivalent socket.
            log.info("runtime control is off: not following the docker events stream")
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(trigger,), name="docker-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            # Shuts the socket down under the blocked reader: its iteration ends at once.
            with contextlib.suppress(Exception):
                stream.close()

    def _run(self, trigger: Trigger) -> None:
        backoff = Backoff(self.min_backoff, self.max_backoff)  # the one back-off helper (reconcile.py)
        attempt = 0
        broken = False
        while not self._stop.is_set():
            connects_before = self.connects
            try:
                client = connect(self.host, self.policy, timeout=self.policy.spec.controls.runtime.timeout_seconds)
            except DaemonUnavailable as exc:
                self._note_error(str(exc), broken)
                broken = True
            else:
                try:
                    self._follow(client, trigger, resync=broken or self.connects == 0)
                except Exception as exc:  # requests/urllib3/docker errors: the stream broke
                    self._note_error(f"docker events stream broke: {describe_error(exc)}", broken)
                finally:
                    self.connected.clear()
                    with contextlib.suppress(Exception):
                        client.close()
                broken = True
                if not self._stop.is_set():
                    log.info("docker events stream ended; reconnecting")
            if self.connects > connects_before:
                attempt = 0  # it was connected: a fresh break, not a daemon that stays down
            if self._stop.wait(backoff.delay(attempt)):
                break
            attempt += 1

    def _follow(self, client: Any, trigger: Trigger, *, resync: bool) -> None:
        stream = client.events(decode=True, filters={"type": ["container", "daemon"]})
        with self._lock:
            if self._stop.is_set():
                stream.close()
                return
            self._stream = stream
        self.connects += 1
        self.connected.set()
        self.last_error = None
        if resync:
            # Whatever happened while we were not listening is found by a full look.
            trigger(self.control, "docker events stream (re)connected: resync")
        for event in stream:
            if self._stop.is_set():
                break
            if not isinstance(event, dict):
                continue
            reason = event_reason(event)
            if reason is not None:
                trigger(self.control, reason)

    def _note_error(self, message: str, repeated: bool) -> None:
        if message != self.last_error:
            (log.info if repeated else log.warning)("%s", message)
        self.last_error = message
