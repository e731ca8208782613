r"""The cluster's view of each node: a Node condition and Node Events, written from inside the DaemonSet.

`KubeSink` is an EventSink beside the other exporters. From the drifts open on this node (the
engine's, below) and the drift events it:

- sets the Node condition `DockerDaemonCompliant` (True: no open drift; False: the drifts, named),
  the way node-problem-detector reports node problems. The condition is PATCHed (strategic merge,
  so the kubelet's own conditions are untouched) only when its status, reason or message changes.
- records a Kubernetes Event on the Node for each drift, aggregated like client-go's
  EventCorrelator: a repeat of the same drift bumps `count` and `lastTimestamp` of the Event it
  already created instead of creating another object.

It never blocks the engine: `emit` updates a bounded table of pending Node Events under a lock (a
repeat bumps its entry's count) and wakes a thread of its own that makes the API calls. When the
API server is slow and `queue_size` distinct Events already wait, more are dropped and counted; the
condition is recomputed at each sync, so it is never lost.

The open drifts are the engine's: in the agent, each sync asks the engine for the findings failing
now (`Engine.failing_keys`, the one finding identity `reconcile.finding_key`, what findings.json
keeps across restarts), as the Prometheus gauge does at each scrape. The sink is built before the
engine, so it holds the condition until the agent hands it the engine (`use_engine`); the engine
has read findings.json by then. So an agent restart with the same drifts still open (the engine
emits nothing for them) patches nothing, a drift resolved while the agent was down is closed by
the engine at start, and a node whose findings.json names open drifts never shows True first.
Without an engine (`wait_for_engine=False`: tests, benchmarks) the sink keeps the open set from
the drift events itself. The condition and the Node Events show each drift as
`control/rule[subject]` (`drift_name`).

Outside a cluster (no KUBERNETES_SERVICE_HOST) `kube_sink_from_env` returns None: nothing to do.

Every node's state (the README and the chart's NOTES have it with the reason and message too):

    kubectl get nodes -o custom-columns=\
      'NODE:.metadata.name,COMPLIANT:.status.conditions[?(@.type=="DockerDaemonCompliant")].status'
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nodeguard.events.model import Event, EventName
from nodeguard.reconcile import Backoff, event_finding_key, split_key
from nodeguard.settings import EVENT_NAMESPACE

log = logging.getLogger(__name__)

CONDITION_TYPE = "DockerDaemonCompliant"
COMPONENT = "nodeguard"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
# Events of cluster-scoped objects (a Node) live in "default", as client-go's recorder puts them.
DEFAULT_EVENT_NAMESPACE: str = EVENT_NAMESPACE.default
# Where nodeguard kept a second copy of its open drifts before it read them from the engine (and
# findings.json): removed at start, never read.
OLD_OPEN_DRIFTS_FILE = "kube-open-drifts.json"
MAX_MESSAGE = 1024  # events.k8s.io caps a note at 1 kB; keep condition messages as short
# Names enough to fill a message of MAX_MESSAGE (a name and its ", " take 3 characters at least): a
# node with 100,000 open drifts picks the smallest 512 names at each change instead of sorting all.
_NAMES_SHOWN = MAX_MESSAGE // 2
EVENT_CACHE_SIZE = 4096  # aggregated Events remembered, as client-go's correlator

# Which agent events become Node Events, with the Event's type and reason.
_NODE_EVENTS: dict[EventName, tuple[str, str]] = {
    EventName.DRIFT_DETECTED: ("Warning", "DriftDetected"),
    EventName.DRIFT_REVERTED: ("Normal", "DriftReverted"),
    EventName.DRIFT_REVERT_FAILED: ("Warning", "DriftRevertFailed"),
    EventName.DRIFT_FLAPPING: ("Warning", "DriftFlapping"),
    EventName.DRIFT_RESOLVED: ("Normal", "DriftResolved"),
    EventName.POLICY_REJECTED: ("Warning", "PolicyRejected"),
}
# A drift is open from `detected` until it is `resolved` (gone by itself) or `reverted` (by us).
_OPENS = {EventName.DRIFT_DETECTED, EventName.DRIFT_REVERT_FAILED, EventName.DRIFT_FLAPPING}
_CLOSES = {EventName.DRIFT_RESOLVED, EventName.DRIFT_REVERTED}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def drift_name(key: str) -> str:
    """How the Node shows a drift (condition message, Event message): control/rule[subject],
    from the finding's identity `control/rule/subject`."""
    control, rule, subject = split_key(key)
    return f"{control}/{rule}[{subject}]" if subject else f"{control}/{rule}"


@dataclass(frozen=True)
class Condition:
    status: str  # "True" | "False"
    reason: str
    message: str

    @classmethod
    def for_open(cls, open_drifts: Collection[str]) -> Condition:
        if not open_drifts:
            return cls("True", "NoOpenDrift", "the Docker daemon matches the nodeguard policy")
        # The smallest names, sorted: the same first MAX_MESSAGE characters as sorting them all.
        names = ", ".join(heapq.nsmallest(_NAMES_SHOWN, open_drifts))
        return cls("False", "DriftOpen", _short(f"{len(open_drifts)} open drift(s): {names}"))


@dataclass
class _NodeEventWork:
    kind: str  # Normal | Warning
    reason: str
    key: str
    message: str
    count: int = 1  # occurrences since the last send


@dataclass
class _Recorded:
    name: str
    count: int


OpenKeys = Callable[[], Iterable[str]]  # the finding_key of every drift open now


class KubeSink:
    """EventSink that keeps the Node's condition and Events; all API calls on its own thread.

    `wait_for_engine=True` (the agent): the condition is set only once `use_engine` gave the
    engine's open drifts, and from them. False: from the drift events this sink sees.
    """

    def __init__(
        self,
        api: Any,  # kubernetes.client.CoreV1Api
        node_name: str,
        *,
        event_namespace: str = DEFAULT_EVENT_NAMESPACE,
        wait_for_engine: bool = False,
        queue_size: int = 1000,
        retry_max: float = 60.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.event_namespace = event_namespace
        self.dropped = 0  # Node Events dropped because `queue_size` distinct ones were already waiting
        # Where the open drifts come from: the engine once `use_engine` is called; before that the
        # drift events (`_open`), or nothing at all while an engine is awaited (the condition waits).
        self._engine_open: OpenKeys | None = None
        self._awaiting_engine = wait_for_engine
        self._open: set[str] = set()
        # The condition wanted for the open set last seen, and that set's names (a change of a few
        # among 100,000 open drifts names only the new ones).
        self._want: Condition | None = None
        self._names: dict[str, str] = {}
        # Node Events waiting for the worker, one entry per (reason, drift): a repeat only bumps
        # its count, so a drift flapping a thousand times is one entry, not a thousand.
        self._pending: OrderedDict[tuple[str, str], _NodeEventWork] = OrderedDict()
        self._queue_size = queue_size
        self._changed = threading.Condition()  # guards _open, _engine_open, _pending, _seq, _done, _stopping
        self._seq = 0  # emits so far
        self._done = 0  # emits the worker has handled (sent, or failed)
        self._stopping = False
        self._applied: Condition | None = None  # what the Node says now, as far as we know
        self._applied_status_since: str | None = None
        self._recorded: OrderedDict[tuple[str, str], _Recorded] = OrderedDict()
        self._retry_max = retry_max
        self._timeout = request_timeout
        self._thread = threading.Thread(target=self._run, name="nodeguard-kube", daemon=True)
        self._thread.start()

    # -- EventSink ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Cheap and non-blocking: update the open set and the pending Events, wake the worker."""
        key = event_finding_key(event.attributes)
        kind_reason = _NODE_EVENTS.get(event.name)
        with self._changed:
            if self._engine_open is None and not self._awaiting_engine:
                if event.name in _OPENS:
                    self._open.add(key)
                elif event.name in _CLOSES:
                    self._open.discard(key)
            if kind_reason is not None:
                kind, reason = kind_reason
                rejected = event.name is EventName.POLICY_REJECTED
                subject = "policy" if rejected else key
                message = _short(event.body if rejected else f"{drift_name(key)}: {event.body}")
                waiting = self._pending.get((reason, subject))
                if waiting is not None:
                    waiting.count += 1
                    waiting.message = message
                elif len(self._pending) < self._queue_size:
                    self._pending[(reason, subject)] = _NodeEventWork(kind, reason, subject, message)
                else:
                    self.dropped += 1
            self._seq += 1
            self._changed.notify_all()

    def use_engine(self, open_keys: OpenKeys) -> None:
        """From now on the open drifts are `open_keys()` (the engine's `failing_keys`), asked at each
        sync; the condition held until now is synced at once. The engine has loaded findings.json
        when it exists, so the first condition is the state's, never an empty set's."""
        with self._changed:
            self._engine_open = open_keys
            self._awaiting_engine = False
            self._open.clear()  # the engine's state is the one source from here
            self._seq += 1  # a no-op emit: the worker wakes and syncs the condition
            self._changed.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far reached the API (or failed); True when it did in time."""
        with self._changed:
            target = self._seq = self._seq + 1  # a no-op emit: the worker wakes and syncs the condition
            self._changed.notify_all()
            return self._changed.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush (the last condition and the pending Events, bounded by `timeout`) and stop the worker."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)

    @property
    def open_drifts(self) -> list[str]:
        """The open drifts, as the Node shows them (`drift_name`), sorted (none while the engine is awaited)."""
        keys = self._open_keys()
        return sorted(drift_name(k) for k in keys) if keys is not None else []

    def _open_keys(self) -> frozenset[str] | None:
        """The open drifts now; None while the engine is awaited (the condition waits for it)."""
        with self._changed:
            engine_open, awaiting = self._engine_open, self._awaiting_engine
            if engine_open is None:
                return None if awaiting else frozenset(self._open)
        return frozenset(engine_open())  # outside the lock: emit never waits for this read

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        self._read_condition()
        retries = Backoff(1.0, self._retry_max)  # the one back-off computation (reconcile.py)
        failures = 0
        while True:
            with self._changed:
                # A failed PATCH (API server down) is retried with back-off, capped at retry_max.
                self._changed.wait_for(lambda: self._seq > self._done or self._stopping,
                                       timeout=retries.delay(failures - 1) if failures else None)
                seq, stopping = self._seq, self._stopping
                batch = list(self._pending.values())
                self._pending.clear()
            for work in batch:
                self._record(work)
            synced = self._sync_condition()
            failures = 0 if synced else failures + 1
            with self._changed:
                self._done = seq
                self._changed.notify_all()
                if stopping and not self._pending:
                    return

    def _read_condition(self) -> None:
        """What the Node says at start, so a restart with nothing new patches nothing."""
        try:
            node = self.api.read_node(self.node_name, _request_timeout=self._timeout)
        except Exception as exc:  # the API may be down at start; the first sync patches then
            log.warning("cannot read node %s: %s", self.node_name, exc)
            return
        for cond in (node.status.conditions or []) if node.status else []:
            if cond.type == CONDITION_TYPE:
                self._applied = Condition(cond.status, cond.reason or "", cond.message or "")
                if cond.last_transition_time is not None:
                    self._applied_status_since = cond.last_transition_time.isoformat().replace("+00:00", "Z")

    def _sync_condition(self) -> bool:
        """PATCH the condition when it differs from what the Node has; False when that failed.
        Nothing while the engine is awaited: an empty set then would say True with drifts open."""
        try:
            open_now = self._open_keys()
        except Exception:  # the engine's read failed: retried with back-off like a failed PATCH
            log.exception("cannot read the open drifts for node %s's condition", self.node_name)
            return False
        if open_now is None:
            return True
        if self._want is None or open_now != self._names.keys():
            self._names = {k: self._names.get(k) or drift_name(k) for k in open_now}
            self._want = Condition.for_open(self._names.values())
        want = self._want
        if want == self._applied:
            return True
        now = _now()
        since = self._applied_status_since if self._applied and self._applied.status == want.status else now
        body = {"status": {"conditions": [{
            "type": CONDITION_TYPE, "status": want.status, "reason": want.reason, "message": want.message,
            "lastHeartbeatTime": now, "lastTransitionTime": since or now,
        }]}}
        try:
            self.api.patch_node_status(self.node_name, body, _content_type=STRATEGIC_MERGE,
                                       _request_timeout=self._timeout)
        except Exception as exc:
            log.warning("cannot patch node %s condition %s: %s", self.node_name, CONDITION_TYPE, exc)
            return False
        self._applied, self._applied_status_since = want, since or now
        return True

    def _record(self, work: _NodeEventWork) -> None:
        """Create the Node Event, or bump the one this drift already has."""
        from kubernetes.client import CoreV1Event
        from kubernetes.client.exceptions import ApiException

        cache_key = (work.reason, work.key)
        now = _now()
        seen = self._recorded.get(cache_key)
        if seen is not None:
            self._recorded.move_to_end(cache_key)
            patch = {"count": seen.count + work.count, "lastTimestamp": now, "message": work.message}
            try:
                self.api.patch_namespaced_event(seen.name, self.event_namespace, patch,
                                                _content_type=STRATEGIC_MERGE, _request_timeout=self._timeout)
                seen.count += work.count
                return
            except ApiException as exc:
                if exc.status != 404:  # gone (events expire after an hour): create a new one below
                    log.warning("cannot update event %s: %s", seen.name, exc.reason)
                    return
            except Exception as exc:
                log.warning("cannot update event %s: %s", seen.name, exc)
                return
        name = f"{self.node_name}.{time.time_ns():x}"
        body = CoreV1Event.from_dict({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.event_namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_name},
            "reason": work.reason, "message": work.message, "type": work.kind,
            "count": work.count, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT, "reportingInstance": self.node_name,
        })
        try:
            self.api.create_namespaced_event(self.event_namespace, body, _request_timeout=self._timeout)
        except Exception as exc:
            log.warning("cannot create event on node %s: %s", self.node_name, exc)
            return
        self._recorded[cache_key] = _Recorded(name, work.count)
        while len(self._recorded) > EVENT_CACHE_SIZE:
            self._recorded.popitem(last=False)


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def kube_sink_from_env(env: Mapping[str, str] | None = None, *,
                       state_dir: str | os.PathLike[str] | None = None,
                       service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                       wait_for_engine: bool = True) -> KubeSink | None:
    """A KubeSink for the node this pod runs on, or None outside a cluster (nothing to report to).

    In-cluster config: the API server from KUBERNETES_SERVICE_HOST/PORT, the pod's service
    account token and CA (re-read as the kubelet rotates the token); the node is the downward
    API's NODE_NAME. The agent hands it the engine (`use_engine`) before the condition is set.
    `state_dir`: where an older nodeguard kept the open drifts a second time; that file is removed.
    """
    env = os.environ if env is None else env
    if state_dir is not None:
        _remove_old_open_drifts(Path(state_dir))
    if not env.get("KUBERNETES_SERVICE_HOST"):
        return None
    node = env.get("NODE_NAME")
    if not node:
        log.warning("in a cluster but NODE_NAME is not set (downward API): no Node condition or Events")
        return None
    from kubernetes import client
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=str(service_account_dir / "token"),  # type: ignore[no-untyped-call]
                          cert_filename=str(service_account_dir / "ca.crt"),
                          environ=dict(env)).load_and_set(configuration)
    return KubeSink(client.CoreV1Api(client.ApiClient(configuration)), node,
                    event_namespace=EVENT_NAMESPACE.resolve(None, env),
                    wait_for_engine=wait_for_engine)


def _remove_old_open_drifts(state_dir: Path) -> None:
    """findings.json is the truth about open drifts; the copy an older version kept is never read.
    (unlink removes a planted link itself, never what it points to.)"""
    try:
        (state_dir / OLD_OPEN_DRIFTS_FILE).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", state_dir / OLD_OPEN_DRIFTS_FILE, exc)
