"""Fuzz target for the audit log (nodeguard/attribution/): registered in targets.py as `audit_log`.

The bytes are an audit log as a hostile process could shape it (names, comm and argv are the
attacker's): parsed, grouped, matched, and read back from a file's end with a small budget.
Any exception is a crash; the checks below are what every caller relies on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nodeguard.attribution.logfile import read_tail
from nodeguard.attribution.match import actor_of, changed_names, find_actor, is_change
from nodeguard.attribution.records import parse_text
from nodeguard.host import HostRoot

_ROOT: HostRoot | None = None


def _root() -> HostRoot:
    global _ROOT
    if _ROOT is None:
        # One small host root reused by every run (libFuzzer exits without Python's clean-up).
        root = Path(tempfile.gettempdir()) / "ng-fuzz-audit-log-root"
        (root / "var/log/audit").mkdir(parents=True, exist_ok=True)
        _ROOT = HostRoot(root)
    return _ROOT


def audit_log(data: bytes) -> None:
    events = parse_text(data)
    for ev in events:
        assert ev.records and all(r.event_key == (ev.sec, ev.ms, ev.serial) for r in ev.records)
        is_change(ev)
        assert all(name.startswith("/") for name in changed_names(ev))
        actor = actor_of(ev)
        assert actor.pid is None or isinstance(actor.pid, int)
        assert actor.command_line is None or isinstance(actor.command_line, str)
    found = find_actor(events, lambda name: True, 0, 1 << 62)
    assert found is None or found.event_id in {ev.id for ev in events}
    # The bounded reader over the same bytes as a file: never more than its budget.
    root = _root()
    (root.root / "var/log/audit/audit.log").write_bytes(data)
    tail = read_tail(root, "/var/log/audit/audit.log", 0, max_bytes=4096)
    assert tail.bytes_read <= 4096
