"""host-layout (CIS 1.1.1): the data root on a partition of its own, read from a mount table.

The host's table is a file the sandbox provides (`/proc/1/mountinfo` inside the host root); the
fallback, the agent's own `/proc/self/mountinfo`, is exercised with a real tmpfs mount.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.controls.host_layout import HostLayoutControl, mount_of, parse_mountinfo
from nodeguard.structs import Status
from tests.support.rules import context, one, run
from tests.support.sandbox import Sandbox, require_root, require_tool

CTL = HostLayoutControl()
ROOT = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
PROC = "23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"


def mountinfo(sb: Sandbox, *lines: str) -> None:
    sb.write("/proc/1/mountinfo", ROOT + PROC + "".join(lines), 0o444)


def verdict(sb: Sandbox) -> tuple[Status, str]:
    f = one(run(CTL, sb), "data-root-partition")
    assert f.cis == "1.1.1"
    return f.status, f.message


@pytest.mark.parametrize(("lines", "ok"), [
    # its own LVM volume
    (["40 22 254:3 / /var/lib/docker rw,relatime shared:20 - xfs /dev/mapper/vg-docker rw\n"], True),
    # nothing mounted there: it is on /
    ([], False),
    # /var has a partition, /var/lib/docker does not: CIS asks for the data root itself
    (["30 22 254:2 / /var rw shared:2 - ext4 /dev/vda2 rw\n"], False),
    # `mountpoint -q` says yes, but it is a folder of the root filesystem bound here
    (["41 22 254:1 /srv/docker /var/lib/docker rw shared:1 - ext4 /dev/vda1 rw\n"], False),
], ids=["own-partition", "no-mount", "parent-partition-only", "bind-of-root"])
def test_data_root_partition(sandbox: Sandbox, lines: list[str], ok: bool) -> None:
    sandbox.path("/var/lib/docker").mkdir(parents=True)
    mountinfo(sandbox, *lines)
    status, message = verdict(sandbox)
    assert status is (Status.PASS if ok else Status.FAIL), message


def test_the_configured_data_root_through_a_symlink(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", json.dumps({"data-root": "/var/lib/docker"}))
    sandbox.path("/data/docker").mkdir(parents=True)
    sandbox.path("/var/lib").mkdir(parents=True, exist_ok=True)
    os.symlink("/data/docker", sandbox.path("/var/lib/docker"))
    mountinfo(sandbox, "50 22 8:17 / /data/docker rw - ext4 /dev/sdb1 rw\n")
    assert verdict(sandbox)[0] is Status.PASS


def test_escaped_mount_points_and_overmounts() -> None:
    entries = parse_mountinfo(ROOT + "60 22 8:1 / /srv/my\\040docker rw - ext4 /dev/sda1 rw\n"
                              "61 22 8:2 / /srv/my\\040docker rw - ext4 /dev/sdb1 rw\n"
                              "garbage line\n")
    m = mount_of(entries, "/srv/my docker/overlay2")
    assert m is not None and m.device == "8:2"  # the later mount hides the earlier one
    assert mount_of(entries, "/srv/other") == entries[0]


def test_absent_data_root_is_skipped(sandbox: Sandbox) -> None:
    mountinfo(sandbox)
    assert verdict(sandbox)[0] is Status.SKIP


@pytest.fixture
def tmpfs_data_root(sandbox: Sandbox) -> Iterator[Sandbox]:
    require_root()
    require_tool("mount")
    target = sandbox.path("/var/lib/docker")
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ng-test", str(target)], check=True)
    try:
        yield sandbox
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.mark.root
def test_agent_own_mount_table_is_the_fallback(tmpfs_data_root: Sandbox) -> None:
    sb = tmpfs_data_root
    # No /proc/1/mountinfo in the sandbox: the agent's own table, matched on real paths.
    ctx = context(sb, proc=Path("/proc"))
    obs = CTL.observe(ctx)
    assert "agent's own" in obs.mountinfo
    f = one(CTL.evaluate(obs, ctx.policy), "data-root-partition")
    assert f.status is Status.PASS, f.message
    assert f.observed["fstype"] == "tmpfs"


def test_agent_own_mount_table_without_a_mount_fails(sandbox: Sandbox) -> None:
    sandbox.path("/var/lib/docker").mkdir(parents=True)
    ctx = context(sandbox, proc=Path("/proc"))
    f = one(CTL.evaluate(CTL.observe(ctx), ctx.policy), "data-root-partition")
    assert f.status is Status.FAIL, f.message
