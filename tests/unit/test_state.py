"""The state dir cannot stop the agent: a FIFO, a directory or a link where a file or folder should be."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from nodeguard.reconcile import finding_key
from nodeguard.state import KnownFinding, StateStore
from nodeguard.structs import Finding, Severity, Status


def in_thread(fn: object, timeout: float = 10.0) -> object:
    """Run `fn` where a hang is caught (a FIFO's open() would block forever) instead of hanging the test."""
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)  # type: ignore[operator]
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    return box[0]


def known() -> dict[str, KnownFinding]:
    f = Finding("socket", "socket-mode", Status.FAIL, Severity.CRITICAL, "0666")
    return {finding_key(f): KnownFinding("fail", "0666", 1.0)}


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_findings_json_that_is_not_a_file_is_moved_aside(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = state / "findings.json"
    secret = tmp_path / "secret.json"
    secret.write_text('{"version": 1, "findings": {}}')
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target.symlink_to(secret)
    store = StateStore(state)
    assert in_thread(store.load_findings) is None
    assert any("findings.json was not a file" in p for p in store.problems)
    store.save_findings(known())  # the next save works: the odd file is out of the way
    assert store.load_findings() == known()
    assert secret.read_text() == '{"version": 1, "findings": {}}'
    assert [p.name for p in state.iterdir() if p.name.startswith("findings.json.not-a-file-")]


def test_a_quarantine_replaced_by_a_symlink_is_replaced_by_a_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (state / "quarantine").symlink_to(elsewhere)
    store = StateStore(state)
    assert (state / "quarantine").is_dir() and not (state / "quarantine").is_symlink()
    kept = store.quarantine("daemon.json", b"{}")
    assert kept.parent == state / "quarantine"
    assert list(elsewhere.iterdir()) == []
    assert any("quarantine was not a folder" in p for p in store.problems)


def test_a_corrupt_findings_json_is_no_baseline_and_kept_for_a_human(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "findings.json").write_text("{half")
    store = StateStore(state)
    assert store.load_findings() is None
    assert [p for p in (state / "quarantine").iterdir() if p.name.startswith("findings.json.")]
