"""The heartbeat the engine writes and the exec probe that reads it (`python -m nodeguard.health`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from nodeguard.health import check_heartbeat, heartbeat_path, write_heartbeat


def test_a_fresh_heartbeat_is_healthy_and_a_stale_one_is_not(tmp_path: Path) -> None:
    now = time.time()
    write_heartbeat(tmp_path, now=now - 30)
    assert check_heartbeat(tmp_path, 60, now=now).ok
    stale = check_heartbeat(tmp_path, 20, now=now)
    assert not stale.ok and "stuck" in stale.message
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat"]  # no temporary file left behind


def test_no_or_a_broken_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    assert not check_heartbeat(tmp_path / "missing").ok
    heartbeat_path(tmp_path).write_text("{not json")
    result = check_heartbeat(tmp_path)
    assert not result.ok and "unreadable" in result.message


def test_the_probe_exits_by_the_heartbeat(tmp_path: Path) -> None:
    def probe(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "nodeguard.health", "--state-dir", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60).returncode

    assert probe() == 1
    write_heartbeat(tmp_path)
    assert probe("--max-age", "60") == 0
    write_heartbeat(tmp_path, now=time.time() - 600)
    assert probe("--max-age", "60") == 1
