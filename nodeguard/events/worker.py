"""One thread per exporter: read after its cursor, export, acknowledge; on failure back off and retry.

Back-off is exponential with jitter ("equal jitter": half the delay fixed, half random), so
a fleet of agents that lost the same collector does not come back at the same instant. A
destination that says when to come back (HTTP Retry-After, gRPC RetryInfo) is believed up to
`retry_after_max` seconds: a collector shedding load gets the pause it asked for, a lying one
cannot park the exporter for a day.

An OTLP partial success that rejects records is not a confirmation: the response only counts
the refused records without naming them, and the spool lets an event go only when it is known
to have arrived. The batch is halved and sent again with back-off like any failure (the records
accepted the first time arrive twice; receivers de-duplicate by `log.record.uid`). A record that
is refused for ever holds the ones behind it until the spool's cap drops it, and that drop is
declared in the chain (`nodeguard.spool.dropped`): nothing leaves unaccounted for.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nodeguard.events.model import Event
from nodeguard.events.spool import Spool
from nodeguard.reconcile import Backoff as ExponentialBackoff

log = logging.getLogger(__name__)

BATCH_SIZE = 512
RETRY_AFTER_MAX = 60.0


@dataclass(frozen=True)
class Delivery:
    """An exporter's verdict on one batch, when it has more to say than yes or no."""

    ok: bool
    reason: str = ""
    # The destination asked to be left alone this long (seconds).
    retry_after: float | None = None
    # Records the destination refused (an OTLP partial_success), 0 when none.
    rejected: int = 0

    def __bool__(self) -> bool:
        return self.ok


class Exporter(Protocol):
    name: str

    def export(self, events: Sequence[Event]) -> bool | Delivery:
        """True (or an ok Delivery) only when the destination has the events (the spool then forgets them)."""
        ...

    def shutdown(self) -> None:
        """Abort what is in flight and release the connection or file."""
        ...


class Backoff:
    """An exporter's retry delays: the ceilings of the one back-off computation
    (nodeguard.reconcile.Backoff), each with equal jitter, counted across consecutive failures."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.ceilings = ExponentialBackoff(initial, maximum)
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)

    def next_delay(self) -> float:
        ceiling = self.ceilings.delay(self.failures)
        self.failures += 1
        return float(ceiling / 2 + self._rng.uniform(0, ceiling / 2))

    def reset(self) -> None:
        self.failures = 0


class ExportWorker:
    def __init__(
        self,
        spool: Spool,
        exporter: Exporter,
        backoff: Backoff,
        *,
        on_failure: Callable[[str], None] | None = None,
        on_delivered: Callable[[str, Sequence[Event]], None] | None = None,
        batch_size: int = BATCH_SIZE,
        retry_after_max: float = RETRY_AFTER_MAX,
    ) -> None:
        self.spool = spool
        self.exporter = exporter
        self.backoff = backoff
        self.batch_size = batch_size
        self.retry_after_max = retry_after_max
        # Halved after each failure, doubled back after each success: a collector that refuses
        # large requests still gets the backlog, in smaller pieces.
        self._batch = batch_size
        self.delivered = 0
        self.failures = 0
        self.rejected = 0
        self.last_failure = ""
        self._on_failure = on_failure
        self._on_delivered = on_delivered
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._wake = threading.Event()  # cuts a back-off short when stop() comes
        self._thread = threading.Thread(target=self._run, name=f"nodeguard-export-{exporter.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.exporter.name

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.spool.read(self.name, self._batch)
            except RuntimeError:  # the spool was closed under us
                return
            if not batch:
                if self._draining.is_set():
                    return
                self.spool.wait(self.name, 0.5)
                continue
            events = [item.event for item in batch]
            try:
                result = self.exporter.export(events)
            except Exception:
                log.exception("exporter %s raised", self.name)
                result = False
            delivery = result if isinstance(result, Delivery) else Delivery(bool(result))
            if delivery.ok:
                try:
                    self.spool.ack(self.name, batch[-1].seq)
                except RuntimeError:
                    return
                self.delivered += len(events)
                self.backoff.reset()
                self._batch = min(self.batch_size, self._batch * 2)
                if self._on_delivered is not None:
                    self._on_delivered(self.name, events)
                continue
            self.failures += 1
            self.rejected += delivery.rejected
            self.last_failure = delivery.reason
            self._batch = max(1, self._batch // 2)
            if self._on_failure is not None:
                self._on_failure(self.name)
            if self._draining.is_set():
                return  # closing, and the destination just failed: the rest waits in the spool
            delay = self.backoff.next_delay()
            if delivery.retry_after is not None:
                delay = max(delay, min(delivery.retry_after, self.retry_after_max))
            log.warning("exporter %s: delivery failed (%s; %d waiting), retrying in %.1fs", self.name,
                        delivery.reason or "refused", self.spool.depth(self.name), delay)
            self._wake.wait(delay)
            if self._draining.is_set():
                return

    def stop(self, deadline: float) -> None:
        """Deliver what can be delivered until `deadline` (time.monotonic()), then abort; the rest stays spooled."""
        self._draining.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        if self._thread.is_alive():
            log.warning("exporter %s: %d events stay in the spool for the next start", self.name,
                        self.spool.depth(self.name))
        try:
            self.exporter.shutdown()  # also cuts short an export blocked on a dead collector
        except Exception:
            log.exception("exporter %s failed to shut down", self.name)
        self._thread.join(5.0)
