"""Patching daemon.json the way an admin would: change only the offending keys, keep the rest as written.

The text is edited in place, member by member, so comments-free formatting, key order and every
untouched value stay byte-for-byte; the result is checked by parsing it back, and if the in-place
edit cannot be proven right the whole object is re-serialized instead (still valid JSON).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeguard.controls.base import Context, Outcome
from nodeguard.controls.daemon_config import DELETE, RELOADABLE_KEYS, DaemonConfigObservation
from nodeguard.structs import Finding

if TYPE_CHECKING:
    from nodeguard.state import StateStore

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Member:
    key: str
    start: int  # the key's opening quote
    value_start: int
    value_end: int  # one past the value's last character


def _skip_ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def top_level_members(text: str) -> tuple[list[Member], int, int] | None:
    """The object's members with their spans, and the positions of its braces; None if not an object."""
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        return None
    open_at = i
    i = _skip_ws(text, i + 1)
    members: list[Member] = []
    if i < len(text) and text[i] == "}":
        return members, open_at, i
    while i < len(text):
        if text[i] != '"':
            return None
        key, j = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        j = _skip_ws(text, j)
        if j >= len(text) or text[j] != ":":
            return None
        j = _skip_ws(text, j + 1)
        try:
            _, end = _DECODER.raw_decode(text, j)
        except json.JSONDecodeError:
            return None
        members.append(Member(key, i, j, end))
        k = _skip_ws(text, end)
        if k < len(text) and text[k] == ",":
            i = _skip_ws(text, k + 1)
            continue
        if k < len(text) and text[k] == "}":
            return members, open_at, k
        return None
    return None


def _indent_of(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    prefix = text[line_start:pos]
    return prefix if prefix.strip() == "" else ""


def apply_patch(text: str, patch: dict[str, Any]) -> str:
    """`text` with each key of `patch` set (or removed, for DELETE); the rest of the text untouched."""
    original = json.loads(text) if text.strip() else {}
    expected = dict(original)
    for key, value in patch.items():
        if value is DELETE:
            expected.pop(key, None)
        else:
            expected[key] = value
    parsed = top_level_members(text) if text.strip() else None
    if parsed is None:
        return json.dumps(expected, indent=2) + "\n"
    members, open_at, close_at = parsed
    by_key = {m.key: m for m in members}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied from the end
    indent = _indent_of(text, members[0].start) if members else "  "
    multiline = "\n" in text[open_at:close_at] or not members
    additions = []
    for key, value in patch.items():
        member = by_key.get(key)
        if value is DELETE:
            if member is None:
                continue
            idx = members.index(member)
            if idx + 1 < len(members):  # remove up to the next member's start
                edits.append((member.start, members[idx + 1].start, ""))
            elif idx > 0:  # last member: remove from the end of the previous value
                edits.append((members[idx - 1].value_end, member.value_end, ""))
            else:
                edits.append((member.start, member.value_end, ""))
        elif member is not None:
            edits.append((member.value_start, member.value_end, json.dumps(value)))
        else:
            additions.append(f"{json.dumps(key)}: {json.dumps(value)}")
    if additions:
        sep = f",\n{indent}" if multiline else ", "
        if members:
            anchor = members[-1].value_end
            edits.append((anchor, anchor, sep + sep.join(additions)))
        else:
            edits.append((open_at + 1, close_at, f"\n{indent}" + sep.join(additions) + "\n"))
    out = text
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        out = out[:start] + replacement + out[end:]
    try:
        if json.loads(out) == expected:
            return out
    except json.JSONDecodeError:
        pass
    return json.dumps(expected, indent=2) + "\n"


# -- remediation -----------------------------------------------------------------------------

DIFF_LIMIT = 8192  # bytes of unified diff carried in an event; the quarantined file has the rest
LAST_GOOD_NAME = "daemon.json"
FLAG_ONLY = "set by a dockerd flag, not in daemon.json: change the unit or its drop-in"


def unified_diff(before: bytes, after: bytes, path: str) -> str:
    lines = difflib.unified_diff(before.decode("utf-8", "replace").splitlines(keepends=True),
                                 after.decode("utf-8", "replace").splitlines(keepends=True),
                                 fromfile=f"{path} (drifted)", tofile=f"{path} (policy)")
    text = "".join(lines)
    return text if len(text) <= DIFF_LIMIT else text[:DIFF_LIMIT] + "\n... (truncated)\n"


def _is_dockerd(proc: Path, pid: int) -> bool:
    try:
        argv0 = (proc / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name == "dockerd"


def reload_daemon(ctx: Context, changed_keys: set[str]) -> tuple[bool, str]:
    """SIGHUP dockerd when every changed key is reloadable; else say a restart is required."""
    needs_restart = sorted(k for k in changed_keys if k not in RELOADABLE_KEYS)
    if needs_restart:
        return True, f"restart required for {', '.join(needs_restart)} (nodeguard does not restart dockerd)"
    daemon = ctx.daemon
    if daemon is None:
        return False, "no running dockerd found; the change applies at its next start"
    if not _is_dockerd(ctx.proc, daemon.pid):  # the pid was recycled since we looked
        return False, f"pid {daemon.pid} is no longer dockerd; not signalled"
    os.kill(daemon.pid, signal.SIGHUP)
    return False, f"SIGHUP sent to dockerd (pid {daemon.pid})"


def remediate_config(ctx: Context, findings: Sequence[Finding], obs: DaemonConfigObservation) -> list[Outcome]:
    """Put daemon.json back to policy in one write: quarantine, patch, atomic replace, reload."""
    from nodeguard.controls.daemon_config import DaemonConfigControl
    from nodeguard.state import StateStore

    store = StateStore(ctx.state_dir) if ctx.state_dir is not None else None
    if obs.stat is not None and obs.stat.kind != "file":
        why = f"{obs.path} is a {obs.stat.kind}; nodeguard never writes through it"
        return [Outcome(False, False, why) for _ in findings]
    before = obs.raw or b""
    if any(f.rule == "valid-json" for f in findings):
        good = store.last_good(LAST_GOOD_NAME) if store is not None else None
        if good is None:
            return [Outcome(False, False, "no known-good daemon.json to restore; fix it by hand") for _ in findings]
        after = good
        note = "restored the last known-good daemon.json"
        changed_keys: set[str] = set()  # dockerd ignored the broken file: its running config is the good one
        per_finding = {f.rule: bool(f.rule == "valid-json") for f in findings}
    else:
        control = DaemonConfigControl()
        patch: dict[str, Any] = {}
        per_finding = {}
        for f in findings:
            p = control.patch_for(f.rule, obs, ctx.policy)
            per_finding[f.rule] = bool(p)
            patch.update(p)
        if not patch:
            return [Outcome(False, False, FLAG_ONLY) for _ in findings]
        text = before.decode("utf-8")
        after = apply_patch(text, patch).encode()
        cfg = obs.config or {}
        changed_keys = {k for k, v in patch.items() if cfg.get(k, DELETE) != v}
        note = f"set {', '.join(sorted(k for k in patch if patch[k] is not DELETE))}" + (
            f"; removed {', '.join(sorted(k for k in patch if patch[k] is DELETE))}"
            if any(v is DELETE for v in patch.values()) else "")
    details: dict[str, Any] = {"diff": unified_diff(before, after, obs.path)}
    if store is not None and obs.stat is not None:
        details["quarantined"] = str(store.quarantine(LAST_GOOD_NAME, before))
    ctx.host.write_atomic(obs.path, after, expect=obs.stat)
    if store is not None:
        store.save_last_good(LAST_GOOD_NAME, after)
    restart, reload_note = reload_daemon(ctx, changed_keys) if changed_keys else (False, "")
    message = note + (f"; {reload_note}" if reload_note else "")
    outcomes = []
    for f in findings:
        if per_finding.get(f.rule):
            outcomes.append(Outcome(True, True, message, dict(details), restart_required=restart))
        else:
            outcomes.append(Outcome(False, False, FLAG_ONLY))
    return outcomes


def remember_last_good(ctx: Context, obs: DaemonConfigObservation, store: StateStore) -> None:
    if obs.raw is not None and obs.error is None and obs.stat is not None and obs.stat.kind == "file":
        store.save_last_good(LAST_GOOD_NAME, obs.raw)
