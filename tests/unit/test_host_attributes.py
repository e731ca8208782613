"""A rewrite keeps every attribute of the file it replaces (issue 17.3), with the real acl/attr tools.

gshadow carries a restrictive ACL and a user.* attribute; /etc carries a default ACL granting
uid 4242 read-write. After nodeguard's revert (a member removed, a new inode renamed over),
`getfacl` must show exactly the old ACL, `getfattr` the old attribute, and uid 4242 must not read
the file. A file created the ordinary way in the same folder shows that 4242 *could* read one
(else the test could not fail).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nodeguard.host import HostRoot
from nodeguard.host.shadow import remove_group_member
from tests.support.sandbox import Sandbox, require_root, require_tool

pytestmark = pytest.mark.root

STRANGER = 4242


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


def can_read(uid: int, path: Path) -> bool:
    """A real process of `uid` (no groups) opening the file: the kernel's own permission check."""
    return run(require_tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "cat", str(path),
               check=False).returncode == 0


def getfacl(path: Path) -> str:
    return run(require_tool("getfacl"), "--omit-header", "--absolute-names", "--numeric", str(path)).stdout


def getfattr(path: Path) -> str:
    """Every extended attribute but the ACL (getfacl shows that): user.*, trusted.*, security.selinux."""
    return run(require_tool("getfattr"), "--absolute-names", "--dump", "--match=^(user|trusted|security)\\.",
               str(path)).stdout


@pytest.fixture
def traversable(sandbox: Sandbox) -> Sandbox:
    # mkdtemp makes the root 0700: the stranger must be able to reach /etc for the check to mean anything.
    require_root()
    for folder in (sandbox.root, sandbox.path("/etc")):
        folder.chmod(0o755)
    return sandbox


def test_a_revert_keeps_the_acl_and_xattrs_and_never_takes_the_folders_default_acl(traversable: Sandbox) -> None:
    sb = traversable
    setfacl = require_tool("setfacl")
    require_tool("setfattr")
    etc = sb.path("/etc")
    gshadow = sb.path("/etc/gshadow")
    gshadow.write_text("root:*::\ndocker:!::alice,bob\n")
    os.chown(gshadow, 0, 42)
    gshadow.chmod(0o640)
    # Restrictive: the group-admin uid 1500 may read, the mask allows no more than read.
    run(setfacl, "-m", "u:1500:r--,m::r--", str(gshadow))
    run(require_tool("setfattr"), "-n", "user.origin", "-v", "site-policy", str(gshadow))
    # An SELinux label as a labelled host carries it (ext4 keeps the xattr even with SELinux off).
    run(require_tool("setfattr"), "-n", "security.selinux", "-v", "system_u:object_r:shadow_t:s0", str(gshadow))
    run(setfacl, "-d", "-m", f"u:{STRANGER}:rw-", str(etc))
    acl_before, xattrs_before = getfacl(gshadow), getfattr(gshadow)
    assert "user:1500:r--" in acl_before and "user.origin" in xattrs_before

    # Control: a file created the ordinary way inherits the default ACL and the stranger reads it.
    probe = etc / "probe"
    probe.write_text("x")
    assert can_read(STRANGER, probe), "the default ACL does not grant the stranger: the test proves nothing"
    assert not can_read(STRANGER, gshadow)

    inode_before = gshadow.stat().st_ino
    assert remove_group_member(HostRoot(sb.root), "docker", "bob") == ["/etc/gshadow"]
    assert gshadow.stat().st_ino != inode_before  # a new file was renamed over: attributes were copied
    assert gshadow.read_text() == "root:*::\ndocker:!::alice\n"
    assert getfacl(gshadow) == acl_before
    assert getfattr(gshadow) == xattrs_before
    assert (gshadow.stat().st_uid, gshadow.stat().st_gid, gshadow.stat().st_mode & 0o7777) == (0, 42, 0o640)
    assert not can_read(STRANGER, gshadow)


def test_a_file_without_acl_stays_without_one_under_a_default_acl(traversable: Sandbox) -> None:
    sb = traversable
    setfacl = require_tool("setfacl")
    group = sb.path("/etc/group")
    group.chmod(0o600)  # root only: the default ACL would widen it to 4242 if it leaked in
    run(setfacl, "-d", "-m", f"u:{STRANGER}:rw-", str(sb.path("/etc")))
    assert not can_read(STRANGER, group)
    HostRoot(sb.root).write_atomic("/etc/group", group.read_bytes() + b"extra:x:5000:\n")
    assert getfacl(group) == "user::rw-\ngroup::---\nother::---\n\n"
    assert not can_read(STRANGER, group)
    # A new file (no old one to copy from) gets its default mode and no inherited ACL either.
    HostRoot(sb.root).write_atomic("/etc/newfile", b"x", default_mode=0o600)
    assert getfacl(sb.path("/etc/newfile")) == "user::rw-\ngroup::---\nother::---\n\n"
    assert not can_read(STRANGER, sb.path("/etc/newfile"))
