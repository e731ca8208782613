"""Patching daemon.json the way an admin would: change only the offending keys, keep the rest as written.

The text is edited in place, member by member, so comments-free formatting, key order and every
untouched value stay byte-for-byte; the result is checked by parsing it back, and if the in-place
edit cannot be proven right the whole object is re-serialized instead (still valid JSON).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nodeguard.controls.base import Context, Outcome
from nodeguard.daemon_settings import RELOADABLE_KEYS, DaemonConfigObservation
from nodeguard.dockerd import dockerd_argv
from nodeguard.formats import gojson
from nodeguard.formats.gojson import Member
from nodeguard.structs import Finding

if TYPE_CHECKING:
    from nodeguard.state import StateStore

DELETE = object()  # a patch value meaning "remove this key"


def top_level_members(text: str) -> tuple[list[Member], int, int] | None:
    """The object's members with their spans, and the positions of its braces; None if not an object.

    Read with dockerd's parser (nodeguard.formats.gojson): no depth or number-size limit of Python's own.
    """
    members: list[Member] = []
    try:
        value, end = gojson.decode(text, members=members)
    except gojson.GoJSONError:
        return None
    if not isinstance(value, dict):
        return None
    open_at = len(text) - len(text.lstrip(" \t\n\r"))
    return members, open_at, end - 1


def _indent_of(text: str, pos: int) -> str:
    line_start = text.rfind("\n", 0, pos) + 1
    prefix = text[line_start:pos]
    return prefix if prefix.strip() == "" else ""


def _value_texts(text: str, members: list[Member]) -> dict[str, str]:
    """key -> the text of its value as dockerd reads it (the last of duplicate keys wins)."""
    return {m.key: text[m.value_start:m.value_end] for m in members}


def _reserialized(text: str, members: list[Member], patch: dict[str, Any]) -> str:
    """The whole object written anew, each kept value copied as text (never re-encoded: a value may
    be nested 10,000 levels deep, beyond what json.dumps can recurse)."""
    values = _value_texts(text, members)
    for key, value in patch.items():
        if value is DELETE:
            values.pop(key, None)
        else:
            values[key] = json.dumps(value)
    if not values:
        return "{}\n"
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {v}" for k, v in values.items()) + "\n}\n"


def _is_expected(out: str, before: dict[str, str], patch: dict[str, Any]) -> bool:
    parsed = top_level_members(out)
    if parsed is None:
        return False
    members = parsed[0]
    after = _value_texts(out, members)
    want = {k: v for k, v in before.items() if k not in patch}
    want_patched = {k: v for k, v in patch.items() if v is not DELETE}
    if set(after) != set(want) | set(want_patched):
        return False
    if any(after[k] != v for k, v in want.items()):
        return False
    values = {m.key: m for m in members}
    for key, value in want_patched.items():
        try:
            got, _ = gojson.decode(out[values[key].value_start:values[key].value_end])
        except gojson.GoJSONError:
            return False
        if got != value:
            return False
    return True


def apply_patch(text: str, patch: dict[str, Any]) -> str:
    """`text` with each key of `patch` set (or removed, for DELETE); the rest of the text untouched.

    `text` is a daemon.json dockerd accepts (decoded with surrogateescape: a byte that is not UTF-8
    goes back out as it came in). A duplicated key is removed everywhere, set where dockerd reads it.
    """
    parsed = top_level_members(text) if text.strip(" \t\n\r") else None
    if parsed is None:
        return _reserialized("{}", [], patch)
    members, open_at, close_at = parsed
    before = _value_texts(text, members)
    last = {m.key: m for m in members}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement), applied from the end
    indent = _indent_of(text, members[0].start) if members else "  "
    multiline = "\n" in text[open_at:close_at] or not members
    additions = []
    for key, value in patch.items():
        if value is DELETE:
            for idx, member in enumerate(members):
                if member.key != key:
                    continue
                if idx + 1 < len(members):  # remove up to the next member's start
                    edits.append((member.start, members[idx + 1].start, ""))
                elif idx > 0:  # last member: remove from the end of the previous value
                    edits.append((members[idx - 1].value_end, member.value_end, ""))
                else:
                    edits.append((member.start, member.value_end, ""))
        elif key in last:
            edits.append((last[key].value_start, last[key].value_end, json.dumps(value)))
        else:
            additions.append(f"{json.dumps(key)}: {json.dumps(value)}")
    if additions:
        sep = f",\n{indent}" if multiline else ", "
        if members:
            anchor = members[-1].value_end
            edits.append((anchor, anchor, sep + sep.join(additions)))
        else:
            edits.append((open_at + 1, close_at, f"\n{indent}" + sep.join(additions) + "\n"))
    edits.sort(key=lambda e: e[0], reverse=True)
    out = text
    overlapping = any(later[0] < earlier[1] for earlier, later in zip(edits[1:], edits, strict=False)
                      if earlier[1] > earlier[0])
    if not overlapping:
        for start, end, replacement in edits:
            out = out[:start] + replacement + out[end:]
        if _is_expected(out, before, patch):
            return out
    return _reserialized(text, members, patch)


# -- remediation -----------------------------------------------------------------------------

DIFF_LIMIT = 8192  # bytes of unified diff carried in an event; the quarantined file has the rest
LAST_GOOD_NAME = "daemon.json"
FLAG_ONLY = "set by a dockerd flag, not in daemon.json: change the unit or its drop-in"


def unified_diff(before: bytes, after: bytes, path: str) -> str:
    import difflib  # only a revert shows a diff: a one-shot check never does

    lines = difflib.unified_diff(before.decode("utf-8", "replace").splitlines(keepends=True),
                                 after.decode("utf-8", "replace").splitlines(keepends=True),
                                 fromfile=f"{path} (drifted)", tofile=f"{path} (policy)")
    text = "".join(lines)
    return text if len(text) <= DIFF_LIMIT else text[:DIFF_LIMIT] + "\n... (truncated)\n"


def reload_daemon(ctx: Context, changed_keys: set[str]) -> tuple[bool, str]:
    """SIGHUP dockerd when every changed key is reloadable; else say a restart is required."""
    needs_restart = sorted(k for k in changed_keys if k not in RELOADABLE_KEYS)
    if needs_restart:
        return True, f"restart required for {', '.join(needs_restart)} (nodeguard does not restart dockerd)"
    daemon = ctx.daemon
    if daemon is None:
        return False, "no running dockerd found; the change applies at its next start"
    if dockerd_argv(ctx.proc, daemon.pid) is None:  # the pid was recycled since we looked
        return False, f"pid {daemon.pid} is no longer dockerd; not signalled"
    os.kill(daemon.pid, signal.SIGHUP)
    return False, f"SIGHUP sent to dockerd (pid {daemon.pid})"


def remediate_config(ctx: Context, findings: Sequence[Finding], obs: DaemonConfigObservation,
                     patch_for: Callable[[str], dict[str, Any]]) -> list[Outcome]:
    """Put daemon.json back to policy in one write: quarantine, patch, atomic replace, reload.

    `patch_for(rule_id)`: the keys that put that rule back ({} when the file cannot fix it); the
    daemon-config control's knowledge, passed in so this editor never builds a control."""
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
        patch: dict[str, Any] = {}
        per_finding = {}
        for f in findings:
            p = patch_for(f.rule)
            per_finding[f.rule] = bool(p)
            patch.update(p)
        if not patch:
            return [Outcome(False, False, FLAG_ONLY) for _ in findings]
        # surrogateescape: a stray byte dockerd reads as U+FFFD (a Latin-1 label) is kept as it was.
        text = before.decode("utf-8", "surrogateescape")
        after = apply_patch(text, patch).encode("utf-8", "surrogateescape")
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
