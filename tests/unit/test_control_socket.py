"""socket: owner, mode and the POSIX ACL of docker.sock, read from a real socket and a real setfacl xattr."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nodeguard.controls.socket import ACL_XATTR, AclEntry, SocketControl, SocketObservation, parse_acl
from nodeguard.host import FileStat
from nodeguard.structs import Finding, Status
from tests.support.rules import one, policy_from, run
from tests.support.sandbox import BOB_UID, DOCKER_GID, Sandbox, require_root, require_tool

CTL = SocketControl()
SOCK = "/var/run/docker.sock"  # the policy's path; /var/run -> /run inside the sandbox


@pytest.fixture
def sock(sandbox: Sandbox) -> Iterator[Path]:
    """A real listening unix socket where dockerd's would be, root:docker 0660 as dockerd makes it."""
    require_root()
    path = sandbox.path("/run/docker.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        s.listen(1)
        os.chown(path, 0, DOCKER_GID)
        path.chmod(0o660)
        yield path
    finally:
        s.close()


def setfacl(path: Path, *spec: str) -> None:
    require_tool("setfacl")
    subprocess.run(["setfacl", *spec, str(path)], check=True, capture_output=True)


def statuses(found: list[Finding]) -> dict[str, Status]:
    return {f.rule: f.status for f in found}


@pytest.mark.root
def test_dockerds_defaults_pass(sandbox: Sandbox, sock: Path) -> None:
    found = run(CTL, sandbox)
    assert statuses(found) == {"socket-owner": Status.PASS, "socket-mode": Status.PASS, "socket-acl": Status.PASS}
    assert one(found, "socket-owner").observed == "root:docker"
    assert one(found, "socket-owner").path == SOCK


@pytest.mark.root
def test_wrong_owner_fails(sandbox: Sandbox, sock: Path) -> None:
    os.chown(sock, BOB_UID, 0)
    f = one(run(CTL, sandbox), "socket-owner")
    assert (f.status, f.observed, f.expected, f.cis) == (Status.FAIL, "bob:root", "root:docker", "3.15")


@pytest.mark.root
@pytest.mark.parametrize(("mode", "status"), [(0o660, Status.PASS), (0o600, Status.PASS), (0o666, Status.FAIL),
                                              (0o662, Status.FAIL), (0o670, Status.FAIL), (0o2660, Status.FAIL)])
def test_mode_is_compared_as_bits(sandbox: Sandbox, sock: Path, mode: int, status: Status) -> None:
    sock.chmod(mode)
    f = one(run(CTL, sandbox), "socket-mode")
    assert (f.status, f.observed, f.expected) == (status, f"{mode:04o}", "at most 0660")


@pytest.mark.root
def test_the_socket_group_is_resolved_on_the_host(sandbox: Sandbox, sock: Path) -> None:
    # The host's docker group has another gid than the socket's: a fail, whatever this machine's group file says.
    sandbox.write("/etc/group", sandbox.read("/etc/group").replace(f"docker:x:{DOCKER_GID}:", "docker:x:4321:"))
    f = one(run(CTL, sandbox), "socket-owner")
    assert (f.status, f.observed) == (Status.FAIL, f"root:{DOCKER_GID}")


@pytest.mark.root
def test_a_missing_group_on_the_host_fails_the_owner_rule(sandbox: Sandbox, sock: Path) -> None:
    f = one(run(CTL, sandbox, policy_from("spec: {controls: {socket: {group: nosuchgroup}}}")), "socket-owner")
    assert f.status is Status.FAIL
    assert "does not exist" in f.message


def test_no_socket_skips_every_rule(sandbox: Sandbox) -> None:
    found = run(CTL, sandbox)
    assert {f.status for f in found} == {Status.SKIP}
    assert len(found) == len(CTL.rules)


def test_a_regular_file_in_the_sockets_place_fails(sandbox: Sandbox) -> None:
    sandbox.write("/run/docker.sock", "", 0o660)
    found = run(CTL, sandbox)
    assert {f.status for f in found} == {Status.FAIL}
    assert one(found, "socket-mode").observed == "file"


# -- ACLs ------------------------------------------------------------------------------------------


def test_parse_acl_of_a_real_setfacl_xattr(sandbox: Sandbox) -> None:
    plain = sandbox.write("/etc/acl-test", "", 0o640)
    setfacl(plain, "-m", f"u:{BOB_UID}:rw-,g:{DOCKER_GID}:r--,u:0:--x")
    entries = parse_acl(os.getxattr(plain, ACL_XATTR))
    named = {(e.tag, e.qualifier, e.perms) for e in entries if e.tag in ("user", "group")}
    assert named == {("user", BOB_UID, 0o6), ("group", DOCKER_GID, 0o4), ("user", 0, 0o1)}
    assert {e.tag for e in entries} == {"user_obj", "user", "group_obj", "group", "mask", "other"}
    user_obj = next(e for e in entries if e.tag == "user_obj")
    assert (user_obj.qualifier, user_obj.perms) == (None, 0o6)
    assert AclEntry("user", BOB_UID, 0o6).render({BOB_UID: "bob"}) == "user:bob:rw-"


@pytest.mark.parametrize("blob", [b"", b"\x02\x00", b"\x02\x00\x00\x00\x01", struct.pack("<I", 1) + b"\0" * 8])
def test_parse_acl_refuses_malformed_blobs(blob: bytes) -> None:
    with pytest.raises(ValueError):
        parse_acl(blob)


@pytest.mark.root
def test_an_acl_on_the_socket_fails_though_the_mode_is_0660(sandbox: Sandbox, sock: Path) -> None:
    setfacl(sock, "-m", f"u:{BOB_UID}:rw")
    found = run(CTL, sandbox)
    assert one(found, "socket-mode").observed == "0660"  # the mode alone shows nothing wrong
    f = one(found, "socket-acl")
    assert (f.status, f.observed, f.cis) == (Status.FAIL, ["user:bob:rw-"], "3.16")


@pytest.mark.root
def test_a_named_group_acl_fails_too(sandbox: Sandbox, sock: Path) -> None:
    setfacl(sock, "-m", "g:1002:rw")
    f = one(run(CTL, sandbox), "socket-acl")
    assert (f.status, f.observed) == (Status.FAIL, ["group:bobby:rw-"])


@pytest.mark.root
def test_an_entry_without_permissions_grants_nothing(sandbox: Sandbox, sock: Path) -> None:
    setfacl(sock, "-m", f"u:{BOB_UID}:---")
    assert one(run(CTL, sandbox), "socket-acl").status is Status.PASS


@pytest.mark.root
@pytest.mark.parametrize(("allowed", "acl", "status"), [
    ("user:bob:rw-", f"u:{BOB_UID}:rw", Status.PASS),
    ("user:bob:rw-", f"u:{BOB_UID}:r", Status.PASS),  # less than allowed is fine
    ("user:bob:r--", f"u:{BOB_UID}:rw", Status.FAIL),  # more than allowed is not
    ("user:bobby:rw-", f"u:{BOB_UID}:rw", Status.FAIL),  # whole names: bobby does not admit bob
    (f"user:{BOB_UID}:rw-", f"u:{BOB_UID}:rw", Status.PASS),  # a numeric id names the same user
    ("group:bob:rw-", f"u:{BOB_UID}:rw", Status.FAIL),  # a group entry does not admit a user
    ("user:root:rw-", "u:0:rw", Status.PASS),  # uid 0 is a real qualifier, not "none"
])
def test_allowed_acl(sandbox: Sandbox, sock: Path, allowed: str, acl: str, status: Status) -> None:
    setfacl(sock, "-m", acl)
    pol = policy_from(f"spec: {{controls: {{socket: {{allowedAcl: ['{allowed}']}}}}}}")
    f = one(run(CTL, sandbox, pol), "socket-acl")
    assert f.status is status, f


def test_an_unreadable_acl_fails_pure() -> None:
    st = FileStat(SOCK, 0, DOCKER_GID, 0o660, "socket", 0, 1, 1)
    obs = SocketObservation(SOCK, st, None, "ACL xattr of 5 bytes is malformed", 0, DOCKER_GID, {0: "root"},
                            {DOCKER_GID: "docker"})
    f = one(CTL.evaluate(obs, policy_from()), "socket-acl")
    assert f.status is Status.FAIL
    assert "malformed" in f.message


# -- enforcing: `setfacl -x` of exactly the forbidden entries ------------------------------------


def getfacl(path: Path) -> str:
    require_tool("getfacl")
    out = subprocess.run(["getfacl", "-n", "--omit-header", str(path)], check=True, capture_output=True, text=True)
    return out.stdout


@contextmanager
def twin_socket(sandbox: Sandbox, name: str) -> Iterator[Path]:
    path = sandbox.path(f"/run/{name}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chown(path, 0, DOCKER_GID)
    path.chmod(0o660)
    try:
        yield path
    finally:
        s.close()


def enforce_acl(sandbox: Sandbox, policy_text: str) -> tuple[Finding, Any]:
    from tests.support.rules import context

    ctx = context(sandbox, policy_from(policy_text))
    obs = CTL.observe(ctx)
    f = one(CTL.evaluate(obs, ctx.policy), "socket-acl")
    assert f.status is Status.FAIL
    return f, CTL.remediate(ctx, f, obs)


ALLOW_BOB = "spec: {controls: {socket: {allowedAcl: ['user:bob:rw-']}}}"
ALLOW_BOB_AND_DOCKER = "spec: {controls: {socket: {allowedAcl: ['user:bob:rw-', 'group:docker:rw-']}}}"


@pytest.mark.root
@pytest.mark.parametrize("grants", [f"u:{BOB_UID}:rw-,u:4242:rw", f"u:{BOB_UID}:rw-,u:4242:rwx,g:1002:r",
                                    f"g:{DOCKER_GID}:rw,u:{BOB_UID}:r--,u:4242:rw"])
def test_enforce_removes_only_the_forbidden_entries_like_setfacl_x(sandbox: Sandbox, sock: Path, grants: str) -> None:
    """bob's allowed entry survives byte for byte; the result equals `setfacl -x` on a twin socket."""
    setfacl(sock, "-m", grants)
    with twin_socket(sandbox, "twin.sock") as twin:
        setfacl(twin, "-m", grants)
        before = parse_acl(os.getxattr(sock, ACL_XATTR))
        f, outcome = enforce_acl(sandbox, ALLOW_BOB_AND_DOCKER)
        forbidden = [g for g in grants.split(",") if not g.startswith((f"u:{BOB_UID}:", f"g:{DOCKER_GID}:"))]
        # The oracle: setfacl -x of the forbidden entries, which recomputes the mask.
        setfacl(twin, "-x", ",".join(g.rsplit(":", 1)[0] for g in forbidden))
        assert outcome.ok and outcome.changed
        assert getfacl(sock) == getfacl(twin)
        assert sock.stat().st_mode & 0o7777 == twin.stat().st_mode & 0o7777
        after = parse_acl(os.getxattr(sock, ACL_XATTR))
        kept = [e for e in before if e.tag in ("user", "group") and e.qualifier in (BOB_UID, DOCKER_GID)]
        assert [e for e in after if e.tag in ("user", "group")] == kept  # allowed entries unchanged
        # The event lists exactly what went, and nothing else.
        assert sorted(outcome.details["removed"]) == sorted(f.observed)
        assert len(outcome.details["removed"]) == len(forbidden)
        assert one(run(CTL, sandbox, policy_from(ALLOW_BOB_AND_DOCKER)), "socket-acl").status is Status.PASS


@pytest.mark.root
def test_allowed_entry_records_stay_byte_identical(sandbox: Sandbox, sock: Path) -> None:
    setfacl(sock, "-m", f"u:{BOB_UID}:rw-,u:4242:rw")
    bob_record = _record(os.getxattr(sock, ACL_XATTR), tag=0x02, qualifier=BOB_UID)
    f, outcome = enforce_acl(sandbox, ALLOW_BOB)
    assert outcome.details["removed"] == ["user:4242:rw-"] == f.observed
    blob = os.getxattr(sock, ACL_XATTR)
    assert _record(blob, tag=0x02, qualifier=BOB_UID) == bob_record
    assert _record(blob, tag=0x02, qualifier=4242) is None
    assert "user:1001:rw-" in getfacl(sock) and "4242" not in getfacl(sock)


def _record(blob: bytes, *, tag: int, qualifier: int) -> bytes | None:
    for off in range(4, len(blob), 8):
        t, _, q = struct.unpack_from("<HHI", blob, off)
        if (t, q) == (tag, qualifier):
            return blob[off:off + 8]
    return None


@pytest.mark.root
def test_without_allowed_entries_every_granting_entry_goes_and_the_mask_stays_like_setfacl(
        sandbox: Sandbox, sock: Path) -> None:
    setfacl(sock, "-m", f"u:{BOB_UID}:rw,u:4242:---")
    with twin_socket(sandbox, "twin.sock") as twin:
        setfacl(twin, "-m", f"u:{BOB_UID}:rw,u:4242:---")
        _, outcome = enforce_acl(sandbox, "spec: {}")
        setfacl(twin, "-x", f"u:{BOB_UID}")  # an entry with no permissions grants nothing: kept
        assert outcome.details["removed"] == ["user:bob:rw-"]
        assert getfacl(sock) == getfacl(twin)


@pytest.mark.root
def test_the_mask_never_widens_the_mode_beyond_the_policy(sandbox: Sandbox, sock: Path) -> None:
    # group::rwx behind a mask of rw- (chmod 0660 after the ACL): setfacl -x alone would write
    # mask rwx and make the socket 0670; the revert keeps the policy's 0660.
    setfacl(sock, "-m", "g::rwx,u:4242:rw")
    sock.chmod(0o660)
    _, outcome = enforce_acl(sandbox, "spec: {}")
    assert outcome.details["removed"] == ["user:4242:rw-"]
    assert sock.stat().st_mode & 0o7777 == 0o660
    assert "mask::rw-" in getfacl(sock)
    assert one(run(CTL, sandbox), "socket-mode").status is Status.PASS


@pytest.mark.root
def test_containerd_socket_acl_revert_is_setfacl_x_of_the_granting_entries(sandbox: Sandbox) -> None:
    """containerd.sock has no allow-list: every named entry that grants something goes, the rest stays."""
    from nodeguard.controls.daemon_files import DaemonFilesControl
    from tests.support.rules import context

    files = DaemonFilesControl()
    sandbox.path("/run/containerd").mkdir(parents=True)
    with twin_socket(sandbox, "containerd/containerd.sock") as real, twin_socket(sandbox, "twin.sock") as twin:
        grants = f"u:{BOB_UID}:rw,g:1002:r,u:4242:---"
        setfacl(real, "-m", grants)
        setfacl(twin, "-m", grants)
        ctx = context(sandbox, policy_from())
        obs = files.observe(ctx)
        f = one(files.evaluate(obs, ctx.policy), "containerd-sock-acl")
        assert (f.status, f.observed) == (Status.FAIL, ["user:bob:rw-", "group:bobby:r--"])
        outcome = files.remediate(ctx, f, obs)
        setfacl(twin, "-x", f"u:{BOB_UID},g:1002")
        assert outcome.ok and outcome.changed
        assert outcome.details["removed"] == f.observed
        assert getfacl(real) == getfacl(twin)  # 4242's empty entry and the recomputed mask, as setfacl leaves them
        assert "user:4242:---" in getfacl(real)
        assert one(run(files, sandbox), "containerd-sock-acl").status is Status.PASS


def _blob(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEF = 0xFFFFFFFF


def test_drop_entries_pure_keeps_records_and_recomputes_the_mask() -> None:
    from nodeguard.formats.posix_acl import drop_entries

    blob = _blob((0x01, 6, UNDEF), (0x02, 6, BOB_UID), (0x02, 7, 4242), (0x04, 4, UNDEF), (0x08, 1, 1002),
                 (0x10, 7, UNDEF), (0x20, 0, UNDEF))
    edit = drop_entries(blob, lambda e: e.qualifier == 4242)
    assert [(e.tag, e.qualifier) for e in edit.removed] == [("user", 4242)]
    assert edit.mask == 0o7  # bob rw- | group r-- | group 1002 --x
    assert edit.blob == _blob((0x01, 6, UNDEF), (0x02, 6, BOB_UID), (0x04, 4, UNDEF), (0x08, 1, 1002),
                              (0x10, 7, UNDEF), (0x20, 0, UNDEF))
    capped = drop_entries(blob, lambda e: e.qualifier == 4242, mask_cap=0o6)
    assert capped.mask == 0o6 and capped.blob[-16:-8] == struct.pack("<HHI", 0x10, 6, UNDEF)
    # Nothing forbidden and the mask already the union: the very same bytes.
    same = _blob((0x01, 6, UNDEF), (0x02, 6, BOB_UID), (0x04, 4, UNDEF), (0x10, 6, UNDEF), (0x20, 0, UNDEF))
    assert drop_entries(same, lambda e: False).blob == same
    # The base entries are the mode: never removed, whatever the predicate says.
    assert drop_entries(same, lambda e: True).removed == [AclEntry("user", BOB_UID, 6)]
    with pytest.raises(ValueError):
        drop_entries(blob[:-3], lambda e: True)


# -- the lane's shortcuts (one walk for stat + ACL, account files looked up by lstat): a change of
# -- what they stand for is seen on the very next look ----------------------------------------

@pytest.mark.root
def test_a_renumbered_docker_group_is_seen_on_the_next_look(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()  # one instance across looks, as on the agent's lane
    assert one(run(ctl, sandbox), "socket-owner").status is Status.PASS
    group = sandbox.path("/etc/group")
    group.write_text(group.read_text().replace(f"docker:x:{DOCKER_GID}:", "docker:x:4242:"))
    f = one(run(ctl, sandbox), "socket-owner")
    assert f.status is Status.FAIL and f.observed == f"root:{DOCKER_GID}"


@pytest.mark.root
def test_account_files_behind_a_symlink_are_read_as_before(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()
    group = sandbox.path("/etc/group")
    real = sandbox.path("/etc/group.real")
    real.write_text(group.read_text())
    group.unlink()
    group.symlink_to("group.real")
    assert one(run(ctl, sandbox), "socket-owner").status is Status.PASS
    real.write_text(real.read_text().replace(f"docker:x:{DOCKER_GID}:", "docker:x:4242:"))
    assert one(run(ctl, sandbox), "socket-owner").status is Status.FAIL


@pytest.mark.root
def test_a_socket_behind_a_final_symlink_is_judged_by_its_target(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()
    sandbox.path("/run/real.sock").unlink(missing_ok=True)
    os.rename(sock, sandbox.path("/run/real.sock"))
    sock.symlink_to("real.sock")
    try:
        found = run(ctl, sandbox)
        assert one(found, "socket-mode").status is Status.PASS
        assert one(found, "socket-owner").observed == "root:docker"
        sandbox.path("/run/real.sock").chmod(0o666)
        assert one(run(ctl, sandbox), "socket-mode").status is Status.FAIL
    finally:
        sock.unlink()
        os.rename(sandbox.path("/run/real.sock"), sock)
