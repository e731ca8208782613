"""The container image: the real Dockerfile, built by the real `docker build` against a test dockerd.

Nothing can be pulled here and the test dockerd lives in a network namespace with no route out,
so the build must need no network: its base image is imported from a root filesystem assembled
from this machine's own Python (laid out like python:3.11-slim; see tests/support/image.py for
why not debootstrap), and every wheel comes from a wheelhouse in the build context
(`PIP_NO_INDEX=1`). The netfilter packages are left out (`APT_PACKAGES=`): apt has no mirror here. Byte-compiling
the ~10,000 modules at install is skipped (`PIP_COMPILE=0`): it only makes this throwaway build
slower; everything else is the build users run.
The image then audits a sandbox host the way the DaemonSet mounts it: read-only root filesystem,
every capability dropped but the chart's own set. And it runs as the chart's pod, with the rendered
DaemonSet translated field by field into `docker run` (tests/support/pod.py docker_run_args): it
reverts a drift in enforce mode, the probes' command succeeds through `docker exec`, and the
capabilities the kernel reports for the running agent are exactly the chart's.

The image is built once per module (the build is most of the time) by a dockerd of the test's
own, in a network namespace of its own: never this machine's docker socket or network.
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
from nodeguard.privileges import CAPABILITY_NAMES
from tests.support.chart import container, objects, one
from tests.support.dockerd import Dockerd, running_dockerd
from tests.support.image import build_context, build_python_rootfs, build_wheelhouse, tar_rootfs
from tests.support.pod import configmaps_by_name, docker_run_args
from tests.support.sandbox import Sandbox, make_sandbox, require_root, require_tool, usermod_add

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


@pytest.fixture(scope="module")
def built() -> Iterator[tuple[Sandbox, Dockerd]]:
    """A sandbox node whose own test dockerd holds the freshly built image."""
    require_root()
    require_tool("chroot")
    # Short paths: dockerd's containerd socket lives under the root and unix sockets cap at 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="ngimg-", dir="/tmp"))
    try:
        sandbox = make_sandbox(root)
        rootfs_tar = tar_rootfs(build_python_rootfs(work / "rootfs"), work / "rootfs.tar")
        build_wheelhouse(work / "wheelhouse")
        context = build_context(work / "context", work / "wheelhouse")
        with running_dockerd(sandbox) as d:
            d.cli("import", str(rootfs_tar), BASE_TAG)
            build = docker_build(d, context)
            assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
            shutil.rmtree(work / "context", ignore_errors=True)
            yield sandbox, d
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def docker_build(d: Dockerd, context: Path) -> subprocess.CompletedProcess[str]:
    # The classic builder: BuildKit needs the buildx plugin, which the docker CLI here lacks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")} | {"DOCKER_BUILDKIT": "0"}
    return subprocess.run(
        ["docker", "-H", d.url, "build", "--network", "none",
         "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "APT_PACKAGES=",
         "--build-arg", "PIP_COMPILE=0",
         "-t", IMAGE_TAG, str(context)],
        capture_output=True, text=True, env=env, timeout=600, check=False)


def test_the_image_builds_offline_and_audits_a_host_as_the_pod_would(built: tuple[Sandbox, Dockerd]) -> None:
    sandbox, d = built
    chart_caps = container(one(objects(), "DaemonSet"))["securityContext"]["capabilities"]["add"]
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


def _cap_set(status: str, key: str) -> set[str]:
    """CapEff/CapBnd of a /proc/<pid>/status text, as capability names."""
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith(key + ":")), 16)
    return {name for i, name in enumerate(CAPABILITY_NAMES) if mask >> i & 1} | {
        f"CAP_{i}" for i in range(len(CAPABILITY_NAMES), 64) if mask >> i & 1}


def test_the_image_runs_the_charts_pod_and_reverts_drift(built: tuple[Sandbox, Dockerd], workdir: Path) -> None:
    """The rendered DaemonSet, in enforce mode, as a runtime starts it: capabilities, read-only root,
    hostNetwork (the test dockerd's own namespace), hostPID, the mounts, the probes' command."""
    sandbox, d = built
    objs = objects({"mode": "enforce"})
    pod = docker_run_args(one(objs, "DaemonSet"), configmaps_by_name(objs), sandbox, workdir)
    d.socket.chmod(0o660)
    started = time.monotonic()
    cid = d.cli("run", "-d", *pod.args, IMAGE_TAG, *pod.command).stdout.strip()
    try:
        def logs() -> subprocess.CompletedProcess[str]:
            return d.cli("logs", cid, check=False)

        def probe() -> subprocess.CompletedProcess[str]:
            return d.cli("exec", cid, *pod.probe, check=False)

        # The startup probe, as the kubelet runs it: retried until it passes, within its budget.
        deadline = time.monotonic() + 60
        while (result := probe()).returncode != 0:
            state = json.loads(d.cli("inspect", cid).stdout)[0]["State"]
            assert state["Running"], logs().stderr[-3000:]
            assert time.monotonic() < deadline, f"startup probe never passed: {result.stdout}{result.stderr}"
            time.sleep(0.5)
        ready = time.monotonic() - started

        # Drift on the node: the test dockerd's own socket opened to everyone. Reverted through the mount.
        d.socket.chmod(0o666)
        deadline = time.monotonic() + 15
        while d.socket.stat().st_mode & 0o777 != 0o660:
            assert time.monotonic() < deadline, "socket not reverted:\n" + logs().stderr[-3000:]
            time.sleep(0.1)
        # The event leaves the spool for stdout once the pass is committed (the revert never waits for it).
        def reverted() -> tuple[bool, list[str]]:
            events = [json.loads(line) for line in logs().stdout.splitlines() if line.startswith("{")]
            return (any(e["event.name"] == "nodeguard.drift.reverted"
                        and e["attributes"]["nodeguard.rule"] == "socket-mode" for e in events),
                    [e["event.name"] for e in events])

        deadline = time.monotonic() + 10
        while not (seen := reverted())[0]:
            assert time.monotonic() < deadline, seen[1]
            time.sleep(0.2)
        assert probe().returncode == 0  # liveness and readiness: the same command, still passing

        # What the kernel says the running agent holds: exactly the chart's set. With hostPID the
        # container sees the node's pid 1, so the agent is the container's main process by its pid.
        pid = json.loads(d.cli("inspect", cid).stdout)[0]["State"]["Pid"]
        read = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
        agent_status = d.cli("exec", cid, "python", "-c", read, f"/proc/{pid}/status").stdout
        assert "nodeguard" in d.cli("exec", cid, "python", "-c", read, f"/proc/{pid}/cmdline").stdout
        for key in ("CapEff", "CapBnd", "CapPrm"):
            assert _cap_set(agent_status, key) == set(pod.capabilities), key
        assert _cap_set(agent_status, "CapAmb") == set() and "NoNewPrivs:\t1" in agent_status
        # A process the kubelet execs (a probe) gets the same ceiling, never more.
        exec_status = d.cli("exec", cid, "python", "-c", read, "/proc/self/status").stdout
        assert _cap_set(exec_status, "CapBnd") == set(pod.capabilities)
        # The read-only root: nothing but the mounts can be written.
        write = d.cli("exec", cid, "python", "-c", "open('/nodeguard-was-here', 'w')", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        # hostNetwork: the agent shares the test dockerd's namespace (with its docker0), not a private one.
        net = d.cli("exec", cid, "python", "-c", "import os; print(os.stat('/proc/self/ns/net').st_ino)").stdout
        assert int(net) == os.stat(f"/var/run/netns/{d.netns}").st_ino

        d.cli("stop", "-t", "30", cid)
        state = json.loads(d.cli("inspect", cid).stdout)[0]["State"]
        assert state["ExitCode"] == 0, logs().stderr[-3000:]
        print(f"\npod container: ready (startup probe passed) {ready:.1f} s after docker run")
    finally:
        d.cli("rm", "-f", cid, check=False)
