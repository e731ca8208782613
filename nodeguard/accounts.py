"""Users and groups as the *host* knows them: parsed from the host root's /etc files.

Never `pwd`/`grp`: those answer for the agent's own container, whose docker group (if any) has
nothing to do with the node's. Malformed lines are kept aside as problems, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def _split_members(field_text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in field_text.split(",") if m.strip())


def parse_passwd(text: str, problems: list[str] | None = None) -> dict[str, UserEntry]:
    users: dict[str, UserEntry] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        uid, gid = (as_id(parts[2]), as_id(parts[3])) if len(parts) >= 4 else (None, None)
        if uid is None or gid is None:
            if problems is not None:
                problems.append(f"/etc/passwd:{lineno}: malformed entry")
            continue
        users.setdefault(parts[0], UserEntry(parts[0], uid, gid, lineno))
    return users


def parse_group(text: str, problems: list[str] | None = None) -> dict[str, GroupEntry]:
    groups: dict[str, GroupEntry] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        gid = as_id(parts[2]) if len(parts) >= 4 else None
        if gid is None:
            if problems is not None:
                problems.append(f"/etc/group:{lineno}: malformed entry")
            continue
        # shadow-utils uses the first entry of a name; later duplicates are ignored but reported.
        if parts[0] in groups:
            if problems is not None:
                problems.append(f"/etc/group:{lineno}: duplicate group {parts[0]!r}")
            continue
        groups[parts[0]] = GroupEntry(parts[0], gid, _split_members(":".join(parts[3:])), lineno)
    return groups


def parse_gshadow(text: str, problems: list[str] | None = None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 4:
            if problems is not None:
                problems.append(f"/etc/gshadow:{lineno}: malformed entry")
            continue
        out.setdefault(parts[0], (_split_members(parts[2]), _split_members(":".join(parts[3:]))))
    return out


def load_accounts(host: HostRoot) -> AccountDB:
    db = AccountDB()
    for path, parse, attr in (
        ("/etc/passwd", parse_passwd, "users"),
        ("/etc/group", parse_group, "groups"),
        ("/etc/gshadow", parse_gshadow, "gshadow"),
    ):
        try:
            text = host.read_text(path, limit=ACCOUNT_FILE_LIMIT)
        except FileNotFoundError:
            db.missing.append(path)
            continue
        except OSError as exc:
            db.problems.append(f"{path}: cannot read: {exc}")
            continue
        setattr(db, attr, parse(text, db.problems))
    return db
