"""A real dockerd for tests: its own data-root, exec-root, pidfile and socket under a sandbox root.

Stopped by its pid (never by name), its containerd with it, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.sandbox import DOCKER_GID, Sandbox, require, require_root, require_tool

TEST_IMAGE = "nodeguard-test/busybox:latest"


@dataclass
class Dockerd:
    sandbox: Sandbox
    pid: int
    proc: subprocess.Popen[bytes]
    socket: Path
    config_file: Path
    log_file: Path
    netns: str | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, timeout=30)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.url, *args], check=check, capture_output=True, text=True,
                              timeout=120)

    def info(self) -> dict[str, Any]:
        out = self.cli("info", "--format", "{{json .}}").stdout
        info: dict[str, Any] = json.loads(out)
        return info

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def sighup(self) -> None:
        os.kill(self.pid, signal.SIGHUP)


def _wait_socket(d: Dockerd, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {d.proc.returncode}:\n{d.log()[-3000:]}")
        if d.socket.is_socket():
            try:
                d.cli("version", "--format", "{{.Server.Version}}")
                return
            except subprocess.CalledProcessError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"dockerd did not come up in {timeout}s:\n{d.log()[-3000:]}")


def stop_dockerd(d: Dockerd) -> None:
    """SIGTERM by pid, wait, then SIGKILL what is left of it (and its containerd) by pid."""
    if d.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.pid, signal.SIGTERM)
        try:
            d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGKILL)
            d.proc.wait(timeout=10)
    # dockerd's own containerd writes its pid under the exec-root; never match by name.
    exec_root = d.sandbox.path("/run/docker-exec")
    for pidfile in exec_root.glob("**/containerd.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    # Overlay mounts of containers may outlive the daemon; unmount under our data-root only.
    data_root = str(d.sandbox.path("/var/lib/docker"))
    with contextlib.suppress(OSError):
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith((data_root, str(exec_root))):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)


@contextlib.contextmanager
def running_dockerd(
    sb: Sandbox,
    config: dict[str, Any] | None = None,
    *,
    extra_args: list[str] | None = None,
    netns: str | None = None,
    hosts: list[str] | None = None,
    write_config: bool = True,
    socket_flag: bool = True,
) -> Iterator[Dockerd]:
    """Start dockerd against the sandbox; `hosts` adds -H flags beside the sandbox socket.

    socket_flag=False: no -H at all, for a daemon.json that names the sandbox socket in its own
    `hosts` (dockerd refuses a directive given both as a flag and in the file)."""
    require_root()
    dockerd_bin = require_tool("dockerd")
    require_tool("docker")
    require(Path("/sys/fs/cgroup/devices").exists() or Path("/sys/fs/cgroup/cgroup.controllers").exists(),
            "needs cgroups mounted (run cgroupfs-mount)")
    config_file = sb.path("/etc/docker/daemon.json")
    if write_config:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(config or {}, indent=2) + "\n")
    socket = sb.path("/run/docker.sock")
    log_file = sb.root / "dockerd.log"
    args = [
        dockerd_bin,
        "--config-file", str(config_file),
        "--data-root", str(sb.path("/var/lib/docker")),
        "--exec-root", str(sb.path("/run/docker-exec")),
        "--pidfile", str(sb.path("/run/docker.pid")),
        *(["-H", f"unix://{socket}"] if socket_flag else []),
        "-G", str(DOCKER_GID),
    ]
    for h in hosts or []:
        args += ["-H", h]
    if not any(a.startswith("--bip") for a in extra_args or []) and "bip" not in (config or {}):
        # docker0 lives in the test namespace; a documentation range keeps it off real networks.
        args += ["--bip", "192.0.2.193/26"]
    args += extra_args or []
    own_netns = None
    if netns is None:
        # Every test dockerd gets a network namespace of its own, so its bridge and its iptables
        # rules can never touch this machine's.
        own_netns = netns = f"ngd-{os.urandom(4).hex()}"
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
    # `ip netns exec` remounts /sys and the cgroup mounts vanish; nsenter keeps them.
    args = ["nsenter", f"--net=/var/run/netns/{netns}", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    try:
        with log_file.open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except BaseException:
        if own_netns is not None:
            subprocess.run(["ip", "netns", "del", own_netns], check=False, capture_output=True)
        raise
    d = Dockerd(sb, proc.pid, proc, socket, config_file, log_file, netns, args)
    try:
        _wait_socket(d)
        # nsenter execs dockerd: same pid. Confirm it is dockerd we will signal.
        cmdline = Path(f"/proc/{d.pid}/cmdline").read_bytes().split(b"\0")[0]
        assert os.path.basename(cmdline.decode()) == "dockerd", cmdline
        yield d
    finally:
        stop_dockerd(d)
        if own_netns is not None:
            subprocess.run(["ip", "netns", "del", own_netns], check=False, capture_output=True)


def build_busybox_rootfs(folder: Path) -> Path:
    """A minimal image root from Debian's busybox-static."""
    busybox = Path("/bin/busybox")
    require(busybox.exists(), "needs busybox-static (/bin/busybox)")
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, folder / "bin" / "busybox")
    for applet in ("sh", "sleep", "cat", "ls", "true", "id", "echo", "nc", "wget"):
        link = folder / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("etc", "tmp", "proc", "sys", "dev"):
        (folder / d).mkdir(exist_ok=True)
    return folder


def import_busybox(d: Dockerd, tag: str = TEST_IMAGE) -> str:
    """`docker import` of a busybox folder: the only way to have an image without a registry."""
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = build_busybox_rootfs(Path(tmp) / "rootfs")
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(rootfs, arcname=".")
        d.cli("import", "--change", 'CMD ["/bin/sh"]', str(tar_path), tag)
    return tag
