"""The events and OCSF files: opened through their folder with no symlink followed, never a hang."""

from __future__ import annotations

import os
from pathlib import Path

from nodeguard.events.files import jsonl_exporter, ocsf_exporter
from nodeguard.events.model import EventName, lifecycle_event


def test_a_symlink_planted_as_the_events_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root:*:1::::::\n")
    (tmp_path / "events.jsonl").symlink_to(victim)
    exporter = jsonl_exporter(str(tmp_path / "events.jsonl"))
    assert not exporter.export([lifecycle_event(EventName.AGENT_STARTED, "started")])
    assert victim.read_text() == "root:*:1::::::\n"


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "dir"):
        exporter = ocsf_exporter(str(tmp_path / name), {"host.name": "n"})
        # A lifecycle event renders to no OCSF line, but the file is still opened: no hang, no crash.
        assert not exporter.export([lifecycle_event(EventName.AGENT_STARTED, "started")]), name


def test_a_rotated_file_is_recreated(tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    exporter = jsonl_exporter(str(target))
    assert exporter.export([lifecycle_event(EventName.AGENT_STARTED, "one")])
    target.rename(tmp_path / "events.jsonl.1")
    assert exporter.export([lifecycle_event(EventName.AGENT_STARTED, "two")])
    exporter.shutdown()
    assert '"body":"two"' in target.read_text() and '"body":"one"' in (tmp_path / "events.jsonl.1").read_text()
    assert target.stat().st_mode & 0o777 == 0o600


def test_the_agent_refuses_an_events_folder_others_can_write(tmp_path: Path) -> None:
    from tests.support.cli import run_nodeguard
    from tests.support.sandbox import make_sandbox

    sb = make_sandbox(tmp_path / "root")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for flag in ("--events-file", "--ocsf-file"):
        proc = run_nodeguard("run", "--host-root", str(sb.root), "--state-dir", str(tmp_path / "state"),
                             flag, str(shared / "events.jsonl"), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "refused" in proc.stderr and str(shared) in proc.stderr
        assert not (shared / "events.jsonl").exists()
