"""The durable spool: chain at spool time, per-exporter cursors, replay after reopen, bounded with a declared drop."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nodeguard.events.chain import ATTR_HASH, ATTR_PREV, ATTR_SEQ, GENESIS, record_hash
from nodeguard.events.model import Event, EventName
from nodeguard.events.spool import SPOOL_FILE, Spool, SpoolBusy
from nodeguard.events.verify import verify_lines


def drift(i: int, payload: str = "") -> Event:
    return Event(EventName.DRIFT_DETECTED, "ERROR", f"drift {i}", {
        "nodeguard.control": "socket", "nodeguard.rule": "socket-mode", "nodeguard.subject": f"s{i}",
        "nodeguard.observed": ["0666", i, {"nested": None}], "payload": payload,
    })


def test_append_chains_and_commits_before_returning(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["a"])
    first = spool.append(drift(1))
    second = spool.append(drift(2))
    assert first.attributes[ATTR_SEQ] == 1 and first.attributes[ATTR_PREV] == GENESIS
    assert second.attributes[ATTR_SEQ] == 2 and second.attributes[ATTR_PREV] == first.attributes[ATTR_HASH]
    assert record_hash(second.to_record()) == second.attributes[ATTR_HASH]
    # Another connection (another process, after a crash) sees both rows already: committed, not buffered.
    other = sqlite3.connect(tmp_path / SPOOL_FILE)
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    spool.close()


def test_each_consumer_has_its_own_cursor_and_events_go_when_all_confirmed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["otlp", "file"])
    for i in range(5):
        spool.append(drift(i))
    assert [s.seq for s in spool.read("otlp", 3)] == [1, 2, 3]
    spool.ack("file", 5)
    assert spool.depth("file") == 0 and spool.depth("otlp") == 5
    assert spool.depth() == 5  # held for otlp
    spool.ack("otlp", 3)
    assert spool.depth() == 2
    assert [s.seq for s in spool.read("otlp", 10)] == [4, 5]
    spool.close()


def test_reopen_replays_unconfirmed_and_continues_the_chain(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["otlp"])
    events = [spool.append(drift(i)) for i in range(4)]
    spool.ack("otlp", 2)
    spool.close()

    spool = Spool(tmp_path, ["otlp"])
    replay = spool.read("otlp", 10)
    assert [s.event.id for s in replay] == [e.id for e in events[2:]]
    assert replay[0].event.attributes == events[2].attributes  # the very same event: same id, same hash
    nxt = spool.append(drift(9))
    assert nxt.attributes[ATTR_SEQ] == 5 and nxt.attributes[ATTR_PREV] == events[-1].attributes[ATTR_HASH]
    spool.close()


def test_a_consumer_no_longer_configured_does_not_pin_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["otlp", "file"])
    for i in range(3):
        spool.append(drift(i))
    spool.ack("file", 3)
    spool.close()
    spool = Spool(tmp_path, ["file"])
    assert spool.depth() == 0
    spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["a"])
    with pytest.raises(SpoolBusy):
        Spool(tmp_path, ["a"])
    spool.close()
    Spool(tmp_path, ["a"]).close()


def test_full_spool_drops_oldest_and_says_so_in_the_chain(tmp_path: Path) -> None:
    dropped: list[int] = []
    spool = Spool(tmp_path, ["otlp", "file"], max_bytes=64 * 1024, on_drop=dropped.append)
    delivered: list[Event] = []
    for i in range(150):
        ev = spool.append(drift(i, payload="x" * 900))
        if i == 9:  # otlp delivers the first ten, then its collector goes away
            delivered = [s.event for s in spool.read("otlp", 100)]
            spool.ack("otlp", 10)
        if i % 10 == 9:
            spool.ack("file", int(ev.attributes[ATTR_SEQ]))  # the file keeps up
        assert spool.bytes_used <= 64 * 1024 + 2048
    assert dropped, "the spool never dropped although far over its cap"
    waiting = spool.read("otlp", 1000)
    notices = [s.event for s in waiting if s.event.name is EventName.SPOOL_DROPPED]
    assert notices, "a drop must leave a nodeguard.spool.dropped event"
    for notice in notices:
        n = notice.attributes
        assert n["nodeguard.spool.dropped_last_seq"] - n["nodeguard.spool.dropped_first_seq"] + 1 >= \
            n["nodeguard.spool.dropped_count"] > 0
    # A notice that is itself dropped is folded into the next one: the survivors account for every loss.
    assert sum(dropped) == sum(int(e.attributes["nodeguard.spool.dropped_count"]) for e in notices)
    # The newest events survived, the oldest went.
    seqs = [s.seq for s in waiting]
    assert seqs[-1] == spool.last_seq and seqs[0] > 1
    # What the lagging exporter receives has gaps, and verify calls them declared drops, not tampering.
    report = verify_lines(json.dumps(e.to_record()) for e in delivered + [s.event for s in waiting])
    assert report.ok, report.problems
    assert any(r.kind == "dropped" for r in report.notes)
    spool.close()


def test_rollback_keeps_the_chain_head_consistent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["a"])
    spool.append(drift(1))
    bad = drift(2)
    bad.attributes["not-json"] = float("nan")  # refused by the canonical form
    with pytest.raises(ValueError):
        spool.append(bad)
    ok = spool.append(drift(3))
    assert ok.attributes[ATTR_SEQ] == 2
    spool.close()


def test_an_unreadable_spool_is_set_aside_not_fatal(tmp_path: Path) -> None:
    (tmp_path / SPOOL_FILE).write_bytes(b"this is not a database" * 100)
    spool = Spool(tmp_path, ["a"])
    ev = spool.append(drift(1))
    assert ev.attributes[ATTR_SEQ] == 1  # a new chain; verify reports the restart
    spool.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_a_batch_is_capped_in_bytes_but_never_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path, ["otlp"])
    spool.append_many([drift(i, payload="y" * 300_000) for i in range(6)])
    assert len(spool.read("otlp", 512)) == 3  # ~1 MiB: under a collector's 4 MiB gRPC request limit
    assert len(spool.read("otlp", 512, max_bytes=10)) == 1  # one event bigger than the cap still goes
    spool.close()
