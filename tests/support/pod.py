"""Run the chart's DaemonSet pod on a sandbox "node", with no cluster: what the kubelet would do.

The pod's filesystem is a folder (the container root). In a private mount namespace, each volume
of the rendered pod is bind-mounted at its mountPath under that root — a hostPath from the same
path of the sandbox host root, the ConfigMap from a folder laid out the way the kubelet's atomic
writer does (`..<timestamp>/`, a `..data` symlink, one symlink per key), an emptyDir from an empty
folder — and the root itself is made read-only (readOnlyRootFilesystem). The agent then runs with
the rendered command, args and env, as root holding only the capabilities the securityContext
adds after dropping ALL (the bounding set, via setpriv) and no_new_privs; the only rewrite is the
container root's prefix on absolute paths. It also gets a network namespace of its own: that is
the "node's" network (hostNetwork), so nothing it does to netfilter can reach this machine's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.sandbox import Sandbox

# What the image's Dockerfile sets up around the agent (kept in step by test_pod_on_node).
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
IMAGE_HOST_SYMLINKS = {"/host/var/run": "/run"}


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command and args: a variable of the container's env is
    replaced, an unknown one stays as written, `$$` is a literal `$`."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def write_configmap(folder: Path, data: dict[str, str]) -> None:
    """The kubelet's AtomicWriter: the files in a fresh timestamped folder, then one rename of `..data`."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + f"{time.time_ns() % 10**9:09d}"
    payload = folder / stamp
    payload.mkdir()
    for key, text in data.items():
        (payload / key).write_text(text)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    tmp = folder / "..data_tmp"
    tmp.symlink_to(stamp)
    os.rename(tmp, folder / "..data")
    for key in data:
        link = folder / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    if old is not None:
        for f in (folder / old).iterdir():
            f.unlink()
        (folder / old).rmdir()


@dataclass
class Mount:
    source: Path
    target: Path  # under the container root
    is_file: bool = False
    read_only: bool = False


@dataclass
class PodOnNode:
    container_root: Path
    configmap_dirs: dict[str, Path]  # ConfigMap volume name -> the folder behind its mount
    netns: str | None = None  # the node's network (hostNetwork): a named namespace, or a fresh one
    mounts: list[Mount] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] | None = None  # securityContext: drop ALL, add these; None keeps root's
    no_new_privs: bool = False  # securityContext.allowPrivilegeEscalation: false

    def container_path(self, path: str) -> str:
        return str(self.container_root) + path if path.startswith("/") else path

    def launcher(self, argv: list[str]) -> list[str]:
        """`unshare` a mount and network namespace, mount the volumes, make / read-only, exec `argv`."""
        root = shlex.quote(str(self.container_root))
        lines = ["set -e", "ip link set lo up", f"mount --bind {root} {root}"]
        for m in self.mounts:
            target = shlex.quote(str(m.target))
            make = f"[ -e {target} ] || touch {target}" if m.is_file else f"mkdir -p {target}"
            lines += [make, f"mount --bind {shlex.quote(str(m.source))} {target}"]
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {target}")
        lines.append(f"mount -o remount,bind,ro {root}")
        if self.capabilities is not None:
            # Root keeps, across exec, only what the bounding set allows: the container's set.
            bounding = ",".join(["-all", *(f"+{c.lower()}" for c in self.capabilities)])
            nnp = " --no-new-privs" if self.no_new_privs else ""
            lines.append(f'exec setpriv --bounding-set={bounding} --inh-caps=-all{nnp} -- "$@"')
        else:
            lines.append('exec "$@"')
        script = ["sh", "-c", "\n".join(lines), "sh", *argv]
        if self.netns is None:
            return ["unshare", "--mount", "--net", "--propagation", "private", "--", *script]
        return ["nsenter", f"--net=/var/run/netns/{self.netns}",
                "unshare", "--mount", "--propagation", "private", "--", *script]

    def start(self, stdout: Any, stderr: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.launcher(self.argv), env=self.env, stdout=stdout, stderr=stderr, text=True)


def pod_on_node(daemonset: dict[str, Any], configmaps: dict[str, dict[str, Any]], sandbox: Sandbox,
                workdir: Path, *, node_name: str = "node-a", netns: str | None = None,
                pod_ip: str = "127.0.0.1") -> PodOnNode:
    """Lay out the pod of `daemonset` on the sandbox node; `configmaps` by name, as rendered."""
    pod = daemonset["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    root = workdir / "container"
    root.mkdir(parents=True)
    for link, target in IMAGE_HOST_SYMLINKS.items():
        p = root / link.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
    run = PodOnNode(root, {}, netns)
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Parents before children, as runc mounts them.
    for vm in sorted(c["volumeMounts"], key=lambda m: m["mountPath"].count("/")):
        vol = volumes[vm["name"]]
        target = root / vm["mountPath"].lstrip("/")
        if "hostPath" in vol:
            source = sandbox.path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                source.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                source.parent.mkdir(parents=True, exist_ok=True)
                source.touch(exist_ok=True)
            elif kind == "Directory":
                assert source.is_dir(), f"hostPath {vol['hostPath']['path']} must exist on the node"
            elif kind == "" and not source.exists():
                source.mkdir(parents=True)  # what container runtimes do with an unchecked, missing hostPath
            run.mounts.append(Mount(source, target, is_file=source.is_file(), read_only=vm.get("readOnly", False)))
        elif "configMap" in vol:
            source = workdir / f"configmap-{vm['name']}"
            write_configmap(source, configmaps[vol["configMap"]["name"]]["data"])
            run.configmap_dirs[vm["name"]] = source
            run.mounts.append(Mount(source, target, read_only=vm.get("readOnly", False)))
        elif "emptyDir" in vol:
            source = workdir / f"emptydir-{vm['name']}"
            source.mkdir()
            run.mounts.append(Mount(source, target))
        else:
            raise AssertionError(f"volume {vm['name']}: a kind this harness does not lay out: {vol}")
    security = c.get("securityContext", {})
    caps = security.get("capabilities", {})
    assert security.get("privileged") is not True, "a privileged container has every capability"
    if caps.get("drop") == ["ALL"]:
        run.capabilities = list(caps.get("add", []))
    run.no_new_privs = security.get("allowPrivilegeEscalation") is False
    field_values = {"spec.nodeName": node_name, "metadata.name": f"nodeguard-{node_name}",
                    "metadata.namespace": "nodeguard", "metadata.uid": "00000000-0000-4000-8000-00000000000a",
                    # hostNetwork: the pod's IP is the node's.
                    "status.podIP": pod_ip, "status.hostIP": pod_ip}
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **IMAGE_ENV}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = field_values[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"env {e['name']}: a source this harness does not resolve: {e}")
    run.env = env
    run.argv = [expand(a, env) for a in c["command"]] + [run.container_path(expand(a, env)) for a in c.get("args", [])]
    return run


def probe_argv(run: PodOnNode, probe: dict[str, Any]) -> list[str]:
    """An exec probe, as the kubelet runs it: in the container, with the container's env."""
    return run.launcher([run.container_path(a) for a in probe["exec"]["command"]])


def configmaps_by_name(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}


def policy_of(configmap: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(configmap["data"]["policy.yaml"])
    return doc


@dataclass
class DockerRun:
    """The DaemonSet's pod as `docker run` arguments: what a container runtime is asked for."""

    args: list[str]  # everything between `docker run` and the image
    command: list[str]  # after the image: the container's command[1:] + args
    probe: list[str]  # the exec probe's command, for `docker exec`
    capabilities: list[str]  # the securityContext's add list, after dropping ALL


def docker_run_args(daemonset: dict[str, Any], configmaps: dict[str, dict[str, Any]], sandbox: Sandbox,
                    workdir: Path, *, node_name: str = "node-a") -> DockerRun:
    """Translate the rendered pod, field by field; a field this cannot translate fails the test.

    hostNetwork becomes `--network host`, which is the *test dockerd's* network namespace (every
    test dockerd runs in a namespace of its own: tests/support/dockerd.py), never this machine's.
    hostPID becomes `--pid host`: the agent must see and SIGHUP the test dockerd.
    """
    pod = daemonset["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    args = ["--name", f"nodeguard-{node_name}", "--hostname", node_name]
    known_pod = {"serviceAccountName", "automountServiceAccountToken", "hostNetwork", "dnsPolicy", "hostPID",
                 "priorityClassName", "terminationGracePeriodSeconds", "tolerations", "nodeSelector",
                 "securityContext", "containers", "volumes"}
    assert set(pod) <= known_pod, f"pod fields this translation ignores: {set(pod) - known_pod}"
    if pod.get("hostNetwork"):
        args += ["--network", "host"]
    else:
        args += ["--network", "none"]
    if pod.get("hostPID"):
        args += ["--pid", "host"]
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") not in (None, "RuntimeDefault"):
        raise AssertionError("only the runtime's default seccomp profile is translated")
    args += ["--stop-timeout", str(pod.get("terminationGracePeriodSeconds", 30))]
    # securityContext
    assert sc.get("privileged") is False
    args += ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = sc["capabilities"]
    assert caps["drop"] == ["ALL"]
    args += ["--cap-drop", "ALL"]
    for cap in caps["add"]:
        args += ["--cap-add", cap]
    apparmor = sc.get("appArmorProfile", {}).get("type")
    if apparmor == "Unconfined":
        args += ["--security-opt", "apparmor=unconfined"]
    elif apparmor not in (None, "RuntimeDefault"):
        raise AssertionError(f"appArmorProfile {apparmor} is not translated")
    if sc.get("seLinuxOptions"):
        for key, value in sc["seLinuxOptions"].items():
            args += ["--security-opt", f"label={key}:{value}"]
    # Volumes: hostPath from the sandbox node, the ConfigMap as the kubelet lays it out, emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for vm in c["volumeMounts"]:
        vol = volumes[vm["name"]]
        ro = ",readonly" if vm.get("readOnly") else ""
        if "hostPath" in vol:
            source = sandbox.path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate" or (kind == "" and not source.exists()):
                source.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                source.parent.mkdir(parents=True, exist_ok=True)
                source.touch(exist_ok=True)
            else:
                assert kind in ("Directory", ""), kind
                assert source.is_dir(), f"hostPath {vol['hostPath']['path']} must exist on the node"
            args += ["--mount", f"type=bind,source={source},target={vm['mountPath']}{ro}"]
        elif "configMap" in vol:
            source = workdir / f"configmap-{vm['name']}"
            write_configmap(source, configmaps[vol["configMap"]["name"]]["data"])
            args += ["--mount", f"type=bind,source={source},target={vm['mountPath']}{ro}"]
        elif "emptyDir" in vol:
            size = vol["emptyDir"].get("sizeLimit", "")
            assert vol["emptyDir"].get("medium") == "Memory", "only memory emptyDirs are translated"
            opts = f"rw,size={size[:-2].lower()}m" if size.endswith("Mi") else "rw"
            args += ["--tmpfs", f"{vm['mountPath']}:{opts}"]
        else:
            raise AssertionError(f"volume {vm['name']}: a kind this translation does not know: {vol}")
    field_values = {"spec.nodeName": node_name, "metadata.name": f"nodeguard-{node_name}",
                    "metadata.namespace": "nodeguard", "metadata.uid": "00000000-0000-4000-8000-00000000000a",
                    "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = field_values[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"env {e['name']}: a source this translation does not resolve: {e}")
    for name, val in env.items():
        args += ["--env", f"{name}={val}"]
    args += ["--entrypoint", c["command"][0]]
    probe = c["livenessProbe"]["exec"]["command"]
    for name in ("startupProbe", "readinessProbe"):
        assert c[name]["exec"]["command"] == probe, name
    return DockerRun(args, [expand(a, env) for a in [*c["command"][1:], *c["args"]]], probe, list(caps["add"]))
