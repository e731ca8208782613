"""nodeguard's docker group == glibc's, with the real glibc (getent, id in a chroot) as the oracle.

The sandbox root is made a chroot holding this machine's getent and id and their libraries
(tests/support/glibc_oracle.py); nodeguard and glibc then read the very same bytes. For the eight
layouts of issue 17, and for a bounded set of hypothesis-generated files, the member set nodeguard
computes must equal the set glibc grants, and after nodeguard's removal glibc must grant nobody
outside the allow-list.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeguard.controls.docker_group import DockerGroupControl, DockerGroupObservation
from nodeguard.formats import nss_files
from nodeguard.host import HostRoot
from nodeguard.host.shadow import lock_group_password
from tests.support.glibc_oracle import GlibcOracle
from tests.support.rules import context, observe, policy_from
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.root

CTL = DockerGroupControl()
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nmallory:x:1500:1500::/home/mallory:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n"
POLICY = policy_from("spec: {controls: {dockerGroup: {allowedMembers: [alice]}}}")


@pytest.fixture
def oracle(sandbox: Sandbox) -> GlibcOracle:
    return GlibcOracle(sandbox.root)


def write(sb: Sandbox, group: bytes, passwd: bytes = PASSWD, gshadow: bytes | None = None) -> None:
    sb.path("/etc/group").write_bytes(group)
    sb.path("/etc/passwd").write_bytes(passwd)
    if gshadow is None:
        sb.path("/etc/gshadow").unlink(missing_ok=True)
    else:
        sb.path("/etc/gshadow").write_bytes(gshadow)


def candidates(*files: bytes) -> set[bytes]:
    """Every string glibc could take for a name: the pieces between ':', ',', NUL and newlines, without
    their leading blanks (a superset of every member list element)."""
    out = {b"mallory", b"alice"}
    for data in files:
        for piece in re.split(rb"[:,\n\0]", data):
            piece = piece.lstrip(b" \t\n\v\f\r")
            if piece and len(piece) < 200:
                out.add(piece)
    return out


def nodeguard_members(sb: Sandbox) -> set[bytes]:
    """Members and primary-group users as the docker-group control sees them, as raw bytes.

    gshadow members are left out here: glibc's initgroups does not read gshadow (newgrp does).
    """
    obs = observe(CTL, sb, POLICY)
    assert isinstance(obs, DockerGroupObservation)
    names = {m for m, sources in obs.members.items() if any(s.startswith("group") for s in sources)}
    names |= set(obs.primary)
    return {obs.raw_names.get(n, n).encode("utf-8", "surrogateescape") for n in names}


def glibc_members(oracle: GlibcOracle, group: bytes, passwd: bytes = PASSWD) -> set[bytes]:
    return oracle.group_members(b"docker", candidates(group, passwd))


def enforce(sb: Sandbox) -> None:
    """The docker-group control's own remediation of every failing member, as the agent runs it."""
    ctx = context(sb, POLICY)
    obs = CTL.observe(ctx)
    failing = [f for f in CTL.evaluate(obs, POLICY) if f.rule == "member-allowed" and f.status.value == "fail"]
    assert all(o.ok for o in CTL.remediate_many(ctx, failing, obs))


# The eight layouts of issue 17: in each, glibc puts mallory in the docker group.
LAYOUTS = {
    "second group with docker's gid": b"docker:x:990:alice\nmallory-grp:x:990:mallory\n",
    "second docker line": b"docker:x:990:alice\ndocker:x:991:mallory\n",
    "leading blank": b"  docker:x:990:mallory\n",
    "form feed": b"docker:x:990:alice\x0c\nx:x:1:\n\x0cmallory:x:5:\ndocker2:x:990:\x0cmallory\n",
    "vertical tab": b"docker:x:990:alice,\x0bmallory\n",
    "\\x1c": b"docker:x:990:alice\x1c,mallory\x1c\ndocker3:x:990:mallory\n",
    "NEL": b"docker:x:990:alice\xc2\x85,mallory\n",
    "U+2028": b"docker:x:990:alice\xe2\x80\xa8,mallory\n",
}


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_issue_layouts_agree_with_glibc_and_removal_reaches_every_line(
        sandbox: Sandbox, oracle: GlibcOracle, layout: str) -> None:
    group = LAYOUTS[layout]
    write(sandbox, group)
    glibc = glibc_members(oracle, group)
    assert b"mallory" in glibc, "the layout no longer shows the gap it was written for"
    assert b"(docker)" in oracle.id_groups(b"mallory")
    assert nodeguard_members(sandbox) == glibc
    # Enforce, as the agent does: every member outside the allow-list goes, from every line glibc reads.
    enforce(sandbox)
    after = sandbox.path("/etc/group").read_bytes()
    assert glibc_members(oracle, after) <= {b"alice"}
    assert b"(docker)" not in oracle.id_groups(b"mallory")
    assert nodeguard_members(sandbox) == glibc_members(oracle, after)


HIDDEN = {
    "commented line": b"docker:x:990:\n#docker:x:990:mallory\n",
    "blank-led comment": b"docker:x:990:\n \t#old:x:990:mallory\n",
    "gid spelled +0990": b"docker:x:990:\nold:x:+0990:mallory\n",
    "NUL ends the content": b"docker:x:990:alice\0,mallory\nz:x:990:mallory\0junk\n",
    "primary gid by passwd": b"docker:x:990:\n",
}


@pytest.mark.parametrize("layout", list(HIDDEN), ids=list(HIDDEN))
def test_lines_only_initgroups_reads_are_members_and_ambiguous(
        sandbox: Sandbox, oracle: GlibcOracle, layout: str) -> None:
    group = HIDDEN[layout]
    passwd = PASSWD + (b"svc:x:1600: 990::/:/bin/sh\n" if layout.startswith("primary") else b"")
    write(sandbox, group, passwd)
    glibc = glibc_members(oracle, group, passwd)
    assert glibc - {b"alice"}, "nobody outside the allow-list: the layout proves nothing"
    assert nodeguard_members(sandbox) == glibc
    found = CTL.evaluate(observe(CTL, sandbox, POLICY), POLICY)
    single = next(f for f in found if f.rule == "single-entry")
    assert single.status.value == ("pass" if layout.startswith("primary") else "fail")


def test_group_password_is_found_and_locked(sandbox: Sandbox, oracle: GlibcOracle) -> None:
    # gshadow with a hash wins (newgrp reads it); with no gshadow line, group's own field counts.
    write(sandbox, b"docker:$6$salt$hash:990:\n", gshadow=b"root:*::\ndocker:$6$x$y::\n")
    found = {f.rule: f for f in CTL.evaluate(observe(CTL, sandbox, POLICY), POLICY)}
    assert found["group-password"].status.value == "fail"
    assert found["group-password"].observed == ["/etc/gshadow:2", "/etc/group:1"]
    assert lock_group_password(HostRoot(sandbox.root), "docker") == ["/etc/group", "/etc/gshadow"]
    assert (oracle.getent("gshadow", "docker"), oracle.getent("group", "docker")) == (
        b"docker:!::\n", b"docker:!:990:\n")
    found = {f.rule: f for f in CTL.evaluate(observe(CTL, sandbox, POLICY), POLICY)}
    assert found["group-password"].status.value == "pass"


# -- fuzz: hypothesis builds group/passwd files from the pieces glibc treats specially -------------

NAMES = [b"docker", b"mallory", b"alice", b"other", b"#docker", b"+docker", b"", b"mal lory", b"mallory "]
GIDS = [b"990", b"991", b" 990", b"+990", b"0990", b"-0", b"-1", b"990 ", b"99999999999999999999", b"", b"4294967295",
        b"\x0b990"]
SEPS = [b",", b", ", b",\t", b",\x0c", b"\x0c", b"\x0b", b"\x1c", b"\xc2\x85", b"\xe2\x80\xa8", b"\r", b":", b"\0",
        b",,", b" "]
LEADS = [b"", b"", b"", b" ", b"\t", b"\x0b", b"#", b" #"]


@st.composite
def group_line(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(st.sampled_from([*NAMES[1:4], b"\xffmallory", b"mallory\xff"]), max_size=3))
    body = b"".join(m + draw(st.sampled_from(SEPS)) for m in members)
    password = draw(st.sampled_from([b"x", b"", b"!"]))
    return (draw(st.sampled_from(LEADS)) + draw(st.sampled_from(NAMES)) + b":" + password
            + b":" + draw(st.sampled_from(GIDS)) + draw(st.sampled_from([b":", b":", b""])) + body)


@st.composite
def passwd_line(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([b"mallory", b"svc", b"alice", b"#svc", b" svc2", b"svc3 "]))
    tail = draw(st.sampled_from([b"::/:/bin/sh", b"", b":", b"::/:/bin/sh:extra"]))
    return draw(st.sampled_from(LEADS[:5])) + name + b":x:1700:" + draw(st.sampled_from(GIDS)) + tail


def _files() -> st.SearchStrategy[tuple[bytes, bytes]]:
    lines = st.lists(group_line(), min_size=1, max_size=6)
    return st.tuples(lines.map(lambda ls: b"\n".join(ls) + b"\n"),
                     st.lists(passwd_line(), max_size=3).map(lambda ls: PASSWD + b"\n".join(ls)))


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, GlibcOracle]]:
    # One chroot for every example: building it costs more than a hundred getent runs.
    from tests.support.sandbox import make_sandbox

    root = Path(tmp_path_factory.mktemp("nss-oracle"))
    sb = make_sandbox(root)
    yield sb, GlibcOracle(root)


# Bounded in CI (each example runs getent three times in the chroot); raise it locally to hunt longer.
FUZZ_EXAMPLES = int(os.environ.get("NODEGUARD_NSS_FUZZ_EXAMPLES", "150"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(files=_files())
def test_fuzzed_files_agree_with_glibc(fuzz_root: tuple[Sandbox, GlibcOracle], files: tuple[bytes, bytes]) -> None:
    sb, oracle = fuzz_root
    group, passwd = files
    write(sb, group, passwd)
    glibc = glibc_members(oracle, group, passwd)
    assert nodeguard_members(sb) == glibc, (group, passwd)
    # Entry by entry: what getgrent returns is what nodeguard's listed lines are.
    entries, _ = nss_files.group_lines(group.decode("utf-8", "surrogateescape"))
    ours = [(e.name.encode("utf-8", "surrogateescape"), tuple(m.encode("utf-8", "surrogateescape") for m in e.members))
            for e in entries if e.listed]
    assert ours == [(g.name, g.members) for g in oracle.groups()]
    users, _ = nss_files.passwd_lines(passwd.decode("utf-8", "surrogateescape"))
    assert [(u.name.encode(), u.gid) for u in users] == [(n, int(g or 0)) for n, _u, g in oracle.passwd()]
    if glibc - {b"alice"}:
        enforce(sb)
        after = sb.path("/etc/group").read_bytes()
        # Primary-group users stay (report only); every supplementary grant outside the list is gone.
        primary = {n for n, _u, g in oracle.passwd() if g and int(g) in {int(x.gid) for x in oracle.groups()
                                                                        if x.name == b"docker" and x.gid}}
        assert glibc_members(oracle, after, passwd) - {b"alice"} <= primary


GSHADOW_ODD = (b"root:*::\n docker:$6$x$y:adm1, adm2:m1,\x0bm2\n#docker:x::m3\ndocker:x::m4:\n"
               b"docker\ndocker:!:a\ndocker:!:a:b:c\n\x0cdocker:!::m5 ,m6\0junk\nlast:x::z")


def test_gshadow_lines_are_what_getsgent_returns(sandbox: Sandbox, oracle: GlibcOracle) -> None:
    write(sandbox, b"docker:x:990:\n", gshadow=GSHADOW_ODD)
    entries, _ = nss_files.gshadow_lines(GSHADOW_ODD.decode("utf-8", "surrogateescape"))
    ours = [(e.name.encode(), e.password.encode(), tuple(a.encode() for a in e.admins),
             tuple(m.encode() for m in e.members)) for e in entries]
    assert ours == oracle.gshadow()
