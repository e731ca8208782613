"""Reading the host's audit log: where it is, and its recent end, bounded, across one rotation.

The path comes from the policy (`spec.agent.attribution.auditLog`) or the host's
`/etc/audit/auditd.conf` (`log_file`, default /var/log/audit/audit.log), read inside the host root.
Only the end of the log matters (the records of the last seconds), so it is read backwards in
chunks from the end until a record older than the window shows up, never more than
`max_bytes`: a 1 GB log costs what a 1 MB one does. When the window reaches back past the start of
the current file, auditd has rotated since (`audit.log` -> `audit.log.1`), and the end of
`audit.log.1` is read too, within the same budget. Read only: the agent never writes here.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from nodeguard.attribution.records import MAX_LINE, AuditEvent, Record, group_events, parse_line
from nodeguard.host import HostPathError, HostRoot

AUDITD_CONF = "/etc/audit/auditd.conf"
DEFAULT_LOG = "/var/log/audit/audit.log"
CONF_LIMIT = 256 * 1024
CHUNK = 64 * 1024
# Four megabytes are tens of thousands of records: minutes of a busy host's audit trail.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class LogUnreadable(OSError):
    """The audit log cannot be read (missing, a permission, not a regular file)."""


def log_path_from_conf(host: HostRoot) -> str:
    """`log_file` of the host's auditd.conf; the default when the file or the key is missing."""
    try:
        text = host.read_text(AUDITD_CONF, limit=CONF_LIMIT)
    except (OSError, UnicodeDecodeError):
        return DEFAULT_LOG
    for raw in text.splitlines():
        key, sep, value = raw.partition("=")
        if sep and key.strip() == "log_file" and value.strip().startswith("/"):
            return value.strip()
    return DEFAULT_LOG


@dataclass
class TailRead:
    """What one read of the log's end gave: the events, and how it went."""

    events: list[AuditEvent] = field(default_factory=list)
    bytes_read: int = 0
    files: list[str] = field(default_factory=list)
    truncated: bool = False  # the budget ran out before the window's start


def _open_log(host: HostRoot, host_path: str) -> int:
    try:
        real = host.resolve(host_path)
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except HostPathError as exc:
        raise LogUnreadable(exc.errno, f"{host_path}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise LogUnreadable(exc.errno, f"{host_path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LogUnreadable(errno.EINVAL, f"{host_path}: not a regular file")
    return fd


def _read_back(fd: int, since_ns: int, budget: int) -> tuple[list[Record], int, bool]:
    """Records from the end of `fd` back to the first one older than `since_ns`, oldest first.

    Returns (records, bytes read, reached the file's start). Only whole lines count: the last
    line may still be being written, and a line longer than any record is dropped, not kept.
    """
    pos = os.fstat(fd).st_size
    carry = b""  # the cut first line of the chunk read last: its start is in the next chunk back
    cut = True  # the next chunk's end is not a line's end (the file's end, or an overlong line)
    chunks: list[list[Record]] = []
    used = 0
    while pos > 0 and used < budget:
        size = min(CHUNK, pos, budget - used)
        pos -= size
        data = os.pread(fd, size, pos)
        used += len(data)
        if len(data) < size:  # truncated under us: what was read is what there is
            break
        buf = data + carry
        carry = b""
        if cut:
            nl = buf.rfind(b"\n")
            if nl < 0:
                continue
            buf, cut = buf[: nl + 1], False
        lines = buf.split(b"\n")
        if pos > 0:
            carry, lines = lines[0], lines[1:]
            if len(carry) > MAX_LINE:
                carry, cut = b"", True
        chunk = [r for r in (parse_line(line) for line in lines) if r is not None]
        chunks.append(chunk)
        if chunk and chunk[0].time_ns < since_ns:
            break
    return [r for c in reversed(chunks) for r in c], used, pos == 0


def read_tail(host: HostRoot, host_path: str, since_ns: int, max_bytes: int = DEFAULT_MAX_BYTES) -> TailRead:
    """Events at the end of the log, and of its first rotation when the window reaches back into it.

    Raises LogUnreadable when the log itself cannot be opened; a missing rotation is no error.
    """
    result = TailRead()
    parts: list[list[Record]] = []
    for index, candidate in enumerate((host_path, f"{host_path}.1")):
        try:
            fd = _open_log(host, candidate)
        except LogUnreadable:
            if index == 0:
                raise
            break
        try:
            got, used, at_start = _read_back(fd, since_ns, max_bytes - result.bytes_read)
        finally:
            os.close(fd)
        result.files.append(candidate)
        result.bytes_read += used
        parts.insert(0, got)
        reached = bool(got) and got[0].time_ns < since_ns
        result.truncated = not reached and not at_start
        if reached or not at_start or result.bytes_read >= max_bytes:
            break
    result.events = group_events(r for part in parts for r in part)
    return result
