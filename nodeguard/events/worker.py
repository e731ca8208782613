"""One thread per exporter: read after its cursor, export, acknowledge; on failure back off and retry.

Back-off is exponential with jitter ("equal jitter": half the delay fixed, half random), so
a fleet of agents that lost the same collector does not come back at the same instant.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from nodeguard.events.model import Event
from nodeguard.events.spool import Spool

log = logging.getLogger(__name__)

BATCH_SIZE = 512


class Exporter(Protocol):
    name: str

    def export(self, events: Sequence[Event]) -> bool:
        """True only when the destination has the events (the spool then forgets them)."""
        ...

    def shutdown(self) -> None:
        """Abort what is in flight and release the connection or file."""
        ...


class Backoff:
    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * float(2 ** min(self.failures, 30)))
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
    ) -> None:
        self.spool = spool
        self.exporter = exporter
        self.backoff = backoff
        self.batch_size = batch_size
        # Halved after each failure, doubled back after each success: a collector that refuses
        # large requests still gets the backlog, in smaller pieces.
        self._batch = batch_size
        self.delivered = 0
        self.failures = 0
        self._on_failure = on_failure
        self._on_delivered = on_delivered
        self._stop = threading.Event()
        self._draining = threading.Event()
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
                ok = self.exporter.export(events)
            except Exception:
                log.exception("exporter %s raised", self.name)
                ok = False
            if ok:
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
            self._batch = max(1, self._batch // 2)
            if self._on_failure is not None:
                self._on_failure(self.name)
            delay = self.backoff.next_delay()
            log.warning("exporter %s: delivery failed (%d waiting), retrying in %.1fs", self.name,
                        self.spool.depth(self.name), delay)
            self._stop.wait(delay)

    def stop(self, deadline: float) -> None:
        """Deliver what can be delivered until `deadline` (time.monotonic()), then abort; the rest stays spooled."""
        self._draining.set()
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
