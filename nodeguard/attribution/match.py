"""Which audit event made a drift: pure functions over parsed events (no I/O, no clock).

A drift names a file; the audit event that made it is the latest one, in the window before the
drift was seen, whose syscall changed that file (its attributes or its content: chmod, chown,
setxattr, rename over it, an open for writing, ...) and succeeded. The agent's own reverts
are excluded by pid, and by the window: it ends when the drift was first seen, before any revert.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nodeguard.attribution.records import UNSET_ID, AuditEvent, as_int, decode_keys, decode_string

# Syscalls that change a file's attributes or its content (what `-p wa` reports), by name.
CHANGE_SYSCALLS = frozenset({
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr", "lremovexattr", "fremovexattr",
    "removexattrat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "link", "linkat", "symlink",
    "symlinkat", "truncate", "ftruncate", "creat", "open", "openat", "openat2", "mknod", "mknodat",
    "utime", "utimes", "utimensat", "futimesat", "mkdir", "mkdirat", "rmdir",
})
# RAW logs carry numbers: the ones above on the two architectures nodes run on.
_X86_64 = {
    2: "open", 76: "truncate", 77: "ftruncate", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 86: "link",
    87: "unlink", 88: "symlink", 90: "chmod", 91: "fchmod", 92: "chown", 93: "fchown", 94: "lchown",
    132: "utime", 133: "mknod", 188: "setxattr", 189: "lsetxattr", 190: "fsetxattr", 197: "removexattr",
    198: "lremovexattr", 199: "fremovexattr", 235: "utimes", 257: "openat", 258: "mkdirat", 259: "mknodat",
    260: "fchownat", 261: "futimesat", 263: "unlinkat", 264: "renameat", 265: "linkat", 266: "symlinkat",
    268: "fchmodat", 280: "utimensat", 316: "renameat2", 437: "openat2", 452: "fchmodat2", 463: "setxattrat",
    466: "removexattrat",
}
_AARCH64 = {
    5: "setxattr", 6: "lsetxattr", 7: "fsetxattr", 14: "removexattr", 15: "lremovexattr", 16: "fremovexattr",
    33: "mknodat", 34: "mkdirat", 35: "unlinkat", 36: "symlinkat", 37: "linkat", 38: "renameat",
    45: "truncate", 46: "ftruncate", 52: "fchmod", 53: "fchmodat", 54: "fchownat", 55: "fchown", 56: "openat",
    88: "utimensat", 276: "renameat2", 437: "openat2", 452: "fchmodat2", 463: "setxattrat", 466: "removexattrat",
}
_ARCHES = {"c000003e": _X86_64, "c00000b7": _AARCH64}
# open(2) flags: O_WRONLY|O_RDWR, O_CREAT, O_TRUNC (the same values on x86_64 and aarch64).
_OPEN_WRITES = 0o3 | 0o100 | 0o1000


@dataclass(frozen=True)
class Actor:
    """Who, according to one audit event, changed the file."""

    event_id: str  # SEC.MS:SERIAL, what `ausearch --event SERIAL` finds
    time_ns: int
    pid: int | None
    ppid: int | None
    exe: str | None
    comm: str | None
    command_line: str | None
    uid: int | None
    auid: int | None  # the login uid: who logged in, before any sudo or su
    syscall: str | None
    keys: tuple[str, ...]
    enriched_auid_name: str | None  # auditd's own translation (ENRICHED), a fallback for the name


def syscall_name(ev: AuditEvent) -> str | None:
    sc = ev.first("SYSCALL")
    if sc is None:
        return None
    named = sc.enriched.get("SYSCALL")
    if named:
        return named
    number = as_int(sc.fields.get("syscall"))
    table = _ARCHES.get(sc.fields.get("arch", ""))
    if number is None or table is None:
        return None
    return table.get(number, str(number))


def is_change(ev: AuditEvent) -> bool:
    """A successful syscall that changes a file (an unknown syscall on an unknown arch counts:
    the rule that logged it was asked for writes and attribute changes)."""
    sc = ev.first("SYSCALL")
    if sc is None or sc.fields.get("success") == "no":
        return False
    name = syscall_name(ev)
    if name is None:
        return True
    if name not in CHANGE_SYSCALLS:
        return name.isdigit() and sc.fields.get("arch", "") not in _ARCHES
    if name in ("open", "openat"):
        flags = as_int(sc.fields.get("a1" if name == "open" else "a2"), 16)
        return flags is None or flags & _OPEN_WRITES != 0
    return True


def changed_names(ev: AuditEvent) -> list[str]:
    """The absolute names the event's PATH records touched (relative ones joined to its CWD)."""
    cwd_rec = ev.first("CWD")
    cwd = decode_string(cwd_rec.fields.get("cwd")) if cwd_rec else None
    out = []
    for rec in ev.all("PATH"):
        if rec.fields.get("nametype") == "PARENT":
            continue
        name = decode_string(rec.fields.get("name"))
        if not name:
            continue
        if not name.startswith("/"):
            if not cwd or not cwd.startswith("/"):
                continue  # relative to a directory descriptor: cannot be placed
            name = posixpath.join(cwd, name)
        out.append(posixpath.normpath(name))
    return out


def changed_inodes(ev: AuditEvent) -> set[tuple[int, int, int]]:
    """(device major, minor, inode) of what the PATH records touched: a hard link or a bind mount
    reaches a watched file under another name, and the kernel's watch (on the inode) still logs it."""
    out = set()
    for rec in ev.all("PATH"):
        if rec.fields.get("nametype") == "PARENT":
            continue
        inode = as_int(rec.fields.get("inode"))
        major, sep, minor = rec.fields.get("dev", "").partition(":")
        if inode is None or not sep:
            continue
        ma, mi = as_int(major, 16), as_int(minor, 16)
        if ma is not None and mi is not None:
            out.add((ma, mi, inode))
    return out


def actor_of(ev: AuditEvent) -> Actor:
    sc = ev.first("SYSCALL")
    fields = sc.fields if sc else {}
    enriched = sc.enriched if sc else {}
    title = ev.first("PROCTITLE")
    command_line = decode_string(title.fields.get("proctitle"), nul_as=" ") if title else None
    auid = as_int(fields.get("auid"))
    return Actor(
        event_id=ev.id, time_ns=ev.time_ns,
        pid=as_int(fields.get("pid")), ppid=as_int(fields.get("ppid")),
        exe=decode_string(fields.get("exe")), comm=decode_string(fields.get("comm")),
        command_line=command_line.strip() if command_line else None,
        uid=as_int(fields.get("uid")), auid=None if auid == UNSET_ID else auid,
        syscall=syscall_name(ev), keys=tuple(decode_keys(fields.get("key"))),
        enriched_auid_name=decode_string(enriched.get("AUID")),
    )


def find_actor(events: Iterable[AuditEvent], is_target: Callable[[str], bool], start_ns: int, end_ns: int,
               exclude_pids: frozenset[int] = frozenset(), inode: tuple[int, int, int] | None = None) -> Actor | None:
    """The latest change to the target (by name, or by `inode`) within [start_ns, end_ns], made by a
    process not excluded."""
    best: AuditEvent | None = None
    for ev in events:
        if not start_ns <= ev.time_ns <= end_ns:
            continue
        if best is not None and (ev.time_ns, ev.serial) < (best.time_ns, best.serial):
            continue
        # Cheapest test first: most events in the window are about other files.
        if not any(r.type == "PATH" for r in ev.records):
            continue
        if not any(is_target(n) for n in changed_names(ev)) and (inode is None or inode not in changed_inodes(ev)):
            continue
        if not is_change(ev):
            continue
        sc = ev.first("SYSCALL")
        if sc is not None and as_int(sc.fields.get("pid")) in exclude_pids:
            continue
        best = ev
    return actor_of(best) if best is not None else None
