"""The Linux audit log's text, parsed: lines -> records -> events. Pure: no I/O, no clock.

auditd writes one record per line, `type=T msg=audit(SEC.MS:SERIAL): k=v k=v ...`; the records of
one kernel event (SYSCALL, CWD, PATH..., PROCTITLE) share `SEC.MS:SERIAL` but may be interleaved
with other events' records. `log_format = ENRICHED` appends, after a 0x1d byte, the same ids
translated (`AUID="alice" SYSCALL=fchmodat`); RAW has only the numbers. String fields the kernel
finds unsafe (a space, a quote, a control byte, a non-ASCII byte) are hex-encoded instead of
quoted; PROCTITLE is argv joined by NULs, always hex.

The log is hostile input (anyone who can make a syscall chooses the names in it): a line longer
than any the kernel writes is skipped, not parsed; a malformed one is skipped; nothing here
raises on any bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

# The kernel caps one record at 8970 bytes (MAX_AUDIT_MESSAGE_LENGTH); enrichment can double it.
MAX_LINE = 32 * 1024
ENRICHED_SEP = b"\x1d"
# The fields whose values are strings the kernel may hex-encode (audit_log_untrustedstring).
STRING_FIELDS = frozenset({"name", "comm", "exe", "proctitle", "cwd", "key", "path", "cmd", "data"})
UNSET_ID = 4294967295  # (uid_t)-1: auid of a process no login session ever set

_HEADER = re.compile(rb"^type=([A-Z0-9_]+) msg=audit\((\d{1,12})\.(\d{1,3}):(\d{1,20})\):")
# key=value where value is "quoted", 'quoted' (user-space records) or a bare token.
_FIELD = re.compile(rb"""([A-Za-z_][A-Za-z0-9_-]{0,63})=("[^"]*"|'[^']*'|[^ ]*)""")
_HEX = re.compile(rb"^(?:[0-9A-Fa-f]{2})+$")


@dataclass(frozen=True)
class Record:
    """One line: its type and the event it belongs to; its fields are parsed when first asked for
    (a look-up reads thousands of lines and needs the fields of a handful)."""

    type: str
    sec: int
    ms: int
    serial: int
    raw: bytes = field(repr=False)  # the fields' text (after the header, before the 0x1d)
    extra: bytes = field(default=b"", repr=False)  # the ENRICHED part

    @cached_property
    def fields(self) -> dict[str, str]:
        """Raw field text by name (quotes kept); the first occurrence wins."""
        return _fields(self.raw)

    @cached_property
    def enriched(self) -> dict[str, str]:
        return _fields(self.extra)

    @property
    def event_key(self) -> tuple[int, int, int]:
        return (self.sec, self.ms, self.serial)

    @property
    def time_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.ms * 1_000_000


def _fields(text: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _FIELD.findall(text):
        out.setdefault(k.decode("ascii"), v.decode("utf-8", "replace"))
    return out


@dataclass
class AuditEvent:
    """The records of one kernel event, gathered by (time, serial)."""

    sec: int
    ms: int
    serial: int
    records: list[Record] = field(default_factory=list)

    @property
    def time_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.ms * 1_000_000

    @property
    def id(self) -> str:
        """What `ausearch --event` and the log itself call this event."""
        return f"{self.sec}.{self.ms:03d}:{self.serial}"

    def first(self, rtype: str) -> Record | None:
        return next((r for r in self.records if r.type == rtype), None)

    def all(self, rtype: str) -> list[Record]:
        return [r for r in self.records if r.type == rtype]


def parse_line(line: bytes) -> Record | None:
    """One record, or None for a line that is not one (blank, truncated, too long, garbage)."""
    if len(line) > MAX_LINE:
        return None
    raw, _, extra = line.rstrip(b"\r\n").partition(ENRICHED_SEP)
    m = _HEADER.match(raw)
    if m is None:
        return None
    return Record(m.group(1).decode("ascii"), int(m.group(2)), int(m.group(3).ljust(3, b"0")), int(m.group(4)),
                  raw[m.end():], extra)


def decode_string(value: str | None, *, nul_as: str = "\x00") -> str | None:
    """A string field as the process wrote it: "quoted" -> as is, HEX -> decoded, (null)/(none) -> None."""
    if value is None or value in ("(null)", "(none)", "?", ""):
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    raw = value.encode("ascii", "replace")
    if _HEX.match(raw):
        text = bytes.fromhex(value).decode("utf-8", "replace")
        return text.replace("\x00", nul_as)
    return value


def decode_keys(value: str | None) -> list[str]:
    """The rule keys: several are joined by 0x01 (and then the whole field is hex)."""
    text = decode_string(value)
    return [k for k in text.split("\x01") if k] if text else []


def as_int(value: str | None, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip('"'), base)
    except ValueError:
        return None


EventKey = tuple[int, int, int]


def gather(by_key: dict[EventKey, AuditEvent], records: Iterable[Record]) -> dict[EventKey, AuditEvent]:
    """Add records to their events in `by_key` (created in the order first seen); returns the
    events these records touched (a record read later may complete an event read earlier)."""
    touched: dict[EventKey, AuditEvent] = {}
    for r in records:
        ev = by_key.get(r.event_key)
        if ev is None:
            ev = by_key[r.event_key] = AuditEvent(r.sec, r.ms, r.serial)
        ev.records.append(r)
        touched[r.event_key] = ev
    return touched


def group_events(records: Iterable[Record]) -> list[AuditEvent]:
    """Records gathered by event, in the order each event first appeared."""
    by_key: dict[EventKey, AuditEvent] = {}
    gather(by_key, records)
    return list(by_key.values())


def parse_text(data: bytes) -> list[AuditEvent]:
    """Every event in a chunk of log text (a partial first or last line is skipped)."""
    records = (parse_line(line) for line in data.split(b"\n"))
    return group_events(r for r in records if r is not None)
