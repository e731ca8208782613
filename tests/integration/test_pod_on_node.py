"""The chart's DaemonSet pod, run on a sandbox node: what the chart mounts and what the agent touches.

The rendered pod is laid out by tests/support/pod.py the way the kubelet would (hostPath volumes
bind-mounted from a sandbox host root, the policy ConfigMap as the kubelet's atomic writer lays
it out, a read-only root filesystem) and the agent runs with exactly the rendered command, args
and env. If the chart forgot a folder the agent needs, or mounted it elsewhere, the agent would
not see the drift or could not revert it. Then `helm upgrade --set mode=enforce` is played the way
the kubelet delivers it — the ConfigMap's `..data` symlink swapped — and the same running pod
starts reverting: no restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import REPO_ROOT, container, objects, one
from tests.support.pod import (
    IMAGE_ENV,
    IMAGE_HOST_SYMLINKS,
    PodOnNode,
    configmaps_by_name,
    pod_on_node,
    probe_argv,
    write_configmap,
)
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root, require_tool, usermod_add

pytestmark = [pytest.mark.root, pytest.mark.netns]

POLICY = {"controls": {"dockerGroup": {"allowedMembers": ["alice"]}}}


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ngpod-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class EventLog:
    """The agent's stdout (--events-file -): one JSON event per line, collected on a thread."""

    def __init__(self, stream: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            if line.startswith("{"):
                with self._lock:
                    self.events.append(json.loads(line))

    def named(self, name: str, rule: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event.name"] == name
                    and (rule is None or e["attributes"].get("nodeguard.rule") == rule)]


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], stderr: Path,
             timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            pytest.fail(f"the agent exited ({proc.returncode}) before {what}:\n{stderr.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{stderr.read_text()[-3000:]}")


def docker_members(sb: Sandbox, path: str = "/etc/group") -> list[str]:
    line = next(x for x in sb.read(path).splitlines() if x.startswith("docker:"))
    return [m for m in line.split(":")[3].split(",") if m]


def test_the_image_skeleton_matches_the_harness() -> None:
    """The harness's /host symlinks and env are the Dockerfile's, not an invention of the test."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for link, target in IMAGE_HOST_SYMLINKS.items():
        assert f"ln -s {target} {link}" in dockerfile
    for name, value in IMAGE_ENV.items():
        assert f"{name}={value}" in dockerfile


def make_drift(sandbox: Sandbox) -> Path:
    """The node's drift: a docker socket open to everyone, bob in the docker group (the real usermod)."""
    sock_path = sandbox.path("/run/docker.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
    os.chown(sock_path, 0, DOCKER_GID)
    sock_path.chmod(0o666)
    usermod_add(sandbox, "bob")
    usermod_add(sandbox, "alice")
    assert docker_members(sandbox) == ["bob", "alice"]
    return sock_path


@contextlib.contextmanager
def running_pod(ds: dict[str, Any], objs: list[dict[str, Any]], sandbox: Sandbox,
                workdir: Path) -> Iterator[tuple[PodOnNode, subprocess.Popen[str], EventLog, Path]]:
    require_root()
    for tool in ("unshare", "mount", "ip", "setpriv"):
        require_tool(tool)
    run = pod_on_node(ds, configmaps_by_name(objs), sandbox, workdir)
    stderr_path = workdir / "agent.stderr"
    with stderr_path.open("w") as stderr:
        proc = run.start(subprocess.PIPE, stderr)
    try:
        yield run, proc, EventLog(proc.stdout), stderr_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # what the kubelet sends first
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# Linux capability numbers (linux/capability.h), to read CapEff from /proc/<pid>/status.
CAP_NUMBERS = {name: i for i, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE"))}


def test_the_harness_runs_the_pod_with_the_charts_privileges_only(sandbox: Sandbox, workdir: Path) -> None:
    """What the enforcing test below runs with: the chart's capabilities, no_new_privs, a read-only /."""
    require_root()
    for tool in ("unshare", "mount", "ip", "setpriv"):
        require_tool(tool)
    objs = objects()
    ds = one(objs, "DaemonSet")
    run = pod_on_node(ds, configmaps_by_name(objs), sandbox, workdir)
    probe = subprocess.run(run.launcher(["sh", "-c", f"grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
                                                     f"touch {run.container_path('/x')} || echo read-only"]),
                           capture_output=True, text=True, timeout=30)
    status = dict(line.split(":\t") for line in probe.stdout.splitlines() if ":\t" in line)
    wanted = container(ds)["securityContext"]["capabilities"]["add"]
    assert int(status["CapEff"], 16) == sum(1 << CAP_NUMBERS[c] for c in wanted)
    assert status["NoNewPrivs"] == "1"
    assert probe.stdout.splitlines()[-1] == "read-only"


def test_the_rendered_pod_enforces_on_its_node_after_a_hot_mode_switch(sandbox: Sandbox, workdir: Path) -> None:
    observe = objects({"mode": "observe", "policy": POLICY})
    enforce = objects({"mode": "enforce", "policy": POLICY})
    ds = one(observe, "DaemonSet")
    assert ds == one(enforce, "DaemonSet")  # the upgrade changes no pod: nothing restarts
    sock_path = make_drift(sandbox)

    with running_pod(ds, observe, sandbox, workdir) as (run, proc, log, stderr_path):
        # Observe: the drifts are reported, and nothing on the node changes.
        wait_for("socket-mode detected", lambda: bool(log.named("nodeguard.drift.detected", "socket-mode")),
                 proc, stderr_path)
        wait_for("member bob detected", lambda: any(e["attributes"].get("nodeguard.subject") == "bob"
                                                    for e in log.named("nodeguard.drift.detected", "member-allowed")),
                 proc, stderr_path)
        assert sock_path.stat().st_mode & 0o777 == 0o666
        assert docker_members(sandbox) == ["bob", "alice"]
        assert not log.named("nodeguard.drift.reverted")

        # `helm upgrade --set mode=enforce`: the kubelet swaps the ConfigMap's ..data symlink.
        write_configmap(run.configmap_dirs["policy"], one(enforce, "ConfigMap", "-policy")["data"])
        wait_for("socket reverted to 0660", lambda: sock_path.stat().st_mode & 0o777 == 0o660, proc, stderr_path)
        wait_for("bob removed from group and gshadow",
                 lambda: docker_members(sandbox) == docker_members(sandbox, "/etc/gshadow") == ["alice"],
                 proc, stderr_path)
        assert log.named("nodeguard.drift.reverted", "socket-mode")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0, stderr_path.read_text()[-3000:]
    deadline = time.monotonic() + 5
    while not log.named("nodeguard.agent.stopped") and time.monotonic() < deadline:
        time.sleep(0.05)  # the reader thread drains the last lines
    assert log.named("nodeguard.agent.stopped")
    # Everything the agent keeps went through a mount, into the node's state dir: it survives the pod.
    assert any(sandbox.path("/var/lib/nodeguard").iterdir())


def test_the_rendered_probes_see_the_running_agent(sandbox: Sandbox, workdir: Path) -> None:
    """The exec probes run `nodeguard health` in the pod: they must find the heartbeat the agent
    writes into the state dir the chart mounts."""
    objs = objects({"policy": POLICY})
    ds = one(objs, "DaemonSet")
    make_drift(sandbox)
    with running_pod(ds, objs, sandbox, workdir) as (run, proc, log, stderr_path):
        wait_for("first pass", lambda: bool(log.named("nodeguard.drift.detected", "socket-mode")), proc, stderr_path)
        c = container(ds)

        def probe(name: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(probe_argv(run, c[name]), env=run.env, capture_output=True, text=True,
                                  timeout=c[name]["timeoutSeconds"] * 3)

        # As the kubelet does: the startup probe may fail until the first pass has ended (the drift
        # event comes mid-pass), within periodSeconds x failureThreshold; then the others must pass.
        start = c["startupProbe"]
        deadline = time.monotonic() + min(60, start["periodSeconds"] * start["failureThreshold"])
        while (health := probe("startupProbe")).returncode != 0:
            assert time.monotonic() < deadline, f"startupProbe: {health.stdout}{health.stderr}"
            time.sleep(0.5)
        for name in ("livenessProbe", "readinessProbe"):
            health = probe(name)
            assert health.returncode == 0, f"{name}: {health.stdout}{health.stderr}"


# What the chart does not mount on purpose, and the rules that therefore see less in the pod than
# on the host. /var/lib/docker holds every container's filesystem, and a recursive hostPath bind
# of it pins the overlay mounts of running containers inside the pod (they then cannot be
# unmounted when the container stops): its partition and encryption checks are left to
# `nodeguard check` on the host.
NOT_MOUNTED_ON_PURPOSE = {
    ("host", "data-root-encrypted"): "/var/lib/docker",
    ("host-layout", "data-root-partition"): "/var/lib/docker",
    ("host-audit", "audit-data-root"): "/var/lib/docker",
}


def _audit(argv: list[str], env: dict[str, str], root: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return {(f["control"], f["rule"], f.get("subject") or ""): (f["status"], (f.get("message") or "").replace(root, ""))
            for f in json.loads(proc.stdout)["findings"]}


def test_the_pod_audits_what_an_audit_of_the_whole_host_sees(sandbox: Sandbox, workdir: Path) -> None:
    """`nodeguard check` through the pod's mounts and on the whole host root give the same findings,
    except for the few rules that need what the chart deliberately leaves out."""
    require_root()
    for tool in ("unshare", "mount", "ip"):
        require_tool(tool)
    make_drift(sandbox)
    sandbox.write("/etc/docker/daemon.json", json.dumps({"icc": False, "live-restore": True}) + "\n")
    sandbox.write("/lib/systemd/system/docker.service", "[Service]\nExecStart=/usr/bin/dockerd -H fd://\n")
    sandbox.write("/lib/systemd/system/docker.socket", "[Socket]\nSocketMode=0660\nSocketGroup=docker\n")
    sandbox.write("/etc/audit/rules.d/docker.rules", "-w /usr/bin/dockerd -k docker\n")
    sandbox.path("/var/lib/docker").mkdir(parents=True)
    objs = objects({"policy": POLICY})
    run = pod_on_node(one(objs, "DaemonSet"), configmaps_by_name(objs), sandbox, workdir)
    policy = str(run.configmap_dirs["policy"] / "policy.yaml")
    # The host's audit runs in a network namespace of its own too: the same (empty) netfilter view.
    on_host = _audit(["unshare", "--net", "nodeguard", "check", "--host-root", str(sandbox.root), "--format", "json",
                      "--policy", policy], run.env, str(sandbox.root))
    in_pod = _audit(run.launcher(["nodeguard", "check", "--host-root", run.container_path("/host"),
                                  "--format", "json", "--policy", run.container_path("/etc/nodeguard/policy.yaml")]),
                    run.env, run.container_path("/host"))
    assert on_host[("socket", "socket-mode", "")][0] == "fail"  # the audits saw the node
    differing = {(k[0], k[1]) for k in set(on_host) | set(in_pod) if on_host.get(k) != in_pod.get(k)}
    assert differing == set(NOT_MOUNTED_ON_PURPOSE), {
        k: (on_host.get(k), in_pod.get(k)) for k in set(on_host) | set(in_pod) if (k[0], k[1]) in differing}


def test_the_rendered_metrics_endpoint_binds_the_pods_ip_only(sandbox: Sandbox, workdir: Path) -> None:
    """metrics.enabled: the kubelet expands $(POD_IP) from the downward API into the agent's
    --metrics-bind-address; the endpoint answers on the node's address, and not on loopback."""
    from prometheus_client.parser import text_string_to_metric_families

    require_root()
    for tool in ("unshare", "mount", "ip", "setpriv", "nsenter"):
        require_tool(tool)
    node_ip = "192.0.2.10"  # the "node's" address, on a veth pair inside a namespace the test made
    netns = f"ngp-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "node0", "type", "veth", "peer", "name", "node0p"],
                    ["addr", "add", f"{node_ip}/24", "dev", "node0"], ["link", "set", "node0", "up"],
                    ["link", "set", "node0p", "up"]):
            subprocess.run(["ip", "-n", netns, *cmd], check=True, capture_output=True)
        objs = objects({"metrics": {"enabled": True}})
        run = pod_on_node(one(objs, "DaemonSet"), configmaps_by_name(objs), sandbox, workdir, netns=netns,
                          pod_ip=node_ip)
        assert run.argv[run.argv.index("--metrics-bind-address") + 1] == f"{node_ip}:9464"
        make_drift(sandbox)
        stderr_path = workdir / "agent.stderr"
        with stderr_path.open("w") as stderr:
            proc = run.start(subprocess.PIPE, stderr)
        try:
            log = EventLog(proc.stdout)
            wait_for("socket-mode detected", lambda: bool(log.named("nodeguard.drift.detected", "socket-mode")),
                     proc, stderr_path)

            def get(url: str) -> subprocess.CompletedProcess[str]:
                code = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], " \
                       "timeout=5).read().decode())"
                return subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", code, url],
                                      capture_output=True, text=True, timeout=30, check=False)

            def socket_gauge() -> float | None:
                page = get(f"http://{node_ip}:9464/metrics")
                assert page.returncode == 0, page.stderr[-2000:]
                return next((s.value for f in text_string_to_metric_families(page.stdout) for s in f.samples
                             if s.name == "nodeguard_open_drifts" and s.labels.get("rule") == "socket-mode"), None)

            wait_for("the gauge shows the open socket drift", lambda: socket_gauge() == 1.0, proc, stderr_path)
            refused = get("http://127.0.0.1:9464/metrics")
            assert refused.returncode != 0 and "Connection refused" in refused.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
