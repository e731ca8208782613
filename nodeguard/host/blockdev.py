"""Is a block device encrypted? Walk its device-mapper stack in the host's sysfs.

`/sys/dev/block/MAJ:MIN` names the device of a mount; a dm-crypt mapping has a `dm/uuid` starting
with `CRYPT-` (LUKS: `CRYPT-LUKS2-...`, plain: `CRYPT-PLAIN-...`). LVM on LUKS puts an `LVM-`
device on top of a `CRYPT-` one, so the stack is walked through `slaves/`: a device counts as
encrypted when it is a crypt mapping or when every device below it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeguard.host import HostPathError, HostRoot

MAX_DEPTH = 16


@dataclass
class DeviceStack:
    device: str  # major:minor
    name: str | None = None  # dm-0, sda1; None when sysfs does not know it
    encrypted: bool = False
    # Every device seen, top first: (name, dm uuid or "").
    layers: list[tuple[str, str]] = field(default_factory=list)


def _read(host: HostRoot, path: str) -> str | None:
    try:
        return host.read_text(path, limit=4096).strip()
    except (OSError, HostPathError):
        return None


def _encrypted(host: HostRoot, sys_path: str, layers: list[tuple[str, str]], depth: int) -> bool:
    real = host.resolve(sys_path)
    name = real.name
    uuid = _read(host, f"{sys_path}/dm/uuid") or ""
    layers.append((name, uuid))
    if uuid.startswith("CRYPT-"):
        return True
    if depth >= MAX_DEPTH:
        return False
    slaves = host.listdir(f"{sys_path}/slaves")
    if not slaves:
        return False
    results = [_encrypted(host, f"{sys_path}/slaves/{s}", layers, depth + 1) for s in slaves]
    return all(results)


def device_stack(host: HostRoot, device: str) -> DeviceStack:
    """The stack under `major:minor`, read from the host root's /sys."""
    stack = DeviceStack(device)
    sys_path = f"/sys/dev/block/{device}"
    if host.lstat(sys_path) is None:
        return stack
    try:
        stack.name = host.resolve(sys_path).name
        stack.encrypted = _encrypted(host, sys_path, stack.layers, 0)
    except (HostPathError, OSError):
        stack.encrypted = False
    return stack


def device_of_source(dev: HostRoot, sys: HostRoot, source: str) -> str | None:
    """major:minor of a mount source such as /dev/mapper/luks-1 (for filesystems with anonymous devices).

    `/dev` may not be the host's (a pod has its own): a `/dev/mapper/NAME` source is then found by
    the mapping's name in sysfs.
    """
    if not source.startswith("/dev/"):
        return None
    try:
        name = dev.resolve(source).name
    except (HostPathError, OSError):
        name = source.rsplit("/", 1)[-1]
    text = _read(sys, f"/sys/class/block/{name}/dev")
    if text:
        return text
    if source.startswith("/dev/mapper/"):
        wanted = source.removeprefix("/dev/mapper/")
        for entry in sys.listdir("/sys/class/block"):
            if _read(sys, f"/sys/class/block/{entry}/dm/name") == wanted:
                return _read(sys, f"/sys/class/block/{entry}/dev")
    return None
