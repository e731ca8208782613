"""Why no actor was found: the log is unreadable, auditd is not running, or no rule watches the file.

Each is a fact the SOC can act on (mount the log, start auditd, add the CIS 1.1.x rule), so the
event says which. Read only: rules are read from the host root's rules files, never loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodeguard.controls.audit_rules import AUDIT_RULES_LIMIT, MAX_RULES_FILES, AuditTarget, covering, parse_audit_rules
from nodeguard.host import HostPathError, HostRoot

# /proc of a busy node has a few thousand pids; beyond this the scan gives up and says "unknown".
MAX_PIDS = 200_000


def auditd_running(proc: Path) -> bool | None:
    """Whether a process named auditd runs (None: /proc cannot be listed)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for name in entries[:MAX_PIDS]:
        if not name.isdigit():
            continue
        try:
            if (proc / name / "comm").read_text()[:64].strip() == "auditd":
                return True
        except OSError:
            continue
    return False


def rule_covers(host: HostRoot, host_path: str, files: list[str], dirs: list[str]) -> bool:
    """Whether the host's rules files (audit.rules, rules.d/*.rules) watch `host_path` for writes
    and attribute changes. Rules loaded by hand with auditctl and never written down are not seen."""
    streams: list[list[str]] = [list(files)]
    names: list[tuple[str, str]] = []
    for folder in dirs:
        try:
            names += [(n, f"{folder.rstrip('/')}/{n}") for n in host.listdir(folder) if n.endswith(".rules")]
        except OSError:
            continue
    streams.append([p for _, p in sorted(names)[:MAX_RULES_FILES]])
    try:
        resolved = host.host_path_of(host.resolve(host_path, follow_last=False))
    except (HostPathError, OSError):
        resolved = host_path
    target = AuditTarget(host_path, resolved, "file")
    for stream in streams:
        texts = []
        for path in stream:
            try:
                texts.append((path, host.read_text(path, limit=AUDIT_RULES_LIMIT)))
            except (OSError, UnicodeDecodeError):
                continue
        watches, _ = parse_audit_rules(texts, host)
        if any({"w", "a"} <= set(w.perms) for w in covering(watches, target)):
            return True
    return False
