"""Group commit (Spool.defer_sync + sync): an append reaches the kernel at once and survives a
SIGKILL; one fsync per pass makes a whole pass durable; exporters are woken by the commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nodeguard.events.model import Event, EventName
from nodeguard.events.spool import Spool

REPO = Path(__file__).resolve().parents[2]

WRITER = """
import os, sys, time
from pathlib import Path
from nodeguard.events.model import Event, EventName
from nodeguard.events.spool import Spool
spool = Spool(Path(sys.argv[1]), ["otlp"])
spool.defer_sync()
for i in range(50):
    spool.append(Event(EventName.DRIFT_DETECTED, "WARN", f"drift {i}", {"n": i}))
print("appended", flush=True)  # no sync(), no close(): SIGKILL comes now
time.sleep(60)
"""


def test_an_append_survives_sigkill_before_any_sync(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "spool")], cwd=REPO,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"appended"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    spool = Spool(tmp_path / "spool", ["otlp"])
    try:
        bodies = [s.event.body for s in spool.read("otlp", 100)]
        assert bodies == [f"drift {i}" for i in range(50)]
    finally:
        spool.close()


def test_exporters_are_woken_by_the_commit_not_by_each_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", ["otlp"])
    try:
        spool.defer_sync()
        woke: list[float] = []

        def exporter() -> None:
            if spool.wait("otlp", 5.0):
                woke.append(time.monotonic())

        t = threading.Thread(target=exporter)
        t.start()
        time.sleep(0.1)  # the exporter is waiting
        spool.append(Event(EventName.DRIFT_DETECTED, "WARN", "drift", {}))
        time.sleep(0.3)
        assert woke == [], "woken mid-pass, before the commit"
        synced_at = time.monotonic()
        spool.sync()
        t.join(5)
        assert woke and woke[0] >= synced_at
    finally:
        spool.close()


def test_sync_is_cheap_when_nothing_was_appended(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", ["otlp"])
    try:
        spool.defer_sync()
        spool.append(Event(EventName.DRIFT_DETECTED, "WARN", "drift", {}))
        spool.sync()
        assert spool._synced_seq == spool.last_seq
        spool.sync()  # nothing new: returns without an fsync
        assert spool._synced_seq == spool.last_seq
    finally:
        spool.close()
