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
from collections.abc import Generator, Iterator
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


class TailScan:
    """One backward scan of the log's end: `chunks()` yields records, newest chunk first.

    The caller stops iterating as soon as it has what it wants (usually after the first chunk: the
    record it waits for was written milliseconds ago). `resume_point` says where this scan's
    whole lines ended; given back as `resume` to the next scan of the same file, only what was
    appended since is read. Opening the current log raises LogUnreadable; a missing rotation is
    no error.
    """

    def __init__(self, host: HostRoot, host_path: str, since_ns: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 resume: tuple[int, int] | None = None) -> None:
        self.host = host
        self.host_path = host_path
        self.since_ns = since_ns
        self.max_bytes = max_bytes
        self.bytes_read = 0
        self.files: list[str] = []
        self.truncated = False  # the budget ran out before the window's start
        self._fd = _open_log(host, host_path)
        st = os.fstat(self._fd)
        self._ino, self._size = st.st_ino, st.st_size
        self._stop = resume[1] if resume is not None and resume[0] == self._ino and resume[1] <= self._size else 0
        self.resume_point: tuple[int, int] = (self._ino, self._stop)

    def chunks(self) -> Iterator[list[Record]]:
        fd: int | None = self._fd
        try:
            self.files.append(self.host_path)
            at_start = yield from self._back(self._fd, self._size, self._stop, first=True)
            if not at_start or self._stop:
                return  # the window started in this file, or the rest was read by an earlier scan
            try:
                fd = _open_log(self.host, f"{self.host_path}.1")
            except LogUnreadable:
                return
            self.files.append(f"{self.host_path}.1")
            try:
                yield from self._back(fd, os.fstat(fd).st_size, 0, first=False)
            finally:
                os.close(fd)
        finally:
            os.close(self._fd)

    def _back(self, fd: int, end: int, stop: int, first: bool) -> Generator[list[Record], None, bool]:
        """Chunks from `end` back to `stop` (a line start) or to a record older than the window.

        Returns whether the file's start (or `stop`) was reached. Only whole lines count: the last
        line may still be being written, and a line longer than any record is dropped, not kept.
        """
        pos = end
        carry = b""  # the cut first line of the chunk read last: its start is in the next chunk back
        cut = True  # the next chunk's end is not a line's end (the file's end, or an overlong line)
        while pos > stop:
            budget = self.max_bytes - self.bytes_read
            if budget <= 0:
                self.truncated = True
                return False
            size = min(CHUNK, pos - stop, budget)
            pos -= size
            data = os.pread(fd, size, pos)
            self.bytes_read += len(data)
            if len(data) < size:  # truncated under us: what was read is what there is
                return False
            buf = data + carry
            carry = b""
            if cut:
                nl = buf.rfind(b"\n")
                if nl < 0:
                    continue
                if first:
                    first = False
                    self.resume_point = (self._ino, pos + nl + 1)
                buf, cut = buf[: nl + 1], False
            lines = buf.split(b"\n")
            if pos > stop:
                carry, lines = lines[0], lines[1:]
                if len(carry) > MAX_LINE:
                    carry, cut = b"", True
            chunk = [r for r in (parse_line(line) for line in lines) if r is not None]
            yield chunk
            if chunk and chunk[0].time_ns < self.since_ns:
                return False
        return True


def read_tail(host: HostRoot, host_path: str, since_ns: int, max_bytes: int = DEFAULT_MAX_BYTES) -> TailRead:
    """Every event at the end of the log back to `since_ns` (and of its first rotation, when the
    window reaches back into it), within `max_bytes`."""
    scan = TailScan(host, host_path, since_ns, max_bytes)
    parts = list(scan.chunks())
    return TailRead(group_events(r for part in reversed(parts) for r in part), scan.bytes_read, scan.files,
                    scan.truncated)
