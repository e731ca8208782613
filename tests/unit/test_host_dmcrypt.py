"""Is the data root on dm-crypt? The real mount table for a sandbox, a built sysfs tree for the stacks.

A real dm-crypt device needs cryptsetup, loop devices and device-mapper, none of which a test may
create on this machine; the sysfs layout (`/sys/dev/block/MAJ:MIN`, `dm/uuid`, `slaves/`) is
therefore built as files and symlinks inside the sandbox host root, exactly as the kernel lays it out.
"""

from __future__ import annotations

import json
import os
import subprocess

from nodeguard.controls.base import Context
from nodeguard.controls.host_checks import HostControl
from nodeguard.host import HostRoot
from nodeguard.policy import parse_policy
from nodeguard.structs import Finding, Status
from tests.support.sandbox import Sandbox, require_tool

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 253:1 / /var/lib/docker rw,relatime shared:5 - ext4 /dev/mapper/vg-docker rw
31 22 0:45 / /srv/btr rw,relatime shared:6 - btrfs /dev/mapper/luks-btr rw
"""


def data_root_finding(sb: Sandbox, mountinfo: str | None = "/fake/mountinfo") -> Finding:
    layout = {"hostLayout": {"mountinfo": mountinfo}} if mountinfo else {}
    policy = parse_policy(json.dumps({"apiVersion": "nodeguard.io/v1alpha1", "kind": "NodeGuardPolicy",
                                       "spec": {"controls": layout}}))
    ctx = Context(HostRoot(sb.root), policy)
    control = HostControl()
    return next(f for f in control.evaluate(control.observe(ctx), policy) if f.rule == "data-root-encrypted")


def dm_device(sb: Sandbox, name: str, devno: str, uuid: str | None, slaves: list[str]) -> None:
    base = sb.path(f"/sys/devices/virtual/block/{name}")
    (base / "slaves").mkdir(parents=True, exist_ok=True)
    if uuid is not None:
        (base / "dm").mkdir(exist_ok=True)
        (base / "dm" / "uuid").write_text(uuid + "\n")
    for s in slaves:
        target = f"../../{s}" if s.startswith("dm-") else f"../../../../pci0000:00/block/sda/{s}"
        os.symlink(target, base / "slaves" / s)
    sb.path("/sys/dev/block").mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/virtual/block/{name}", sb.path(f"/sys/dev/block/{devno}"))
    sb.path("/sys/class/block").mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/virtual/block/{name}", sb.path(f"/sys/class/block/{name}"))
    (base / "dev").write_text(devno + "\n")


def kernel_layout(sb: Sandbox, crypt_uuid: str) -> None:
    sb.write("/fake/mountinfo", MOUNTINFO)
    sb.path("/var/lib/docker").mkdir(parents=True)
    sb.path("/sys/devices/pci0000:00/block/sda/sda2").mkdir(parents=True)
    # LVM on LUKS: the logical volume dm-1 sits on dm-0, the crypt mapping of sda2.
    dm_device(sb, "dm-0", "253:0", crypt_uuid, ["sda2"])
    dm_device(sb, "dm-1", "253:1", "LVM-Jq7dBd3k", ["dm-0"])


def test_lvm_on_luks_is_encrypted(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "CRYPT-LUKS2-5f1c0de1-data")
    f = data_root_finding(sandbox)
    assert f.status is Status.PASS, f.message
    assert "dm-crypt (dm-0)" in f.message
    assert [layer["name"] for layer in f.observed["layers"]] == ["dm-1", "dm-0"]  # the walk stops at the crypt layer


def test_lvm_without_crypt_is_not(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "LVM-other")
    f = data_root_finding(sandbox)
    assert f.status is Status.FAIL
    assert "not on an encrypted device" in f.message and "/dev/mapper/vg-docker (dm-1)" in f.message


def test_anonymous_device_is_looked_up_by_its_source(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "LVM-other")
    dm_device(sandbox, "dm-2", "253:2", "CRYPT-PLAIN-btr", [])
    sandbox.path("/dev/mapper").mkdir(parents=True)
    os.symlink("../dm-2", sandbox.path("/dev/mapper/luks-btr"))
    sandbox.write("/etc/docker/daemon.json", json.dumps({"data-root": "/srv/btr/docker"}))
    sandbox.path("/srv/btr/docker").mkdir(parents=True)
    f = data_root_finding(sandbox)
    assert f.status is Status.PASS, f.message


def test_sandbox_data_root_is_a_plain_folder(sandbox: Sandbox) -> None:
    # No fake table, no sysfs under the sandbox: this process's own mount table and /sys, i.e. the
    # real device under /tmp. util-linux answers the same question independently.
    findmnt, lsblk = require_tool("findmnt"), require_tool("lsblk")
    sandbox.path("/var/lib/docker").mkdir(parents=True)
    source = subprocess.run([findmnt, "-n", "-o", "SOURCE", "-T", str(sandbox.path("/var/lib/docker"))],
                            capture_output=True, text=True, check=True).stdout.strip()
    stack = subprocess.run([lsblk, "-s", "-n", "-o", "TYPE", source], capture_output=True, text=True, check=False)
    encrypted = stack.returncode == 0 and "crypt" in stack.stdout.split()
    f = data_root_finding(sandbox, mountinfo=None)
    assert "the agent's own" in f.details["mountinfo"]
    if encrypted:  # a machine whose /tmp really is on dm-crypt
        assert f.status is Status.PASS, f.message
    else:
        assert f.status is Status.FAIL
        assert "not on an encrypted device" in f.message


def test_missing_data_root_is_a_skip(sandbox: Sandbox) -> None:
    f = data_root_finding(sandbox, mountinfo=None)
    assert f.status is Status.SKIP and "does not exist" in f.message
