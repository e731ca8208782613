"""The container image: the real Dockerfile, built by the real `docker build` against a test dockerd.

Nothing can be pulled here and the test dockerd lives in a network namespace with no route out,
so the build must need no network: its base image is imported from a root filesystem assembled
from this machine's own Python (laid out like python:3.11-slim; see tests/support/image.py for
why not debootstrap), and every wheel comes from a wheelhouse in the build context
(`PIP_NO_INDEX=1`). The netfilter packages are left out (`APT_PACKAGES=`): apt has no mirror here. Byte-compiling
the ~10,000 modules at install is skipped (`PIP_COMPILE=0`): it only makes this throwaway build
slower; everything else is the build users run.
The image then audits a sandbox host the way the DaemonSet mounts it: read-only root filesystem,
every capability dropped but the chart's own set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard._version import __version__
from tests.support.chart import container, objects, one
from tests.support.dockerd import Dockerd, running_dockerd
from tests.support.image import build_context, build_python_rootfs, build_wheelhouse, tar_rootfs
from tests.support.sandbox import Sandbox, require_tool, usermod_add

pytestmark = [pytest.mark.slow, pytest.mark.dockerd, pytest.mark.root]

BASE_TAG = "nodeguard-test/python:local"
IMAGE_TAG = "nodeguard-test/nodeguard:dev"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ngimg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def docker_build(d: Dockerd, context: Path) -> subprocess.CompletedProcess[str]:
    # The classic builder: BuildKit needs the buildx plugin, which the docker CLI here lacks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")} | {"DOCKER_BUILDKIT": "0"}
    return subprocess.run(
        ["docker", "-H", d.url, "build", "--network", "none",
         "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "APT_PACKAGES=",
         "--build-arg", "PIP_COMPILE=0",
         "-t", IMAGE_TAG, str(context)],
        capture_output=True, text=True, env=env, timeout=600, check=False)


def test_the_image_builds_offline_and_audits_a_host_as_the_pod_would(sandbox: Sandbox, workdir: Path) -> None:
    require_tool("chroot")
    rootfs_tar = tar_rootfs(build_python_rootfs(workdir / "rootfs"), workdir / "rootfs.tar")
    build_wheelhouse(workdir / "wheelhouse")
    context = build_context(workdir / "context", workdir / "wheelhouse")
    chart_caps = container(one(objects(), "DaemonSet"))["securityContext"]["capabilities"]["add"]

    with running_dockerd(sandbox) as d:
        d.cli("import", str(rootfs_tar), BASE_TAG)
        build = docker_build(d, context)
        assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]

        config = json.loads(d.cli("image", "inspect", IMAGE_TAG).stdout)[0]["Config"]
        assert config["Entrypoint"] == ["nodeguard"]  # exec form: nodeguard is pid 1, gets SIGTERM itself
        assert config["Cmd"] == ["run", "--host-root", "/host", "--state-dir", "/host/var/lib/nodeguard"]
        assert config["User"] == "0:0"

        def run(*args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
            argv = ["run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                    "--security-opt", "no-new-privileges"]
            for cap in chart_caps:
                argv += ["--cap-add", cap]
            argv += ["-v", f"{sandbox.path('/etc')}:/host/etc:ro", "-v", f"{sandbox.path('/run')}:/host/run:ro"]
            if entrypoint:
                argv += ["--entrypoint", entrypoint]
            return d.cli(*argv, IMAGE_TAG, *args, check=False)

        version = run("version")
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == __version__
        # /var/run -> /run inside the image's /host, as on the host: the socket resolves to the mount.
        assert run("/host/var/run", entrypoint="readlink").stdout.strip() == "/run"

        # Drift on the host: the socket opened to everyone, bob added to docker by the real usermod.
        d.socket.chmod(0o666)
        usermod_add(sandbox, "bob")
        audit = run("check", "--host-root", "/host", "--format", "json")
        assert audit.returncode == 1, audit.stderr  # 1: a rule fails
        findings = json.loads(audit.stdout)["findings"]
        status = {(f["control"], f["rule"], f.get("subject") or ""): f["status"] for f in findings}
        assert status[("socket", "socket-mode", "")] == "fail"
        assert status[("socket", "socket-owner", "")] == "pass"
        assert status[("docker-group", "member-allowed", "bob")] == "fail"

        # The default command is the agent, as pid 1 with no shell in front: `docker stop` (SIGTERM,
        # as the kubelet sends) stops it cleanly, well before the SIGKILL that would follow.
        state = sandbox.path("/var/lib/nodeguard")
        state.mkdir(parents=True, exist_ok=True)
        argv = ["run", "-d", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "-v", f"{sandbox.path('/etc')}:/host/etc:ro",
                "-v", f"{sandbox.path('/run')}:/host/run:ro", "-v", f"{state}:/host/var/lib/nodeguard"]
        for cap in chart_caps:
            argv += ["--cap-add", cap]
        agent = d.cli(*argv, IMAGE_TAG).stdout.strip()
        deadline = time.monotonic() + 60
        while "nodeguard.drift.detected" not in d.cli("logs", agent, check=False).stdout:
            inspect = json.loads(d.cli("inspect", agent).stdout)[0]["State"]
            assert inspect["Running"], d.cli("logs", agent, check=False).stderr[-3000:]
            assert time.monotonic() < deadline, "the agent reported nothing within 60 s"
            time.sleep(0.5)
        d.cli("stop", "-t", "30", agent)
        state_after = json.loads(d.cli("inspect", agent).stdout)[0]["State"]
        logs = d.cli("logs", agent, check=False)
        assert state_after["ExitCode"] == 0, logs.stderr[-3000:]  # 137 would be the SIGKILL
        assert "nodeguard.agent.stopped" in logs.stdout
        d.cli("rm", agent)
