"""host-layout: the daemon's data root has a partition of its own (CIS 1.1.1).

Read from the mount table, not from `/etc/fstab` (which says what *should* be mounted) and not
from `mountpoint -q` alone: a bind mount of a folder of the root filesystem is a mount point
too, yet the containers still fill the root filesystem. The data root passes only when a mount
sits exactly on it (after symlinks) and its device differs from the device of the host's `/`.

Which mount table: the host root's `/proc/1/mountinfo` (the host's init, whose mount namespace is
the host's) when it is there; otherwise the agent's own `/proc/self/mountinfo`, matched against
real paths (in a pod that sees the host root mounted at `/host`, or in a test sandbox). Tests
give a fake mountinfo *file* inside the sandbox through `hostLayout.mountinfo`.

Report only: repartitioning is an operator's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.formats.mountinfo import MountEntry, NoMountTable, mount_of, parse_mountinfo
from nodeguard.host import HostPathError
from nodeguard.policy import HostLayoutPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

# The mount table's parser lives in nodeguard.formats.mountinfo; these names stay importable from here.
__all__ = ["HostLayoutControl", "HostLayoutObservation", "MountEntry", "mount_of", "parse_mountinfo"]


@dataclass
class HostLayoutObservation:
    data_root: str  # host path, as configured
    exists: bool
    mountinfo: str  # which table was read
    compared_path: str = ""  # the path looked up in that table
    root_path: str = ""  # where the host's `/` is in that table
    mount: MountEntry | None = None
    root_mount: MountEntry | None = None
    error: str | None = None


class HostLayoutControl(Control):
    name: ClassVar[str] = "host-layout"
    policy_key: ClassVar[str] = "hostLayout"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("data-root-partition", "the daemon's data root is a partition of its own", Severity.LOW, "1.1.1",
             False),
    )

    def _settings(self, policy: Policy) -> HostLayoutPolicy:
        s = self.settings(policy)
        assert isinstance(s, HostLayoutPolicy)
        return s

    def observe(self, ctx: Context) -> HostLayoutObservation:
        cfg = ctx.daemon_config.effective
        data_root = ctx.host.from_daemon_path(str(cfg.get("data-root") or cfg.get("graph") or "/var/lib/docker"))
        obs = HostLayoutObservation(data_root, ctx.host.stat(data_root) is not None, "")
        if not obs.exists:
            return obs
        s = self._settings(ctx.policy)
        try:
            real = ctx.host.resolve(data_root)
        except (HostPathError, OSError) as exc:
            obs.error = f"cannot resolve {data_root}: {exc}"
            return obs
        try:
            table = ctx.mounts
        except NoMountTable as exc:
            obs.error = f"no mount table: {s.mountinfo} is missing and {exc.filename}: {exc.strerror or exc}"
            return obs
        except OSError as exc:  # HostPathError included
            obs.error = f"{s.mountinfo}: cannot read: {exc.strerror or exc}"
            return obs
        obs.mountinfo = table.label
        if table.host_named:
            # The host's table names host paths.
            obs.compared_path, obs.root_path = ctx.host.host_path_of(real), "/"
        else:
            # The agent's table names the agent's paths: the host root sits at ctx.host.root.
            obs.compared_path, obs.root_path = str(real), str(ctx.host.root)
        obs.mount = mount_of(table.entries, obs.compared_path)
        obs.root_mount = mount_of(table.entries, obs.root_path)
        return obs

    def evaluate(self, observed: HostLayoutObservation, policy: Policy) -> list[Finding]:
        obs = observed
        rule = "data-root-partition"
        if not obs.exists:
            return [self.finding(rule, Status.SKIP, f"{obs.data_root} does not exist (no daemon data here)",
                                 path=obs.data_root)]
        if obs.error is not None:
            return [self.finding(rule, Status.SKIP, obs.error, path=obs.data_root)]
        details = {"mountinfo": obs.mountinfo}
        m, root = obs.mount, obs.root_mount
        if m is None:
            return [self.finding(rule, Status.SKIP, f"{obs.compared_path} is on no mount of {obs.mountinfo}",
                                 path=obs.data_root, details=details)]
        seen = {"mount_point": m.mount_point, "device": m.device, "fstype": m.fstype, "source": m.source,
                "root": m.root}
        own = (m.mount_point.rstrip("/") or "/") == (obs.compared_path.rstrip("/") or "/")
        same_device = root is not None and root.device == m.device and root is not m
        if own and root is m:
            own = False  # the data root *is* the host's `/`
        if not own:
            where = "the root filesystem" if root is m else f"the filesystem mounted at {m.mount_point}"
            return [self.finding(rule, Status.FAIL, f"{obs.data_root} is not a mount point: it lives on {where}",
                                 observed=seen, expected=f"a partition mounted at {obs.data_root}",
                                 path=obs.data_root, details=details)]
        if same_device:
            return [self.finding(rule, Status.FAIL,
                                 f"{obs.data_root} is a bind mount of {m.root} from the root filesystem "
                                 f"(device {m.device}): containers still fill /",
                                 observed=seen, expected="a device other than the root filesystem's",
                                 path=obs.data_root, details=details)]
        return [self.finding(rule, Status.PASS, f"{obs.data_root} is its own {m.fstype} mount ({m.source})",
                             observed=seen, expected=f"a partition mounted at {obs.data_root}",
                             path=obs.data_root, details=details)]

    def watch_paths(self, ctx: Context) -> list[str]:
        return []
