"""The agent's inotify reader (nodeguard/watch.py) on real temporary folders."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from nodeguard.watch import FolderWatcher


class Fired:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, target: str, reason: str) -> None:
        with self.lock:
            self.items.append((target, reason))

    def targets(self) -> set[str]:
        with self.lock:
            return {t for t, _ in self.items}

    def wait(self, target: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for t, reason in self.items:
                    if t == target:
                        return reason
            time.sleep(0.005)
        raise AssertionError(f"{target} never fired; got {self.items}")


def test_a_change_wakes_every_target_of_its_folder_and_says_what(tmp_path: Path) -> None:
    fired = Fired()
    w = FolderWatcher({tmp_path: {"socket", "runtime"}})
    w.start(fired)
    try:
        (tmp_path / "docker.sock").write_text("x")
        assert "docker.sock" in fired.wait("socket")
        fired.wait("runtime")
    finally:
        w.stop()


def test_a_chmod_does_not_wake_an_attrib_blind_target(tmp_path: Path) -> None:
    f = tmp_path / "docker.sock"
    f.write_text("x")
    fired = Fired()
    w = FolderWatcher({tmp_path: {"socket", "runtime"}}, frozenset({"runtime"}))
    w.start(fired)
    try:
        f.chmod(0o666)
        assert fired.wait("socket").startswith("attrib ")
        time.sleep(0.2)
        assert "runtime" not in fired.targets()
        os.unlink(f)  # a deletion (a daemon restart re-creates its socket) wakes it
        fired.wait("runtime")
    finally:
        w.stop()


def test_reading_a_file_wakes_nobody(tmp_path: Path) -> None:
    f = tmp_path / "group"
    f.write_text("docker:x:990:\n")
    fired = Fired()
    w = FolderWatcher({tmp_path: {"docker-group"}})
    w.start(fired)
    try:
        for _ in range(20):
            f.read_text()  # our own reads must never trigger the next pass
        time.sleep(0.3)
        assert fired.items == []
    finally:
        w.stop()


def test_a_missing_folder_is_watched_through_its_nearest_parent(tmp_path: Path) -> None:
    fired = Fired()
    w = FolderWatcher({tmp_path / "etc" / "docker": {"daemon-config"}})
    w.start(fired)
    try:
        (tmp_path / "etc").mkdir()
        fired.wait("daemon-config")
    finally:
        w.stop()


def test_stop_ends_the_reader_and_closes_its_descriptors(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    w = FolderWatcher({tmp_path: {"x"}})
    w.start(Fired())
    w.stop()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not [t for t in threading.enumerate() if t.name == "nodeguard-inotify"]
