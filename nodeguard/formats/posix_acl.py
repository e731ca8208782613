"""POSIX access ACLs in the kernel's xattr form: parse, drop entries, recompute the mask like setfacl.

Pure bytes in, bytes out: no I/O here (the controls read and write `system.posix_acl_access`
through HostRoot). Entries that are kept are copied as their original 8-byte records, so an
admin's sanctioned entry stays byte-identical when a forbidden one next to it is removed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_HEADER = struct.Struct("<I")
_RECORD = struct.Struct("<HHI")  # tag, perm, id
_TAGS = {0x01: "user_obj", 0x02: "user", 0x04: "group_obj", 0x08: "group", 0x10: "mask", 0x20: "other"}
_MASK_TAG = 0x10
# The group class (acl(5)): the entries the mask limits, and whose union setfacl writes as the mask.
_GROUP_CLASS = frozenset({"user", "group_obj", "group"})


@dataclass(frozen=True)
class AclEntry:
    tag: str
    qualifier: int | None
    perms: int  # rwx bits

    def render(self, names: dict[int, str]) -> str:
        who = names.get(self.qualifier, str(self.qualifier)) if self.qualifier is not None else ""
        return f"{self.tag}:{who}:{perm_text(self.perms)}"


def perm_text(perms: int) -> str:
    return "".join(c if perms & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))


def perm_bits(text: str) -> int:
    """"rw-" -> 0o6."""
    return sum(b for c, b in (("r", 4), ("w", 2), ("x", 1)) if c in text)


def _records(blob: bytes) -> list[tuple[AclEntry, bytes]]:
    if len(blob) < _HEADER.size or (len(blob) - _HEADER.size) % _RECORD.size:
        raise ValueError(f"ACL xattr of {len(blob)} bytes is malformed")
    (version,) = _HEADER.unpack_from(blob, 0)
    if version != _ACL_VERSION:
        raise ValueError(f"unknown ACL version {version}")
    out = []
    for off in range(_HEADER.size, len(blob), _RECORD.size):
        tag, perm, qual = _RECORD.unpack_from(blob, off)
        name = _TAGS.get(tag, f"tag{tag:#x}")
        entry = AclEntry(name, qual if name in ("user", "group") else None, perm & 0o7)
        out.append((entry, blob[off:off + _RECORD.size]))
    return out


def parse_acl(blob: bytes) -> list[AclEntry]:
    """The kernel's xattr form: a u32 version, then (u16 tag, u16 perm, u32 id) entries."""
    return [entry for entry, _ in _records(blob)]


def group_class_union(entries: list[AclEntry]) -> int:
    """The mask `setfacl` computes: the union of named users, the owning group and named groups."""
    union = 0
    for e in entries:
        if e.tag in _GROUP_CLASS:
            union |= e.perms
    return union


@dataclass(frozen=True)
class AclEdit:
    """The result of dropping entries: the new xattr value, what went, and the mask written."""

    blob: bytes
    removed: list[AclEntry]
    mask: int | None  # None: the ACL has no mask entry


def drop_entries(blob: bytes, forbidden: Callable[[AclEntry], bool], *, mask_cap: int = 0o7) -> AclEdit:
    """Remove the entries `forbidden` selects, as `setfacl -x` would, and recompute the mask.

    Every other record is copied unchanged. The mask becomes the union of the group class
    (setfacl's rule), never wider than `mask_cap`: the mask is the file mode's group bits, and a
    revert must not widen the mode the policy allows. `setfacl -x` keeps the mask entry even when
    the last named entry goes, so this does too.
    """
    records = _records(blob)
    kept: list[tuple[AclEntry, bytes]] = []
    removed: list[AclEntry] = []
    for e, raw in records:
        # The base entries (owner, owning group, other, mask) are the mode itself: never removed.
        if e.tag in ("user", "group") and forbidden(e):
            removed.append(e)
        else:
            kept.append((e, raw))
    entries = [e for e, _ in kept]
    has_mask = any(e.tag == "mask" for e in entries)
    mask = group_class_union(entries) & mask_cap if has_mask else None
    out = bytearray(blob[:_HEADER.size])
    for e, raw in kept:
        if e.tag == "mask" and mask is not None:
            _, perm, qual = _RECORD.unpack(raw)
            out += _RECORD.pack(_MASK_TAG, (perm & ~0o7) | mask, qual)
        else:
            out += raw
    return AclEdit(bytes(out), removed, mask)
