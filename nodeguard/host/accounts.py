"""Users and groups as the *host* knows them: parsed from the host root's /etc files.

Never `pwd`/`grp`: those answer for the agent's own container, whose docker group (if any) has
nothing to do with the node's. Malformed lines are kept aside as problems, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeguard.formats import nss_files
from nodeguard.host import HostRoot

# /etc/group with 100,000 members on one line is ~1 MB; 32 MiB bounds a hostile file.
ACCOUNT_FILE_LIMIT = 32 * 1024 * 1024


def as_id(text: str) -> int | None:
    """A uid/gid written in ASCII digits, else None.

    Not str.isdigit(): "²" passes it and int() then raises; and a 5000-digit id would trip Python's
    int-from-string limit. Ids are 32-bit: ten digits at most.
    """
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return int(text)
    return None


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class UserEntry:
    name: str
    uid: int
    gid: int
    line: int


@dataclass
class AccountDB:
    users: dict[str, UserEntry] = field(default_factory=dict)
    groups: dict[str, GroupEntry] = field(default_factory=dict)
    # gshadow: group name -> (admins, members)
    gshadow: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # Every line as glibc reads it, raw names (surrogateescape): what membership is computed from.
    group_lines: list[nss_files.GroupLine] = field(default_factory=list)
    passwd_lines: list[nss_files.PasswdLine] = field(default_factory=list)
    gshadow_lines: list[nss_files.GshadowLine] = field(default_factory=list)

    def uid_of(self, name_or_id: str) -> int | None:
        if (as_number := as_id(name_or_id)) is not None:
            return as_number
        user = self.users.get(name_or_id)
        return user.uid if user else None

    def gid_of(self, name_or_id: str) -> int | None:
        if (as_number := as_id(name_or_id)) is not None:
            return as_number
        group = self.groups.get(name_or_id)
        return group.gid if group else None

    def user_name(self, uid: int) -> str:
        return next((u.name for u in self.users.values() if u.uid == uid), str(uid))

    def group_name(self, gid: int) -> str:
        return next((g.name for g in self.groups.values() if g.gid == gid), str(gid))


def display(name: str) -> str:
    """A name safe for events and JSON: bytes that are not UTF-8 shown as \\xNN (the raw name is kept
    beside it for the rewrite)."""
    if name.isascii():  # nearly every name: no copy
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _problems(path: str, rejected: list[int], problems: list[str] | None) -> None:
    if problems is not None:
        problems.extend(f"{path}:{n}: malformed entry (glibc ignores it)" for n in rejected)


def parse_passwd(text: str, problems: list[str] | None = None) -> dict[str, UserEntry]:
    """Users by name, as getpwnam answers: the first listed line of a name (glibc's parser, nss_files.py)."""
    return _users(*nss_files.passwd_lines(text), problems)


def _users(entries: list[nss_files.PasswdLine], rejected: list[int],
           problems: list[str] | None) -> dict[str, UserEntry]:
    _problems("/etc/passwd", rejected, problems)
    users: dict[str, UserEntry] = {}
    for e in entries:
        name = display(e.name)
        if name in users:
            if problems is not None:
                problems.append(f"/etc/passwd:{e.line}: duplicate user {name!r}")
            continue
        users[name] = UserEntry(name, e.uid, e.gid, e.line)
    return users


def parse_group(text: str, problems: list[str] | None = None) -> dict[str, GroupEntry]:
    """Groups by name, as getgrnam answers: the first listed line of a name. Membership is not read
    from here: initgroups reads every line (see nss_files.group_lines and the docker-group control)."""
    return _groups(*nss_files.group_lines(text), problems)


def _groups(entries: list[nss_files.GroupLine], rejected: list[int],
            problems: list[str] | None) -> dict[str, GroupEntry]:
    _problems("/etc/group", rejected, problems)
    groups: dict[str, GroupEntry] = {}
    for e in entries:
        if not e.listed:
            continue
        name = display(e.name)
        if name in groups:
            if problems is not None:
                problems.append(f"/etc/group:{e.line}: duplicate group {name!r}")
            continue
        groups[name] = GroupEntry(name, e.gid, tuple(display(m) for m in e.members), e.line)
    return groups


def parse_gshadow(text: str, problems: list[str] | None = None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return _gshadow(*nss_files.gshadow_lines(text), problems)


def _gshadow(entries: list[nss_files.GshadowLine], rejected: list[int],
             problems: list[str] | None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    _problems("/etc/gshadow", rejected, problems)
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for e in entries:
        out.setdefault(display(e.name), (tuple(display(a) for a in e.admins), tuple(display(m) for m in e.members)))
    return out


def load_accounts(host: HostRoot) -> AccountDB:
    db = AccountDB()
    for path in ("/etc/passwd", "/etc/group", "/etc/gshadow"):
        try:
            # surrogateescape: a byte that is not UTF-8 is kept as it is, so a name glibc compares
            # byte for byte can be found and removed exactly.
            text = host.read_bytes(path, limit=ACCOUNT_FILE_LIMIT).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            db.missing.append(path)
            continue
        except OSError as exc:
            db.problems.append(f"{path}: cannot read: {exc}")
            continue
        if path == "/etc/passwd":
            db.passwd_lines, rejected = nss_files.passwd_lines(text)
            db.users = _users(db.passwd_lines, rejected, db.problems)
        elif path == "/etc/group":
            db.group_lines, rejected = nss_files.group_lines(text)
            db.groups = _groups(db.group_lines, rejected, db.problems)
        else:
            db.gshadow_lines, rejected = nss_files.gshadow_lines(text)
            db.gshadow = _gshadow(db.gshadow_lines, rejected, db.problems)
    return db
