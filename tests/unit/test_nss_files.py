"""glibc's reading of group/passwd/gshadow, pinned without root. Every expectation below was first seen
from the real glibc 2.36 in a chroot (test_nss_files_oracle.py runs that comparison for real)."""

from __future__ import annotations

import pytest

from nodeguard.formats import nss_files as nss


def grants(text: str, group: str = "docker") -> dict[str, set[int]]:
    """name -> gids initgroups gives it from lines whose gid is `group`'s."""
    entries, _ = nss.group_lines(text)
    gids = nss.docker_gids(entries, group)
    out: dict[str, set[int]] = {}
    for e in entries:
        if e.init_gid in gids:
            for m in e.init_members:
                out.setdefault(m, set()).add(e.init_gid)
    return out


@pytest.mark.parametrize(("text", "members"), [
    ("docker:x:990:a\nother:x:990:mallory\n", {"a", "mallory"}),
    ("docker:x:990:\ndocker:x:991:mallory\n", {"mallory"}),
    ("  docker:x:990:mallory\n", {"mallory"}),
    ("docker:x:990:a\fmallory\n", {"a\fmallory"}),  # form feed: no line end, no separator
    ("docker:x:990:a,\vmallory\n", {"a", "mallory"}),  # leading blanks of an element go
    ("docker:x:990:mallory \n", {"mallory "}),  # trailing ones stay
    ("docker:x:990:a\u2028mallory\x1c\x85\n", {"a\u2028mallory\x1c\x85"}),
    ("docker:x:990:\n#docker:x:990:mallory\n", {"mallory"}),  # initgroups reads comments
    ("docker:x:990:\nold:x:+0990:mallory\n", {"mallory"}),  # strtoul: sign, zeros
    ("docker:x:990:\nold:x:990 :mallory\n", set()),  # anything after the digits rejects
    ("docker:x:990:\nold:x:-1:mallory\nbig:x:4294967296:mallory\n", set()),
    ("docker:x:990:a\0,mallory\n", {"a"}),  # NUL ends the content
    ("docker:x:990:\nold:x:990:m,x:y,n\n", {"m", "n"}),  # initgroups drops only the element with ":"
])
def test_membership_as_initgroups_computes_it(text: str, members: set[str]) -> None:
    assert set(grants(text)) == members


def test_getgrent_drops_a_member_list_with_a_colon_initgroups_does_not() -> None:
    entries, rejected = nss.group_lines("docker:x:990:m,x:y\n")
    assert rejected == [1] and entries[0].init_members == ("m",)
    assert nss.docker_gids(entries, "docker") == set()  # getgrnam does not see it: no docker gid


def test_a_blank_led_last_line_without_newline_is_garbled_like_glibc_does() -> None:
    # memmove without the NUL: the last k characters come twice (k = number of blanks).
    entries, _ = nss.group_lines("root:x:0:\n docker:x:99")
    assert (entries[1].name, entries[1].gid, entries[1].init_gid) == ("docker", 999, 99)
    users, _ = nss.passwd_lines("a:x:1:2:::\n  b:x:1:2")
    assert users[1].gid == 2  # "b:x:1:2" + ":2": a gecos field of "2"


def test_passwd_fields_as_glibc_counts_them() -> None:
    users, rejected = nss.passwd_lines("a:x:1:2\nb:x:1:2:g:d:s:extra\nc:x::2\nd:x:1: 990:::\n #e:x:1:990\n")
    assert [(u.name, u.gid) for u in users] == [("a", 2), ("d", 990)]
    assert rejected == [2, 3]


def test_ids_never_meet_pythons_int_limit() -> None:
    assert nss.strtoul_id("9" * 5000) is None
    assert nss.strtoul_id("0" * 5000 + "7") == 7
    assert nss.strtoul_id("-0") == 0
    assert nss.strtoul_id("\v990") == 990


def test_group_passwords() -> None:
    assert [nss.is_usable_password(p) for p in ("", "x", "!", "!$6$a$b", "*", "$6$a$b", "plain")] == [
        False, False, False, False, False, True, True]


def test_drop_members_keeps_every_other_byte() -> None:
    line = "  #docker:x:990: a,\vmallory,mallory ,b\0,mallory"
    assert nss.drop_members(line, frozenset({"mallory"}), 3, limit=3) == "  #docker:x:990: a,mallory ,b\0,mallory"
