"""Check a chain of events exported as JSON lines (`nodeguard events verify FILE`).

Each line is recomputed and linked to the one before it. Failures: a line that is not an event,
an event whose content no longer matches its hash (altered), a link to a previous hash that is
not the previous event's (an event replaced or reordered), a gap in the sequence that the spool
did not declare (events removed), one id with two contents. Not failures, but reported:
duplicates (at-least-once redelivery after a restart), gaps the spool declared with a
`nodeguard.spool.dropped` event, a chain that starts mid-way (rotated file) or restarts at 1
(the state folder was reset). A file cannot prove that nothing was cut off after its last line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeguard.events.chain import ATTR_HASH, ATTR_PREV, ATTR_SEQ, GENESIS, record_hash
from nodeguard.events.model import EventName

ATTR_DROPPED_FIRST = "nodeguard.spool.dropped_first_seq"
ATTR_DROPPED_LAST = "nodeguard.spool.dropped_last_seq"


@dataclass(frozen=True)
class Remark:
    line: int
    kind: str
    message: str


@dataclass
class VerifyReport:
    events: int = 0
    duplicates: int = 0
    problems: list[Remark] = field(default_factory=list)
    notes: list[Remark] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Link:
    line: int
    seq: int
    hash: str


@dataclass
class _Gap:
    line: int  # the line after the gap
    after_line: int
    first: int
    last: int


def verify_lines(lines: Iterable[str]) -> VerifyReport:
    report = VerifyReport()
    seen: dict[str, tuple[int, str]] = {}  # event id -> (line, hash)
    last: _Link | None = None
    gaps: list[_Gap] = []
    declared: list[tuple[int, int]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record: dict[str, Any] = json.loads(raw)
            attrs = record["attributes"]
            event_id = str(record["event.id"])
            stored = str(attrs[ATTR_HASH])
            prev = str(attrs[ATTR_PREV])
            seq = int(attrs[ATTR_SEQ])
            actual = record_hash(record)
        except (ValueError, KeyError, TypeError) as exc:
            report.problems.append(Remark(lineno, "unreadable", f"not a chained nodeguard event ({exc!r})"))
            continue
        if event_id in seen:
            first_line, first_hash = seen[event_id]
            if first_hash == stored and actual == stored:
                report.duplicates += 1
                report.notes.append(Remark(lineno, "duplicate", f"event {event_id} again (first on line {first_line})"
                                           ": redelivered after a restart"))
            else:
                report.problems.append(Remark(lineno, "conflict", f"event {event_id} differs from line {first_line}"))
            continue
        seen[event_id] = (lineno, stored)
        report.events += 1
        if actual != stored:
            report.problems.append(Remark(lineno, "altered", f"event {event_id} (seq {seq}) does not match its hash"))
        if record.get("event.name") == EventName.SPOOL_DROPPED.value:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                declared.append((int(attrs[ATTR_DROPPED_FIRST]), int(attrs[ATTR_DROPPED_LAST])))
        if last is None:
            if seq != 1 or prev != GENESIS:
                report.notes.append(Remark(lineno, "start", f"chain starts at seq {seq}: earlier events are not in "
                                           "this file"))
        elif seq == 1 and prev == GENESIS:
            report.notes.append(Remark(lineno, "restart", "chain restarts at seq 1 (the spool was reset)"))
        elif seq <= last.seq:
            report.problems.append(Remark(lineno, "out-of-order", f"seq {seq} after seq {last.seq} "
                                          f"(line {last.line})"))
            continue
        elif seq > last.seq + 1:
            gaps.append(_Gap(lineno, last.line, last.seq + 1, seq - 1))
        elif prev != last.hash:
            report.problems.append(Remark(lineno, "broken-link", f"seq {seq} does not link to seq {last.seq} on line "
                                          f"{last.line}: an event was replaced or altered"))
        last = _Link(lineno, seq, stored)
    for gap in gaps:
        span = f"seq {gap.first}" if gap.first == gap.last else f"seq {gap.first}..{gap.last}"
        if _covered(gap.first, gap.last, declared):
            report.notes.append(Remark(gap.line, "dropped", f"{span} dropped by the full spool (declared)"))
        else:
            report.problems.append(Remark(gap.line, "missing", f"{span} missing between line {gap.after_line} and "
                                          f"line {gap.line}"))
    report.problems.sort(key=lambda r: r.line)
    report.notes.sort(key=lambda r: r.line)
    return report


def _covered(first: int, last: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether the union of the declared ranges covers first..last (a later notice may extend an earlier one)."""
    reach = first
    for lo, hi in sorted(ranges):
        if lo > reach:
            break
        reach = max(reach, hi + 1)
        if reach > last:
            return True
    return reach > last


def verify_file(path: Path) -> VerifyReport:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return verify_lines(fh)
