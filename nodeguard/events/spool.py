"""The durable spool: every event is on disk before any exporter sees it.

One SQLite database under the state folder (`<state-dir>/events/spool.sqlite`), WAL mode:

- `append` links the event into the node's hash chain (see chain.py) and commits it before it
  returns: once `emit()` is back, a crash, SIGKILL or reboot cannot lose the event.
- Each exporter is a *consumer* with its own cursor (the last sequence number it confirmed).
  It reads in order after its cursor and moves the cursor only when its receiver confirmed the
  batch; an event is deleted once every consumer has confirmed it. After a restart every
  consumer resumes after its cursor: at-least-once, never at-most-once; the event's id is
  stable, so a receiver de-duplicates.
- `synchronous=FULL`: in WAL mode NORMAL already survives a process crash, but it may lose the
  last commits on power loss or a kernel panic, exactly when a node is in trouble. FULL costs
  one fsync of the WAL per event; drift events come at human rates, and the benchmark
  (tests/bench/bench_events.py) measures what that leaves.
- Bounded: the payload bytes kept are capped (`max_bytes`). When an append would go over, the
  *oldest* events are dropped (down to 90 % of the cap, so a long outage drops in chunks, not
  one per event) and a `nodeguard.spool.dropped` event naming the count and the sequence range
  is spooled in their place. Oldest first because the agent is level-triggered: a drift that
  still exists is reported again by the next resync, while the newest events describe the
  host as it is now. The dropped range is declared in the chain, so `nodeguard events verify`
  tells an honest drop from a removal.
- One process per spool: an exclusive lock on `spool.lock` beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nodeguard.events.chain import ATTR_HASH, ATTR_PREV, ATTR_SEQ, GENESIS, event_hash, normalize
from nodeguard.events.model import Event, EventName
from nodeguard.events.verify import ATTR_DROPPED_FIRST, ATTR_DROPPED_LAST
from nodeguard.settings import DEFAULT_SPOOL_MAX_BYTES

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.sqlite"
DEFAULT_MAX_BYTES = DEFAULT_SPOOL_MAX_BYTES  # --spool-max-bytes' default (nodeguard.settings)
# After a drop the spool is brought down to this share of the cap.
LOW_WATER = 0.9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
                                   record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (consumer TEXT PRIMARY KEY, acked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repeats (key TEXT PRIMARY KEY, count INTEGER NOT NULL, first_seen INTEGER NOT NULL,
                                    record TEXT NOT NULL);
"""


class SpoolBusy(RuntimeError):
    """Another process holds this spool."""


@dataclass(frozen=True)
class Spooled:
    seq: int
    event: Event


class Spool:
    def __init__(
        self,
        folder: Path,
        consumers: Sequence[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_drop: Callable[[int], None] | None = None,
        synchronous: str = "FULL",
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.consumers = tuple(consumers)
        self._on_drop = on_drop
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(folder / "spool.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolBusy(f"{folder / SPOOL_FILE} is in use by another nodeguard process") from None
        try:
            self._start(synchronous)
        except BaseException:
            os.close(self._lock_fd)  # released with the process anyway, but a caller may retry
            raise

    def _start(self, synchronous: str) -> None:
        folder = self.folder
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        try:
            self._db = self._open(folder / SPOOL_FILE)
        except sqlite3.DatabaseError as exc:
            # A spool that is not a database any more must not keep the agent from starting: set it
            # aside for forensics and start a new one (its chain restarts at 1, which verify reports).
            aside = f"{SPOOL_FILE}.corrupt-{int(time.time())}"
            log.error("spool %s is unreadable (%s); moved aside as %s, starting a new one",
                      folder / SPOOL_FILE, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(folder / f"{SPOOL_FILE}{suffix}", folder / f"{aside}{suffix}")
            self._db = self._open(folder / SPOOL_FILE)
        self._closed = False
        self._bytes = 0
        self._wal_fd: int | None = None
        self._synced_seq = 0
        self._sync_lock = threading.Lock()
        self._syncing = 0
        self._synced_cv = threading.Condition(self._lock)
        with self._transaction():
            row = self._db.execute("SELECT value FROM meta WHERE key='chain'").fetchone()
            self._last_seq, self._last_hash = (0, GENESIS) if row is None else _split_chain(row[0])
            known = {c for (c,) in self._db.execute("SELECT consumer FROM cursors")}
            for gone in known - set(self.consumers):
                # An exporter that is no longer configured must not pin the spool forever.
                log.warning("spool: consumer %s is no longer configured; forgetting its cursor", gone)
                self._db.execute("DELETE FROM cursors WHERE consumer=?", (gone,))
            for new in set(self.consumers) - known:
                # A new exporter gets whatever is still waiting in the spool.
                self._db.execute("INSERT INTO cursors(consumer, acked) VALUES (?, 0)", (new,))
            self._prune()
        self._bytes = self._db.execute("SELECT COALESCE(SUM(length(record)), 0) FROM events").fetchone()[0]

    def _open(self, path: Path) -> sqlite3.Connection:
        old_umask = os.umask(0o077)  # events may name users and files: owner-only
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM events").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    # -- writing -----------------------------------------------------------------------------

    def append(self, event: Event) -> Event:
        """Chain the event, commit it durably, wake the exporters; returns the chained event."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[Event], *, release: Sequence[str] = ()) -> list[Event]:
        """Several events in one transaction: one fsync for all (a burst, or filling a spool in a benchmark).

        `release`: keys of held repeats (see `hold_repeats`) that these events summarize, forgotten in the
        same transaction, so a summary is spooled exactly once even if the process dies right then.
        """
        with self._lock:
            self._check_open()
            before = (self._last_seq, self._last_hash, self._bytes)
            out: list[Event] = []
            try:
                with self._transaction():
                    for event in events:
                        chained, record = self._chain(event)
                        if self._bytes + len(record) > self.max_bytes:
                            self._drop_oldest(len(record))
                            chained, record = self._chain(event)
                        self._insert(chained, record)
                        out.append(chained)
                    for key in release:
                        self._db.execute("DELETE FROM repeats WHERE key=?", (key,))
                    if not self.consumers:
                        self._prune()
            except BaseException:
                # Rolled back (disk full, I/O error): the chain head must match what is on disk.
                self._last_seq, self._last_hash, self._bytes = before
                raise
            if self.synchronous == "FULL":
                # Deferred: the exporters are woken by sync(), after the pass, so a woken exporter
                # never competes with the reconciler in the middle of a revert (and ships durable events).
                self._changed.notify_all()
            return out

    def defer_sync(self) -> None:
        """From now on an append is committed without an fsync (it reaches the kernel: a SIGKILL
        cannot lose it) and `sync()` makes everything appended so far durable with one fsync.
        The agent calls sync() once per pass: a group commit (see nodeguard/engine.py)."""
        with self._lock:
            self._check_open()
            self.synchronous = "NORMAL"
            self._db.execute("PRAGMA synchronous=NORMAL")

    def sync(self) -> None:
        """One fsync of the write-ahead log: every append before this call survives a power loss.

        Outside the spool's lock, so appends (a lane's write-ahead record) never wait for the disk;
        syncs are serialized among themselves (a second caller returns only once its events are
        synced). In WAL mode a commit is durable once its WAL frames are; sqlite itself syncs the
        WAL before a checkpoint copies it into the database, so the frames synced here are never lost.
        """
        with self._sync_lock:
            with self._lock:
                self._check_open()
                if self.synchronous == "FULL" or self._last_seq == self._synced_seq:
                    return  # every commit was already synced, or nothing appended since
                target = self._last_seq
                if self._wal_fd is None:
                    try:
                        self._wal_fd = os.open(self.folder / f"{SPOOL_FILE}-wal", os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        # Nothing appended since the last checkpoint: the database file holds it all.
                        self._synced_seq = target
                        self._changed.notify_all()
                        return
                    dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        os.fsync(dir_fd)  # the WAL's own name, once
                    finally:
                        os.close(dir_fd)
                fd = self._wal_fd
                self._syncing += 1
            try:
                os.fsync(fd)
            finally:
                with self._lock:
                    self._syncing -= 1
                    self._synced_seq = max(self._synced_seq, target)
                    self._synced_cv.notify_all()
                    self._changed.notify_all()

    def hold_repeats(self, held: Sequence[tuple[str, int, int, Event]]) -> None:
        """Remember how often drifts repeated since each was last sent (the aggregator's windows):
        (key, count, first seen, last repeat), in one transaction.

        Written without an fsync: it survives SIGKILL (the WAL is in the page cache) and is synced
        by the next event's commit; a power cut may lose a count, never an event.
        """
        rows = [(key, count, first_seen, json.dumps(last.to_record(), separators=(",", ":"), ensure_ascii=False,
                                                    default=str))
                for key, count, first_seen, last in held]
        with self._lock:
            self._check_open()
            with self._unsynced(), self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO repeats(key, count, first_seen, record) VALUES (?, ?, ?, ?)", rows)

    def held_repeats(self) -> list[tuple[str, int, int, Event]]:
        """Repeats counted by a previous run that never got to send their summary."""
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT key, count, first_seen, record FROM repeats ORDER BY rowid").fetchall()
        return [(key, count, first, Event.from_record(json.loads(record))) for key, count, first, record in rows]

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        """Commits without an fsync inside (under group commit, NORMAL, that is already so)."""
        if self.synchronous == "NORMAL":
            yield
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA synchronous={self.synchronous}")

    def _chain(self, event: Event) -> tuple[Event, str]:
        seq = self._last_seq + 1
        attrs = normalize(event.attributes)
        attrs.pop(ATTR_HASH, None)
        attrs[ATTR_SEQ] = seq
        attrs[ATTR_PREV] = self._last_hash
        attrs[ATTR_HASH] = event_hash(event_id=event.id, time_unix_nano=event.time_unix_nano, name=event.name.value,
                                      severity=event.severity, body=event.body, attributes=attrs)
        chained = replace(event, attributes=attrs)
        return chained, json.dumps(chained.to_record(), separators=(",", ":"), ensure_ascii=False)

    def _insert(self, chained: Event, record: str) -> None:
        seq = int(chained.attributes[ATTR_SEQ])
        self._db.execute("INSERT INTO events(seq, id, name, record) VALUES (?, ?, ?, ?)",
                         (seq, chained.id, chained.name.value, record))
        self._last_seq, self._last_hash = seq, str(chained.attributes[ATTR_HASH])
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('chain', ?)",
                         (f"{self._last_seq}:{self._last_hash}",))
        self._bytes += len(record)

    def _drop_oldest(self, incoming: int) -> None:
        target = int(self.max_bytes * LOW_WATER) - incoming - 1024  # room for the dropped event itself
        freed, first, last, count, declared_first = 0, None, None, 0, None
        rows = self._db.execute("SELECT seq, length(record), name, record FROM events ORDER BY seq")
        for seq, size, name, record in rows:
            if self._bytes - freed <= target:
                break
            first = seq if first is None else first
            freed, last = freed + size, seq
            if name == EventName.SPOOL_DROPPED.value:
                # An earlier notice goes too: fold its range and count into the new one, so the
                # notices left always declare every event lost.
                attrs = json.loads(record)["attributes"]
                count += int(attrs["nodeguard.spool.dropped_count"])
                earlier = int(attrs[ATTR_DROPPED_FIRST])
                declared_first = earlier if declared_first is None else min(declared_first, earlier)
            else:
                count += 1
        rows.close()
        if first is None or last is None:
            return
        fresh = self._db.execute("SELECT COUNT(*) FROM events WHERE seq <= ? AND name != ?",
                                 (last, EventName.SPOOL_DROPPED.value)).fetchone()[0]
        self._db.execute("DELETE FROM events WHERE seq <= ?", (last,))
        self._bytes -= freed
        first = min(first, declared_first) if declared_first is not None else first
        log.error("spool full (%d bytes): dropped the %d oldest events, seq %d..%d", self.max_bytes, fresh, first,
                  last)
        notice = Event(
            EventName.SPOOL_DROPPED, "ERROR",
            f"event spool full ({self.max_bytes} bytes): {count} undelivered events dropped, oldest first "
            f"(seq {first}..{last})",
            {"nodeguard.spool.dropped_count": count, ATTR_DROPPED_FIRST: first, ATTR_DROPPED_LAST: last,
             "nodeguard.spool.max_bytes": self.max_bytes},
        )
        chained, record = self._chain(notice)
        self._insert(chained, record)
        if self._on_drop is not None:
            self._on_drop(fresh)

    # -- reading -----------------------------------------------------------------------------

    def read(self, consumer: str, limit: int, max_bytes: int = 1 << 20) -> list[Spooled]:
        """The next events after the consumer's cursor, oldest first: at most `limit` events and, past the
        first one, `max_bytes` of payload (collectors cap a request: gRPC at 4 MiB by default)."""
        with self._lock:
            self._check_open()
            acked = self._acked(consumer)
            rows: list[tuple[int, str]] = []
            size = 0
            for seq, record in self._db.execute("SELECT seq, record FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                                (acked, limit)):
                size += len(record)
                if rows and size > max_bytes:
                    break
                rows.append((seq, record))
        return [Spooled(seq, Event.from_record(json.loads(record))) for seq, record in rows]

    def ack(self, consumer: str, seq: int) -> None:
        """The consumer's receiver confirmed everything up to `seq`; free what nobody needs any more."""
        with self._lock:
            self._check_open()
            # No fsync for a cursor move: losing it to a power cut only means a redelivery (the receiver
            # de-duplicates), and the next event's FULL commit syncs the WAL, this frame included.
            with self._unsynced(), self._transaction():
                self._db.execute("UPDATE cursors SET acked=MAX(acked, ?) WHERE consumer=?", (seq, consumer))
                self._prune()

    def wait(self, consumer: str, timeout: float) -> bool:
        """Block until something waits for `consumer` (True) or the timeout passes."""
        with self._changed:
            if self._closed:
                return False
            if self._last_seq > self._acked(consumer):
                return True
            self._changed.wait(timeout)
            return not self._closed and self._last_seq > self._acked(consumer)

    def depth(self, consumer: str | None = None) -> int:
        """Events still waiting for one consumer (or held for any, when None)."""
        with self._lock:
            if self._closed:
                return 0
            floor = self._acked(consumer) if consumer else self._floor()
            row = self._db.execute("SELECT COUNT(*) FROM events WHERE seq > ?", (floor,)).fetchone()
            return int(row[0])

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._synced_cv.wait_for(lambda: self._syncing == 0, timeout=10)
            if self.synchronous != "FULL":
                # The last appends: one FULL commit syncs the WAL before the checkpoint below.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA synchronous=FULL")
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('closed', ?)",
                                     (str(time.time()),))
                    self._db.execute("COMMIT")
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            os.close(self._lock_fd)

    # -- internals ---------------------------------------------------------------------------

    def _acked(self, consumer: str) -> int:
        row = self._db.execute("SELECT acked FROM cursors WHERE consumer=?", (consumer,)).fetchone()
        if row is None:
            raise KeyError(f"spool consumer {consumer!r} is not configured")
        return int(row[0])

    def _floor(self) -> int:
        if not self.consumers:
            return self._last_seq
        return int(self._db.execute("SELECT MIN(acked) FROM cursors").fetchone()[0])

    def _prune(self) -> None:
        floor = self._floor()
        freed = self._db.execute("SELECT COALESCE(SUM(length(record)), 0) FROM events WHERE seq <= ?",
                                 (floor,)).fetchone()[0]
        if freed:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (floor,))
            self._bytes -= int(freed)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event spool is closed")


def _split_chain(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    return int(seq), digest
