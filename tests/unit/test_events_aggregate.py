"""Rate: a flapping drift is sent once, then summarized with a count and first/last seen."""

from __future__ import annotations

from pathlib import Path

from nodeguard.events.aggregate import ATTR_COUNT, ATTR_FIRST_SEEN, ATTR_LAST_SEEN, Aggregator
from nodeguard.events.model import Event, EventName, lifecycle_event
from nodeguard.events.spool import Spool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drift(name: EventName = EventName.DRIFT_DETECTED, observed: str = "0666", subject: str = "sock") -> Event:
    return Event(name, "ERROR", f"socket mode is {observed}", {
        "nodeguard.control": "socket", "nodeguard.rule": "socket-mode", "nodeguard.subject": subject,
        "nodeguard.observed": observed})


def test_repeats_within_the_window_become_one_summary() -> None:
    out: list[Event] = []
    clock = Clock()
    agg = Aggregator(60, out.append, clock)
    first = drift()
    agg.offer(first)
    repeats = []
    for _ in range(500):  # a config-management tool fighting the agent
        clock.now += 0.05
        ev = drift()
        repeats.append(ev)
        agg.offer(ev)
    assert out == [first]
    clock.now += 60
    agg.flush_due()
    assert len(out) == 2
    summary = out[1]
    assert summary.name is EventName.DRIFT_DETECTED
    assert summary.attributes[ATTR_COUNT] == 500
    assert summary.attributes[ATTR_FIRST_SEEN] == repeats[0].time_unix_nano
    assert summary.attributes[ATTR_LAST_SEEN] == repeats[-1].time_unix_nano
    assert summary.id not in {e.id for e in repeats}
    assert "repeated 500 more times" in summary.body
    # The window is over: the next repeat goes out at once and opens a new one.
    agg.offer(drift())
    assert len(out) == 3


def test_different_drifts_and_lifecycle_events_are_not_folded() -> None:
    out: list[Event] = []
    agg = Aggregator(60, out.append, Clock())
    events = [drift(), drift(observed="0777"), drift(subject="other"), drift(EventName.DRIFT_REVERTED),
              lifecycle_event(EventName.AGENT_STARTED, "up"), lifecycle_event(EventName.AGENT_STARTED, "up")]
    for ev in events:
        agg.offer(ev)
    assert out == events


def test_a_single_occurrence_leaves_no_summary_and_close_flushes_counts() -> None:
    out: list[Event] = []
    clock = Clock()
    agg = Aggregator(60, out.append, clock)
    agg.offer(drift())
    clock.now += 61
    agg.flush_due()
    assert len(out) == 1
    agg.offer(drift())
    agg.offer(drift())
    agg.flush_all()  # closing the pipeline: the pending count is not lost
    assert [e.attributes.get(ATTR_COUNT) for e in out] == [None, None, 1]


def test_window_zero_turns_aggregation_off() -> None:
    out: list[Event] = []
    agg = Aggregator(0, out.append, Clock())
    for _ in range(3):
        agg.offer(drift())
    assert len(out) == 3


def test_counts_held_in_the_spool_survive_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["otlp"])
    agg = Aggregator(60, spool.append, Clock(), store=spool)
    for _ in range(6):
        agg.offer(drift())
    agg.persist()  # the pass's commit (the agent's committer calls it after every pass)
    # The process dies here: the aggregator's memory is gone, its window never closed.
    del agg
    spool.close()

    spool = Spool(tmp_path, ["otlp"])
    assert [count for _, count, _, _ in spool.held_repeats()] == [5]
    assert Aggregator(60, spool.append, Clock(), store=spool).recover() == 1
    sent = [s.event for s in spool.read("otlp", 10)]
    assert [e.attributes.get(ATTR_COUNT) for e in sent] == [None, 5]
    assert spool.held_repeats() == []  # released in the summary's own transaction: sent once
    spool.close()


def test_repeats_are_not_written_on_the_revert_path_only_at_the_commit(tmp_path: Path) -> None:
    # A repeat is a drift a lane is about to revert: offer() must not write (it stood before the
    # revert); the commit writes every count that grew, in one transaction.
    spool = Spool(tmp_path, ["otlp"])
    agg = Aggregator(60, spool.append, Clock(), store=spool)
    for _ in range(3):
        agg.offer(drift())
    assert spool.held_repeats() == []
    agg.persist()
    assert [count for _, count, _, _ in spool.held_repeats()] == [2]
    agg.offer(drift())
    agg.persist()
    assert [count for _, count, _, _ in spool.held_repeats()] == [3]
    spool.close()


def test_a_count_persisted_after_its_summary_is_not_held_again(tmp_path: Path) -> None:
    # The window closes (its summary spooled, the count released) before the next commit: that
    # commit must not write the count back, or the next start would send the summary twice.
    spool = Spool(tmp_path, ["otlp"])
    clock = Clock()
    agg = Aggregator(60, spool.append, clock, store=spool)
    for _ in range(4):
        agg.offer(drift())
    clock.now += 61
    agg.flush_due()
    agg.persist()
    assert spool.held_repeats() == []
    assert [s.event.attributes.get(ATTR_COUNT) for s in spool.read("otlp", 10)] == [None, 3]
    spool.close()
