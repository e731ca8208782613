"""Which entry names of a watched folder wake which targets (nodeguard/watch.py), on real folders.

Ordering, not timing: a "sentinel" change made last wakes an unlimited target; once it has fired,
every event before it has been dispatched (one reader, in order), so what did not fire never will.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nodeguard.watch import FolderWatcher
from tests.unit.test_watch import Fired


def _names_woken(fired: Fired, target: str) -> list[str]:
    with fired.lock:
        return [reason.rsplit("/", 1)[-1] for t, reason in fired.items if t == target]


def _wait_name(fired: Fired, target: str, name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while name not in _names_woken(fired, target):
        assert time.monotonic() < deadline, f"{target} never woken by {name}; got {fired.items}"
        time.sleep(0.005)


def test_a_limited_target_is_woken_by_its_names_only(tmp_path: Path) -> None:
    fired = Fired()
    w = FolderWatcher({tmp_path: {"docker-group", "daemon-files"}},
                      only={tmp_path: {"docker-group": frozenset({"group", "gshadow"})}})
    w.start(fired)
    try:
        (tmp_path / ".group.editor").write_text("x")  # an editor's temporary file
        (tmp_path / "resolv.conf").write_text("x")
        os.rename(tmp_path / ".group.editor", tmp_path / "group")
        (tmp_path / "sentinel").write_text("x")
        _wait_name(fired, "daemon-files", "sentinel")
        assert set(_names_woken(fired, "docker-group")) == {"group"}
        assert {"resolv.conf", ".group.editor", "group"} <= set(_names_woken(fired, "daemon-files"))
    finally:
        w.stop()


def test_lock_and_own_temporary_files_wake_nobody(tmp_path: Path) -> None:
    fired = Fired()
    w = FolderWatcher({tmp_path: {"docker-group"}})
    w.start(fired)
    try:
        for name in (".pwd.lock", "group.lock", "gshadow.4242", f".group.nodeguard-{os.getpid()}.tmp"):
            (tmp_path / name).write_text("1")
            (tmp_path / name).unlink()
        (tmp_path / "sentinel").write_text("x")
        _wait_name(fired, "docker-group", "sentinel")
        assert set(_names_woken(fired, "docker-group")) == {"sentinel"}
    finally:
        w.stop()


def test_a_missing_folder_wakes_on_its_own_name_only(tmp_path: Path) -> None:
    fired = Fired()
    w = FolderWatcher({tmp_path / "ssh": {"host"}, tmp_path: {"other"}})
    w.start(fired)
    try:
        (tmp_path / "unrelated").write_text("x")
        (tmp_path / "ssh").mkdir()
        (tmp_path / "sentinel").write_text("x")
        _wait_name(fired, "other", "sentinel")
        assert _names_woken(fired, "host") == ["ssh"]
    finally:
        w.stop()


def test_one_folder_by_two_paths_keeps_the_wider_limit(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    fired = Fired()
    w = FolderWatcher({real: {"a", "b"}, link: {"a", "b"}},
                      only={real: {"a": frozenset({"x"}), "b": frozenset({"y"})}, link: {"a": frozenset({"z"})}})
    w.start(fired)
    try:
        for name in ("x", "y", "z", "sentinel"):
            (real / name).write_text("1")
        _wait_name(fired, "b", "sentinel")
        assert set(_names_woken(fired, "a")) == {"x", "z"}
        assert set(_names_woken(fired, "b")) == {"x", "y", "z", "sentinel"}  # unlimited by the link's path
    finally:
        w.stop()
