"""/etc/group, /etc/passwd and /etc/gshadow lines read exactly as glibc 2.36's nss_files reads them.

What counts is what the *consumer* makes of the file, not what looks tidy. Checked against the real
glibc in a chroot (tests/unit/test_nss_files_oracle.py); the rules that matter:

- Only '\\n' ends a line. Form feed, vertical tab, \\x1c, NEL and U+2028 are ordinary bytes (Python's
  `str.splitlines()` splits on all of them). A NUL ends the line's *content*; the rest is ignored.
- Two readers, two views. getgrnam/getgrent/getpwnam (nss_readline) skip leading blanks and then
  skip empty and `#` lines. initgroups (what a login, sshd or `id` uses to give supplementary groups)
  parses every line raw: `#docker:x:999:mallory` or `  x:x:999:mallory` still grants gid 999.
- Numbers go through strtoul: leading blanks, a sign and leading zeros are accepted (`+0999` is 999),
  anything after the digits but the colon rejects the line, and a value beyond 32 bits rejects it.
- Members are split on ',' only; each loses its leading blanks but keeps trailing ones
  (`mallory ` is not `mallory`); empty ones vanish. A ':' among the members makes getgrent drop
  the whole line, while initgroups drops only the element that holds it (`m,x:y` grants m).

Pure functions on text (decoded with surrogateescape so that every byte survives); no I/O here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

# C's isspace() in the C locale: the only "blanks" glibc skips.
C_SPACE = " \t\n\v\f\r"
_ID_MAX = 0xFFFFFFFF
# (gid_t) -1 is "no group": glibc's initgroups never hands it out.
NO_ID = 0xFFFFFFFF


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) split on '\\n' only, like fgets/getline; a last line without '\\n' counts
    (and is the only one for which `ended` below is False)."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    yield from enumerate(parts, 1)


def _ended(text: str, number: int, count: int) -> bool:
    return number < count or text.endswith("\n")


def strtoul_id(text: str) -> int | None:
    """An id field as glibc's INT_FIELD reads it (strtoul, base 10, 32-bit), else None (line rejected).

    Never int() on the whole text: a 5,000-digit field must not meet Python's int-from-string limit.
    """
    if len(text) < 10 and text.isascii() and text.isdigit():
        return int(text)  # the common case: plain digits, surely within 32 bits
    s = text.lstrip(C_SPACE)
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if not s or not (s.isascii() and s.isdigit()):
        return None
    s = s.lstrip("0") or "0"
    if len(s) > 10:
        return None
    value = int(s)
    if negative and value:
        return None  # strtoul wraps "-5" to 2**64-5: beyond 32 bits, the line is rejected
    return value if value <= _ID_MAX else None


def parse_list(text: str) -> tuple[str, ...]:
    """A comma list as glibc's parse_list splits it: leading blanks dropped, empty elements skipped."""
    out = []
    for element in text.split(","):
        element = element.lstrip(C_SPACE)
        if element:
            out.append(element)
    return tuple(out)


def _maybe_null(parts: list[str], index: int) -> int | None:
    """glibc's INT_FIELD_MAYBE_NULL (NIS compat names): an empty field is 0 when a ':' follows it,
    and rejects the line when the line ends there."""
    if parts[index] == "":
        return 0 if len(parts) > index + 1 else None
    return strtoul_id(parts[index])


def _content(line: str) -> str:
    return line.split("\0", 1)[0]


@dataclass(frozen=True)
class GroupLine:
    name: str
    password: str
    gid: int
    members: tuple[str, ...]
    line: int
    # False for a line getgrnam/getgrent never return (a comment, or one that starts with a blank):
    # initgroups still reads it.
    listed: bool
    # What initgroups reads from the same line (the raw line, blanks and all): the gid it grants
    # and to whom. None when initgroups rejects the line. Equal to gid/members but for a blank-led
    # line that glibc's readline garbles (see _listed).
    init_gid: int | None = None
    init_members: tuple[str, ...] = ()


@dataclass(frozen=True)
class PasswdLine:
    name: str
    uid: int
    gid: int
    line: int


@dataclass(frozen=True)
class GshadowLine:
    name: str
    password: str
    admins: tuple[str, ...]
    members: tuple[str, ...]
    line: int


def parse_group_line(line: str, number: int = 0, listed: bool = True) -> GroupLine | None:
    """One line through _nss_files_parse_grent; None when glibc rejects it."""
    parts = _content(line).split(":", 3)
    name = parts[0]
    compat = name[:1] in ("+", "-")  # NIS compat names: their fields may be empty
    if compat and (len(parts) == 1 or (len(parts) == 2 and parts[1] == "")):
        return GroupLine(name, "", 0, (), number, listed)
    if len(parts) < 3:
        return None
    gid = _maybe_null(parts, 2) if compat else strtoul_id(parts[2])
    if gid is None:
        return None
    members = parts[3] if len(parts) == 4 else ""
    if ":" not in members:
        return GroupLine(name, parts[1], gid, parse_list(members), number, listed)
    if listed:
        return None  # getgrent/getgrnam drop the whole line
    # initgroups keeps the line and skips only the elements holding a ':' (checked with the real
    # glibc: `m,x:y` still grants m the gid).
    return GroupLine(name, parts[1], gid, tuple(m for m in parse_list(members) if ":" not in m), number, listed)


def _listed(line: str, ended: bool = True) -> str | None:
    """The line as nss_readline hands it to the parser (leading blanks gone), or None when skipped.

    glibc 2.36 moves the rest of the line over the blanks with memmove(buf, p, strlen(p)), without
    the terminating NUL: when no '\\n' is moved along (the file's last line has none, or a NUL
    comes first) the line's last k characters are left behind and read again, k being the number
    of blanks. ` x:x:5:m` at the end of a file is read as `x:x:5:mm` (checked with the real glibc).
    """
    stripped = line.lstrip(C_SPACE)
    if stripped == "" or stripped[0] in ("#", "\0"):
        return None
    k = len(line) - len(stripped)
    if k and ("\0" in line or not ended):
        content = line.split("\0", 1)[0]
        return content[k:] + content[-k:]
    return stripped


def _read_lines(text: str) -> Iterator[tuple[int, str, str | None]]:
    """(number, line, what nss_readline hands the parser or None when it skips the line)."""
    count = text.count("\n") + (not text.endswith("\n"))
    for number, line in lines(text):
        yield number, line, _listed(line, _ended(text, number, count))


def group_lines(text: str) -> tuple[list[GroupLine], list[int]]:
    """Every line initgroups would parse (with `listed` telling getgrent's view), and rejected line numbers."""
    out: list[GroupLine] = []
    rejected: list[int] = []
    for number, line, shown in _read_lines(text):
        # getgrent parses the line without its leading blanks, initgroups with them: the gid and the
        # members come out the same, and the name getgrnam matches is the stripped one.
        raw = parse_group_line(line, number, listed=False)
        if shown is not None and shown == line and raw is not None:
            # The same text read twice: getgrent's entry is initgroups' (the member names shared,
            # not split again), but for the whole line it drops when a ':' is among the members.
            entry = None if _content(line).count(":") > 3 else dataclasses.replace(raw, listed=True)
        else:
            entry = parse_group_line(shown, number, listed=True) if shown is not None else raw
        if entry is None and shown is not None:
            rejected.append(number)
        if entry is None:
            entry = raw  # getgrent rejects it, initgroups may not
        if entry is None:
            continue
        out.append(dataclasses.replace(entry, init_gid=raw.gid if raw else None,
                                       init_members=raw.members if raw else ()))
    return out, rejected


def passwd_lines(text: str) -> tuple[list[PasswdLine], list[int]]:
    """Entries getpwent returns (blank-led and `#` lines skipped), and rejected line numbers."""
    out: list[PasswdLine] = []
    rejected: list[int] = []
    for number, _, line in _read_lines(text):
        if line is None:
            continue
        parts = _content(line).split(":")
        name = parts[0]
        compat = name[:1] in ("+", "-")
        if compat and (len(parts) == 1 or (len(parts) == 2 and parts[1] == "")):
            continue  # "+" alone: a NIS marker, no uid/gid of its own
        if len(parts) < 4 or len(parts) > 7:
            rejected.append(number)
            continue
        uid = _maybe_null(parts, 2) if compat else strtoul_id(parts[2])
        gid = _maybe_null(parts, 3) if compat else strtoul_id(parts[3])
        if uid is None or gid is None:
            rejected.append(number)
            continue
        out.append(PasswdLine(name, uid, gid, number))
    return out, rejected


def gshadow_lines(text: str) -> tuple[list[GshadowLine], list[int]]:
    """Entries getsgent returns (what newgrp and gpasswd see), and rejected line numbers."""
    out: list[GshadowLine] = []
    rejected: list[int] = []
    for number, _, line in _read_lines(text):
        if line is None:
            continue
        parts = _content(line).split(":")
        if len(parts) > 4:
            rejected.append(number)
            continue
        parts += [""] * (4 - len(parts))
        out.append(GshadowLine(parts[0], parts[1], parse_list(parts[2]), parse_list(parts[3]), number))
    return out, rejected


def is_usable_password(password: str) -> bool:
    """A group password someone could type at `newgrp`: not empty, not locked (`!`/`*`), not `x`."""
    return password not in ("", "x") and password[0] not in ("!", "*")


def docker_gids(groups: list[GroupLine], group: str) -> set[int]:
    """Every gid getgrnam could answer for `group` (each listed line of that name), or the number itself."""
    gids = {g.gid for g in groups if g.listed and g.name == group}
    as_number = strtoul_id(group) if group.isascii() and group.isdigit() else None
    if as_number is not None and not any(g.listed and g.name == group for g in groups):
        gids.add(as_number)
    gids.discard(NO_ID)
    return gids


def drop_members(line: str, gone: frozenset[str], field: int, *, limit: int | None = None) -> str:
    """`line` with every element of comma-list field `field` whose glibc value is in `gone` removed.

    Only the NUL-free content is edited; bytes after a NUL (which glibc ignores) stay as they were.
    `limit`: split at most this many colons (the group members field runs to the end of the line).
    """
    content, nul, rest = line.partition("\0")
    parts = content.split(":", limit) if limit is not None else content.split(":")
    if len(parts) <= field:
        return line
    elements = parts[field].split(",")
    kept = [e for e in elements if e.lstrip(C_SPACE) not in gone]
    if len(kept) == len(elements):
        return line
    parts[field] = ",".join(kept)
    return ":".join(parts) + nul + rest


def set_password(line: str, password: str) -> str:
    content, nul, rest = line.partition("\0")
    parts = content.split(":")
    if len(parts) < 2:
        return line
    parts[1] = password
    return ":".join(parts) + nul + rest
