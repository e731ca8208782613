"""runtime: what the running daemon really does, asked through its API (read-only).

daemon.json says what dockerd should do; `docker info`, the engine version and the containers say
what it does. A container that mounts the daemon socket (by any path that resolves to it, or a
folder holding it) is root on the host; so is a privileged one, created or running. Settings
written to daemon.json but not yet applied show up here as pending (`restart_required`).

Observe-only: nodeguard reports these, it never stops or changes a container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.daemon_settings import RELOADABLE_KEYS, hosts_of
from nodeguard.docker_api import CallCounter
from nodeguard.host import HostPathError, HostRoot, expand_glob
from nodeguard.policy import Policy, RuntimePolicy
from nodeguard.structs import Finding, JSONValue, Rule, Severity, Status

# Docker's default capability set (moby oci/caps/defaults.go): adding one of these changes nothing.
DEFAULT_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
DEFAULT_DATA_ROOT = "/var/lib/docker"
_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def version_tuple(text: str) -> tuple[int, int, int] | None:
    """"20.10.24+dfsg1" -> (20, 10, 24); "v1.2" -> (1, 2, 0); None when there is no leading number."""
    m = _VERSION.match(text.strip())
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


@dataclass
class MountView:
    type: str
    source: str  # as the daemon names it
    destination: str
    rw: bool
    host_path: str | None  # the source resolved inside the host root (symlinks followed); None if unresolvable


@dataclass
class ContainerView:
    id: str
    name: str
    state: str
    image: str
    privileged: bool
    cap_add: list[str]
    pid_mode: str
    network_mode: str
    security_opt: list[str]
    mounts: list[MountView]


@dataclass
class RuntimeObservation:
    socket: str
    error: str | None = None
    version: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    containers: list[ContainerView] = field(default_factory=list)
    # Resolved host paths: the daemon's unix sockets, and every sensitive path (policy path -> resolved).
    daemon_sockets: list[str] = field(default_factory=list)
    sensitive: dict[str, str] = field(default_factory=dict)
    data_root: str = DEFAULT_DATA_ROOT
    configured: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    rootless_sockets: list[str] = field(default_factory=list)
    apparmor_available: bool | None = None
    api_calls: int = 0
    # The socket accepted the connection but the daemon did not answer within the timeout.
    unresponsive: bool = False


def canonical(host: HostRoot, daemon_path: str) -> str | None:
    """A path as the daemon names it -> the host path it really is (symlinks inside the root followed)."""
    try:
        return host.host_path_of(host.resolve(host.from_daemon_path(daemon_path)))
    except (HostPathError, OSError):
        return None


def _within(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder.rstrip("/") + "/")


def security_options(info: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`docker info` SecurityOptions ["name=seccomp,profile=default", "name=userns"] -> {name: {k: v}}."""
    out: dict[str, dict[str, str]] = {}
    for entry in info.get("SecurityOptions") or []:
        fields = dict(part.split("=", 1) for part in str(entry).split(",") if "=" in part)
        name = fields.pop("name", str(entry))
        out[name] = fields
    return out


def _no_new_privileges(opts: list[str]) -> bool | None:
    """True/False when the container sets it explicitly, None when it inherits the daemon's default."""
    for opt in opts:
        key, _, value = opt.replace("=", ":", 1).partition(":")
        if key == "no-new-privileges":
            return value.lower() in ("", "true", "1")
    return None


def _container_view(host: HostRoot, raw: dict[str, Any]) -> ContainerView:
    hc = raw.get("HostConfig") or {}
    mounts = []
    for m in raw.get("Mounts") or []:
        source = str(m.get("Source") or "")
        mtype = str(m.get("Type") or "")
        mounts.append(MountView(mtype, source, str(m.get("Destination") or ""), bool(m.get("RW", True)),
                                canonical(host, source) if mtype == "bind" and source else None))
    state = raw.get("State") or {}
    return ContainerView(
        id=str(raw.get("Id", ""))[:12],
        name=str(raw.get("Name", "")).lstrip("/"),
        state=str(state.get("Status", "")) if isinstance(state, dict) else str(state),
        image=str((raw.get("Config") or {}).get("Image", "")),
        privileged=bool(hc.get("Privileged")),
        cap_add=[str(c).upper().removeprefix("CAP_") for c in hc.get("CapAdd") or []],
        pid_mode=str(hc.get("PidMode") or ""),
        network_mode=str(hc.get("NetworkMode") or ""),
        security_opt=[str(o) for o in hc.get("SecurityOpt") or []],
        mounts=mounts,
    )


def find_rootless_sockets(host: HostRoot, pattern: str) -> list[str]:
    """Sockets matching a glob such as /run/user/*/docker.sock, each component matched inside the root."""
    out = []
    for path in expand_glob(pattern, host.listdir):
        st = host.stat(path)
        if st is not None and st.kind == "socket":
            out.append(path)
    return sorted(out)


class RuntimeControl(Control):
    name: ClassVar[str] = "runtime"
    policy_key: ClassVar[str] = "runtime"
    # CIS Docker Benchmark v1.6.0 numbering (section 5 gained "swarm mode" as 5.1 in 1.6.0).
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("engine-version", "the Docker engine is at least the policy's minimum", Severity.HIGH, "1.2.2"),
        Rule("rootless", "the daemon runs rootless", Severity.INFO, "2.1"),
        Rule("userns-remap-active", "user namespace remapping is active in the running daemon", Severity.MEDIUM,
             "2.9"),
        Rule("live-restore-active", "live restore is active in the running daemon", Severity.LOW, "2.15"),
        Rule("seccomp-active", "the daemon applies a seccomp profile", Severity.HIGH, None),
        Rule("apparmor-active", "the daemon applies AppArmor where the kernel has it", Severity.MEDIUM, None),
        Rule("config-applied", "what daemon.json says is what the daemon runs with", Severity.MEDIUM, None),
        Rule("rootless-daemons", "no per-user (rootless) daemon outside the policy", Severity.LOW, None),
        Rule("added-capabilities", "containers add no capabilities", Severity.MEDIUM, "5.4"),
        Rule("privileged", "no privileged containers", Severity.CRITICAL, "5.5"),
        Rule("sensitive-mount", "no container mounts the host root or a sensitive host path", Severity.HIGH,
             "5.6"),
        Rule("host-network", "no container shares the host's network namespace", Severity.MEDIUM, "5.10"),
        Rule("host-pid", "no container shares the host's process namespace", Severity.HIGH, "5.16"),
        Rule("no-new-privileges", "containers cannot gain new privileges", Severity.MEDIUM, "5.26"),
        Rule("docker-socket-mount", "no container mounts the daemon socket", Severity.CRITICAL, "5.32"),
        Rule("daemon-unresponsive", "the daemon answers its API within the policy's timeout", Severity.HIGH,
             None),
    )
    CONTAINER_RULES: ClassVar[tuple[str, ...]] = (
        "added-capabilities", "privileged", "sensitive-mount", "host-network", "host-pid", "no-new-privileges",
        "docker-socket-mount")

    def _settings(self, policy: Policy) -> RuntimePolicy:
        s = self.settings(policy)
        assert isinstance(s, RuntimePolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        # The socket is re-created at every daemon start: its folder wakes us for a restart.
        real = ctx.host.resolve(ctx.policy.spec.controls.socket.path)
        return [ctx.host.host_path_of(real.parent)]

    # -- observe -------------------------------------------------------------------------------

    def observe(self, ctx: Context, *, counter: CallCounter | None = None) -> RuntimeObservation:
        s = self._settings(ctx.policy)
        host = ctx.host
        socket_host_path = ctx.policy.spec.controls.socket.path
        obs = RuntimeObservation(socket=socket_host_path)
        try:
            cfg_obs = ctx.daemon_config
        except Exception:  # an unreadable daemon.json is the daemon-config control's finding, not ours
            cfg_obs = None
        cfg: dict[str, Any] = dict(cfg_obs.effective) if cfg_obs is not None else {}
        obs.configured = cfg
        obs.config_path = cfg_obs.path if cfg_obs is not None else None
        obs.data_root = canonical(host, str(cfg.get("data-root") or cfg.get("graph") or DEFAULT_DATA_ROOT)) \
            or DEFAULT_DATA_ROOT
        sockets = {canonical(host, socket_host_path)}
        sockets |= {canonical(host, e.host) for e in hosts_of(cfg) if e.scheme == "unix"}
        obs.daemon_sockets = sorted(p for p in sockets if p)
        for path in s.sensitive_mounts:
            obs.sensitive[path] = canonical(host, path) or path
        obs.rootless_sockets = find_rootless_sockets(host, s.rootless_sockets)
        enabled = host.stat("/sys/module/apparmor/parameters/enabled")
        if enabled is not None:
            try:
                obs.apparmor_available = host.read_text("/sys/module/apparmor/parameters/enabled",
                                                        limit=16).strip().upper().startswith("Y")
            except OSError:
                obs.apparmor_available = None
        reads = ctx.read_daemon(host.resolve(socket_host_path), socket_host_path, s.timeout_seconds, counter)
        obs.version, obs.info = reads.version, reads.info
        obs.containers = [_container_view(host, raw) for raw in reads.containers]
        obs.error, obs.unresponsive, obs.api_calls = reads.error, reads.unresponsive, reads.calls
        return obs

    # -- evaluate ------------------------------------------------------------------------------

    def evaluate(self, observed: RuntimeObservation, policy: Policy) -> list[Finding]:
        s = self._settings(policy)
        obs = observed
        others = [r.id for r in self.rules if r.id != "daemon-unresponsive"]
        if obs.unresponsive:
            # A hung daemon is a finding of its own (reported once: it stays failing until it answers).
            return [self.finding("daemon-unresponsive", Status.FAIL, f"{obs.error}: the daemon is hung; "
                                 "its containers and settings cannot be checked", observed="no answer",
                                 expected=f"an answer within {s.timeout_seconds:g}s", path=obs.socket),
                    *self.skip_all(f"runtime checks skipped: {obs.error}", others, path=obs.socket)]
        if obs.error is not None:
            return self.skip_all(f"runtime checks skipped: {obs.error}", path=obs.socket)
        out: list[Finding] = [self.finding("daemon-unresponsive", Status.PASS, "the daemon answers its API",
                                           observed="answered", expected=f"an answer within {s.timeout_seconds:g}s",
                                           path=obs.socket)]
        out += self._engine(obs, s)
        out += self._active_settings(obs)
        out += self._rootless_daemons(obs)
        out += self._containers(obs, s)
        return out

    def _engine(self, obs: RuntimeObservation, s: RuntimePolicy) -> list[Finding]:
        have_text = str(obs.version.get("Version", ""))
        have = version_tuple(have_text)
        want = version_tuple(s.min_engine_version)
        assert want is not None  # the policy's pattern guarantees it
        details = {"api_version": obs.version.get("ApiVersion"), "os": obs.version.get("Os"),
                   "kernel": obs.version.get("KernelVersion")}
        if have is None:
            return [self.finding("engine-version", Status.FAIL, f"engine version {have_text!r} cannot be read",
                                 observed=have_text, expected=f">= {s.min_engine_version}", details=details)]
        ok = have >= want
        return [self.finding(
            "engine-version", Status.PASS if ok else Status.FAIL,
            f"engine {have_text}" + ("" if ok else f" is older than the policy's minimum {s.min_engine_version}"),
            observed=have_text, expected=f">= {s.min_engine_version}", details=details)]

    def _pending(self, obs: RuntimeObservation, key: str, configured: JSONValue, active: JSONValue,
                 out: list[Finding]) -> dict[str, JSONValue]:
        """A config-applied finding for one key; returns details to attach to the setting's finding."""
        source = "file" if key in obs.configured else "default"
        if configured == active:
            out.append(self.finding("config-applied", Status.PASS, f"{key}: running value matches daemon.json",
                                    observed=active, expected=configured, path=obs.config_path, subject=key,
                                    details={"source": source}))
            return {}
        restart = key not in RELOADABLE_KEYS
        how = "a daemon restart" if restart else "a reload (SIGHUP)"
        out.append(self.finding(
            "config-applied", Status.FAIL,
            f"{key}: daemon.json says {configured!r} but the daemon runs with {active!r}: pending until {how}",
            observed=active, expected=configured, path=obs.config_path, subject=key,
            details={"pending": True, "restart_required": restart, "reload_required": not restart,
                     "source": source}))
        return {"pending": configured, "restart_required": restart}

    def _active_settings(self, obs: RuntimeObservation) -> list[Finding]:
        info, cfg = obs.info, obs.configured
        secopts = security_options(info)
        out: list[Finding] = []
        applied: list[Finding] = []

        # userns-remap: only a restart applies it; `docker info` shows name=userns when active.
        remap_cfg = cfg.get("userns-remap") or None
        remap_on = "userns" in secopts
        pend = self._pending(obs, "userns-remap", bool(remap_cfg), remap_on, applied)
        out.append(self.finding(
            "userns-remap-active", Status.PASS if remap_on else Status.FAIL,
            "user namespace remapping is active" if remap_on else
            ("userns-remap is written in daemon.json but not active: restart pending" if remap_cfg else
             "no user namespace remapping: root in a container is root on the host"),
            observed=remap_on, expected=True, details={"configured": remap_cfg, **pend}))

        live_cfg = bool(cfg.get("live-restore", False))
        live_on = bool(info.get("LiveRestoreEnabled"))
        pend = self._pending(obs, "live-restore", live_cfg, live_on, applied)
        out.append(self.finding(
            "live-restore-active", Status.PASS if live_on else Status.FAIL,
            "live restore is active" if live_on else "live restore is off in the running daemon"
            + (": written in daemon.json, reload pending" if live_cfg else ""),
            observed=live_on, expected=True, details={"configured": live_cfg, **pend}))

        seccomp = secopts.get("seccomp")
        profile = seccomp.get("profile", "default") if seccomp is not None else None
        confined = profile is not None and profile != "unconfined"
        out.append(self.finding(
            "seccomp-active", Status.PASS if confined else Status.FAIL,
            f"seccomp profile {profile!r} is applied to containers" if confined else
            ("seccomp is not compiled in or not supported: containers run without a syscall filter"
             if profile is None else "the daemon's seccomp profile is unconfined"),
            observed=profile, expected="a profile (default or custom)",
            details={"configured": cfg.get("seccomp-profile")}))
        if "seccomp-profile" in cfg and profile is not None:
            want = str(cfg["seccomp-profile"])
            # The running daemon names its custom profile by path (or "builtin"/"default" for its own).
            same = (want == profile or (want in ("builtin", "default") and profile in ("builtin", "default"))
                    or (want not in ("unconfined", "builtin", "default") and profile not in ("unconfined",
                                                                                           "builtin", "default")))
            self._pending(obs, "seccomp-profile", want, want if same else profile, applied)

        if obs.apparmor_available is False:
            out.append(self.finding("apparmor-active", Status.SKIP, "AppArmor is not enabled in this host's kernel",
                                    observed="apparmor" in secopts, expected=True))
        else:
            on = "apparmor" in secopts
            out.append(self.finding(
                "apparmor-active", Status.PASS if on else Status.FAIL,
                "containers get an AppArmor profile" if on else "the daemon applies no AppArmor profile",
                observed=on, expected=True, details={"kernel_apparmor": obs.apparmor_available}))

        rootless = "rootless" in secopts
        out.append(self.finding(
            "rootless", Status.PASS if rootless else Status.FAIL,
            "the daemon runs rootless" if rootless else "the daemon runs as root (CIS 2.1: rootless if possible)",
            observed=rootless, expected=True))

        self._pending(obs, "log-driver", str(cfg.get("log-driver", "json-file")), str(info.get("LoggingDriver")),
                      applied)
        if "debug" in cfg:
            self._pending(obs, "debug", bool(cfg["debug"]), bool(info.get("Debug")), applied)
        if "default-runtime" in cfg:
            self._pending(obs, "default-runtime", str(cfg["default-runtime"]), str(info.get("DefaultRuntime")),
                          applied)
        return out + applied

    def _rootless_daemons(self, obs: RuntimeObservation) -> list[Finding]:
        # The daemon the policy names may itself be a rootless one: it is audited, not "outside".
        others = [p for p in obs.rootless_sockets if p not in obs.daemon_sockets]
        if not others:
            return [self.finding("rootless-daemons", Status.PASS, "no other per-user docker socket on this host",
                                 observed=[], expected=[])]
        out = []
        for path in others:
            uid = path.split("/")[3] if path.startswith("/run/user/") else None
            out.append(self.finding(
                "rootless-daemons", Status.FAIL,
                f"a rootless dockerd listens on {path}" + (f" (uid {uid})" if uid else "")
                + ": its containers and settings are outside this policy's daemon checks",
                observed=path, expected="no per-user daemon", path=path, subject=path, details={"uid": uid}))
        return out

    def _containers(self, obs: RuntimeObservation, s: RuntimePolicy) -> list[Finding]:
        hits: dict[str, list[Finding]] = {r: [] for r in self.CONTAINER_RULES}
        sensitive = dict(obs.sensitive)
        if obs.data_root not in sensitive.values():
            sensitive[obs.data_root] = obs.data_root  # a data root moved elsewhere is as sensitive
        nnp_default = bool(obs.configured.get("no-new-privileges", False))

        def hit(rule: str, c: ContainerView, message: str, observed: JSONValue, expected: JSONValue,
                allowed: list[str] | None = None, **details: JSONValue) -> None:
            if allowed is not None and c.name in allowed:
                return
            hits[rule].append(self.finding(
                rule, Status.FAIL, f"container {c.name} ({c.state}): {message}", observed=observed,
                expected=expected, subject=c.name,
                details={"container_id": c.id, "image": c.image, "state": c.state, **details}))

        for c in sorted(obs.containers, key=lambda c: c.name):
            if c.privileged:
                hit("privileged", c, "runs --privileged: every device and capability of the host", True, False,
                    s.allowed_privileged)
            added = {cap.upper().removeprefix("CAP_") for cap in c.cap_add}
            extra = sorted({cap for cap in added if cap not in DEFAULT_CAPABILITIES}
                           - set(s.allowed_capabilities))
            if extra:
                hit("added-capabilities", c, f"adds capabilities {extra}", extra, s.allowed_capabilities)
            if c.pid_mode == "host":
                hit("host-pid", c, "shares the host's process namespace (--pid=host)", c.pid_mode, "private",
                    s.allowed_host_namespaces)
            if c.network_mode == "host":
                hit("host-network", c, "shares the host's network namespace (--net=host)", c.network_mode,
                    "not host", s.allowed_host_namespaces)
            nnp = _no_new_privileges(c.security_opt)
            if not (nnp if nnp is not None else nnp_default):
                how = "disables it explicitly" if nnp is False else "does not set it and the daemon's default is off"
                hit("no-new-privileges", c, f"can gain new privileges (no-new-privileges: {how})",
                    c.security_opt, "no-new-privileges:true")
            socket_mounts: list[dict[str, JSONValue]] = []
            sensitive_mounts: list[dict[str, JSONValue]] = []
            for m in c.mounts:
                if m.type != "bind" or m.host_path is None:
                    continue
                seen = {"source": m.source, "resolved": m.host_path, "destination": m.destination,
                        "read_only": not m.rw}
                sock = next((p for p in obs.daemon_sockets if _within(p, m.host_path)), None)
                if sock is not None:
                    socket_mounts.append({**seen, "socket": sock})
                if m.host_path == "/":
                    sensitive_mounts.append({**seen, "sensitive": "/"})
                    continue
                for name, real in sensitive.items():
                    # The folder itself or one holding it, in any mode; something inside it, when writable.
                    if _within(real, m.host_path) or (m.rw and _within(m.host_path, real)):
                        sensitive_mounts.append({**seen, "sensitive": name})
                        break
            if socket_mounts:
                text = ", ".join(
                    f"{m['source']} at {m['destination']}"
                    + ("" if m["resolved"] == m["socket"] else f" (the folder {m['resolved']} holds {m['socket']})")
                    for m in socket_mounts)
                hit("docker-socket-mount", c, f"mounts the daemon socket: {text}: root on the host",
                    [m["source"] for m in socket_mounts], "no daemon socket inside containers",
                    s.allowed_socket_mounts, mounts=socket_mounts)
            if sensitive_mounts:
                text = ", ".join(
                    "the host root / at " + str(m["destination"]) if m["sensitive"] == "/" else
                    f"{m['source']} ({'ro' if m['read_only'] else 'rw'}) at {m['destination']}, "
                    f"exposing {m['sensitive']}" for m in sensitive_mounts)
                hit("sensitive-mount", c, f"mounts {text}", [m["source"] for m in sensitive_mounts],
                    "no sensitive host path", s.allowed_sensitive_mounts, mounts=sensitive_mounts)

        out: list[Finding] = []
        total = len(obs.containers)
        for rule in self.CONTAINER_RULES:
            found = hits[rule]
            if found:
                out += found
            else:
                out.append(self.finding(rule, Status.PASS, f"none of {total} container(s)",
                                        observed=[], expected=[], details={"containers": total}))
        return out
