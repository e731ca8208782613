"""The kernel's mount table (proc(5) `mountinfo`): a pure parser, and the one reader a pass uses.

Which table: the host root's `/proc/1/mountinfo` (the host's init, whose mount namespace is the
host's, naming host paths) when it is there; otherwise the agent's own `/proc/self/mountinfo`,
which names the agent's paths (a pod that sees the host root at `/host`, a test sandbox). The
host-layout control (CIS 1.1.1) and the host control (the data root's mount options) read it
through the pass's Context (nodeguard/observations.py): once per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodeguard.host import HostRoot

MOUNTINFO_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the folder of the filesystem that is mounted here ("/" unless a bind mount)
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """proc(5): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if sep + 2 >= len(fields):
            continue
        try:
            out.append(MountEntry(int(fields[0]), int(fields[1]), fields[2], _unescape(fields[3]),
                                  _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
        except ValueError:
            continue
    return out


def mount_of(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The mount a path lives on: the deepest mount point above it; the last one mounted there wins."""
    best: MountEntry | None = None
    for e in entries:
        mp = e.mount_point.rstrip("/") or "/"
        above = path == mp or mp == "/" or path.startswith(mp + "/")
        if above and (best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = e
    return best


@dataclass(frozen=True)
class MountTable:
    label: str  # which table was read, as findings name it
    entries: list[MountEntry]
    host_named: bool  # True: the host's init's table (host paths); False: the agent's own (real paths)


class NoMountTable(OSError):
    """The host root has no table at the configured path and the agent's own is unreadable."""


def read_mount_table(host: HostRoot, table: str, proc: Path) -> MountTable:
    """The host's table at `table` (a path in the host root), else the agent's own under `proc`.

    Raises OSError (or HostPathError) when the host's table exists but cannot be read, and
    NoMountTable (an OSError, with the own table's errno) when neither can be read."""
    try:
        return MountTable(f"{table} (host root)", parse_mountinfo(host.read_text(table, limit=MOUNTINFO_LIMIT)), True)
    except FileNotFoundError:
        own = proc / "self" / "mountinfo"
        try:
            text = own.read_text(errors="replace")
        except OSError as exc:
            raise NoMountTable(exc.errno, exc.strerror, str(own)) from exc
        return MountTable(f"{own} (the agent's own)", parse_mountinfo(text), False)
