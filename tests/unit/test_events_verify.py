"""`nodeguard events verify`: a chain exported to JSON lines, and every way it can be tampered with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodeguard.cli import app
from nodeguard.events.model import Event, EventName
from nodeguard.events.spool import Spool
from nodeguard.events.verify import verify_lines
from tests.support.cli import run_nodeguard


def chained_lines(tmp_path: Path, n: int = 6) -> list[str]:
    spool = Spool(tmp_path / "spool", ["file"])
    try:
        return [json.dumps(spool.append(Event(EventName.DRIFT_DETECTED, "WARN", f"drift {i}", {
            "nodeguard.control": "docker-group", "nodeguard.rule": "member-allowed", "nodeguard.subject": f"u{i}",
            "nodeguard.observed": ["bob", i], "nodeguard.expected": None,
        })).to_record(), ensure_ascii=False) for i in range(n)]
    finally:
        spool.close()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str = ""


def verify_cli(path: Path) -> Result:
    """The real click app, in-process (a subprocess per case would cost seconds of imports each)."""
    res = CliRunner().invoke(app, ["events", "verify", str(path)])
    return Result(res.exit_code, res.output)


def test_intact_chain_passes_and_the_cli_says_so(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path)
    report = verify_lines(lines)
    assert report.ok and report.events == 6 and not report.notes
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    proc = run_nodeguard("events", "verify", str(f))  # the installed entry point, once
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "chain intact: 6 events" in proc.stdout


def test_altered_event_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path)
    rec = json.loads(lines[2])
    rec["attributes"]["nodeguard.observed"] = ["alice", 2]  # somebody hides who was added
    lines[2] = json.dumps(rec)
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    proc = verify_cli(f)
    assert proc.returncode == 1
    assert f"{f}:3: error: altered:" in proc.stdout, proc.stdout


def test_altered_and_rehashed_event_breaks_the_next_link(tmp_path: Path) -> None:
    from nodeguard.events.chain import ATTR_HASH, record_hash

    lines = chained_lines(tmp_path)
    rec = json.loads(lines[2])
    rec["body"] = "nothing to see"
    rec["attributes"][ATTR_HASH] = record_hash(rec)  # a forger who knows the scheme re-hashes this event...
    lines[2] = json.dumps(rec)
    report = verify_lines(lines)
    # ...but the next event still names the original hash as its predecessor.
    assert [(p.line, p.kind) for p in report.problems] == [(4, "broken-link")]


def test_removed_event_is_reported_as_missing(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path)
    del lines[3]
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(lines) + "\n")
    proc = verify_cli(f)
    assert proc.returncode == 1
    assert f"{f}:4: error: missing: seq 4 missing between line 3 and line 4" in proc.stdout, proc.stdout


def test_reordered_events_fail(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path)
    lines[2], lines[4] = lines[4], lines[2]
    report = verify_lines(lines)
    assert not report.ok
    assert {p.kind for p in report.problems} <= {"missing", "out-of-order", "broken-link"}


def test_redelivered_duplicates_and_a_spool_reset_are_notes_not_failures(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path / "a")
    again = lines[:4] + lines[2:]  # a restart re-sent events 3 and 4
    fresh = chained_lines(tmp_path / "b", 2)  # the state dir was wiped: a new chain from seq 1
    report = verify_lines(again + fresh)
    assert report.ok, report.problems
    assert report.duplicates == 2
    assert [n.kind for n in report.notes] == ["duplicate", "duplicate", "restart"]


def test_same_id_with_other_content_is_a_conflict(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path)
    rec = json.loads(lines[1])
    rec["body"] = "changed"
    report = verify_lines([*lines, json.dumps(rec)])
    assert [p.kind for p in report.problems] == ["conflict"]


@pytest.mark.parametrize("junk", ["not json", '{"event.id": "x"}'])
def test_garbage_lines_fail(tmp_path: Path, junk: str) -> None:
    lines = chained_lines(tmp_path)
    report = verify_lines([*lines[:2], junk, *lines[2:]])
    assert [(p.line, p.kind) for p in report.problems] == [(3, "unreadable")]


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    assert verify_cli(tmp_path / "nope.jsonl").returncode == 2
