"""daemon-config: the settings dockerd runs with, from daemon.json *and* its command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.host import FileStat
from nodeguard.policy import DaemonConfigPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

# Keys dockerd applies on SIGHUP; any other changed key needs a daemon restart to take effect.
RELOADABLE_KEYS = frozenset({
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins",
    "insecure-registries", "registry-mirrors", "shutdown-timeout", "features",
    "allow-nondistributable-artifacts", "default-shm-size", "default-ipc-mode", "default-cgroupns-mode",
})
ROTATING_LOG_DRIVERS = ("json-file", "local")
DELETE = object()  # a patch value meaning "remove this key"


@dataclass
class DaemonConfigObservation:
    path: str
    stat: FileStat | None
    raw: bytes | None = None
    config: dict[str, Any] | None = None
    error: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    daemon_pid: int | None = None
    config_file_flag: str | None = None

    @property
    def effective(self) -> dict[str, Any]:
        """File overlaid by flags: what dockerd runs with (it refuses to start on a conflict)."""
        return {**(self.config or {}), **self.flags}

    def source_of(self, key: str) -> str:
        if key in self.flags:
            return "flag"
        if self.config is not None and key in self.config:
            return "file"
        return "default"


def parse_daemon_json(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, why): never raises on hostile input."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    if not text.strip():
        # dockerd treats an empty file as no configuration.
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    if not isinstance(value, dict):
        return None, f"must be a JSON object, found a JSON {type(value).__name__}"
    return value, None


@dataclass(frozen=True)
class Endpoint:
    raw: str
    scheme: str  # tcp, unix, fd, ...
    host: str
    port: int | None


def parse_host(raw: str, tls: bool) -> Endpoint:
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        # `-H 0.0.0.0:2375` and `-H :2375` mean TCP.
        scheme, rest = ("unix", text) if text.startswith("/") else ("tcp", text)
    if scheme != "tcp":
        return Endpoint(raw, scheme, rest, None)
    hostport = rest.split("/", 1)[0]
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else None
    elif hostport.count(":") == 1:
        host, _, p = hostport.partition(":")
        port = int(p) if p.isdigit() else None
    if port is None:
        port = 2376 if tls else 2375
    return Endpoint(raw, "tcp", host or "0.0.0.0", port)  # noqa: S104 (it is what dockerd binds)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def tls_enabled(cfg: dict[str, Any]) -> bool:
    return _truthy(cfg.get("tlsverify")) or _truthy(cfg.get("tls"))


def hosts_of(cfg: dict[str, Any]) -> list[Endpoint]:
    hosts = cfg.get("hosts") or []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list):
        return []
    tls = tls_enabled(cfg)
    return [parse_host(str(h), tls) for h in hosts]


class DaemonConfigControl(Control):
    name: ClassVar[str] = "daemon-config"
    policy_key: ClassVar[str] = "daemonConfig"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("valid-json", "daemon.json is a valid JSON object", Severity.HIGH, None, True),
        Rule("tcp-host-tls", "a TCP listener requires tlsverify", Severity.CRITICAL, "2.7", True),
        Rule("plaintext-2375", "no listener on the plaintext port 2375", Severity.CRITICAL, "2.7", True),
        Rule("tls-verify", "tls is never on without tlsverify", Severity.HIGH, "2.7", False),
        Rule("icc", "inter-container traffic off on the default bridge", Severity.MEDIUM, "2.2", True),
        Rule("log-level", "log level is the policy's", Severity.LOW, "2.3", True),
        Rule("iptables", "Docker may manage iptables", Severity.MEDIUM, "2.4", True),
        Rule("insecure-registries", "no insecure registries beyond the allowed", Severity.HIGH, "2.5", True),
        Rule("storage-driver", "aufs storage driver is not used", Severity.MEDIUM, "2.6", False),
        Rule("userns-remap", "user namespace remapping is enabled", Severity.MEDIUM, "2.9", False),
        Rule("no-new-privileges", "containers cannot gain new privileges", Severity.MEDIUM, "2.14", True),
        Rule("live-restore", "live restore is enabled", Severity.LOW, "2.15", True),
        Rule("userland-proxy", "userland proxy is disabled", Severity.LOW, "2.16", True),
        Rule("experimental", "experimental features are off", Severity.LOW, "2.18", True),
        Rule("log-rotation", "local container logs are rotated", Severity.LOW, None, True),
    )

    def config_path(self, ctx: Context) -> str:
        daemon = ctx.daemon
        if daemon is not None and daemon.flags.get("config-file"):
            return ctx.host.from_daemon_path(daemon.flags["config-file"][-1])
        settings = self.settings(ctx.policy)
        assert isinstance(settings, DaemonConfigPolicy)
        return settings.path

    def watch_paths(self, ctx: Context) -> list[str]:
        return [self.config_path(ctx).rsplit("/", 1)[0] or "/"]

    def observe(self, ctx: Context) -> DaemonConfigObservation:
        path = self.config_path(ctx)
        obs = DaemonConfigObservation(path=path, stat=ctx.host.lstat(path))
        daemon = ctx.daemon
        if daemon is not None:
            obs.daemon_pid = daemon.pid
            flags = daemon.config_values()
            obs.config_file_flag = flags.pop("config-file", None)  # type: ignore[assignment]
            obs.flags = flags
        if obs.stat is None:
            return obs
        try:
            obs.raw = ctx.host.read_bytes(path, follow=False)
        except OSError as exc:
            obs.error = f"cannot read: {exc.strerror or exc}"
            return obs
        obs.config, obs.error = parse_daemon_json(obs.raw)
        return obs

    def evaluate(self, observed: DaemonConfigObservation, policy: Policy) -> list[Finding]:
        settings = self.settings(policy)
        assert isinstance(settings, DaemonConfigPolicy)
        obs = observed
        path = obs.path
        out: list[Finding] = []
        if obs.stat is None:
            out.append(self.finding("valid-json", Status.PASS, "no daemon.json: dockerd uses its defaults",
                                    observed="absent", expected="valid JSON object", path=path))
        elif obs.error is not None:
            out.append(self.finding("valid-json", Status.FAIL, f"{path}: {obs.error}",
                                    observed=obs.error, expected="valid JSON object", path=path))
            others = [r.id for r in self.rules if r.id != "valid-json"]
            return out + self.skip_all(f"{path} cannot be parsed; fix it first", others, path)
        else:
            out.append(self.finding("valid-json", Status.PASS, "valid JSON object",
                                    observed="valid", expected="valid JSON object", path=path))
        cfg = obs.effective

        def src(key: str) -> dict[str, Any]:
            return {"source": obs.source_of(key)}

        # -- listeners named by the configuration ---------------------------------------------
        verify = _truthy(cfg.get("tlsverify"))
        tcp = [e for e in hosts_of(cfg) if e.scheme == "tcp"]
        unverified = [e.raw for e in tcp if not verify]
        out.append(self.finding(
            "tcp-host-tls", Status.FAIL if unverified else Status.PASS,
            f"TCP listener(s) {unverified} without tlsverify: anyone reaching them is root"
            if unverified else "every TCP listener requires client certificates",
            observed=[e.raw for e in tcp] or None, expected="tlsverify: true for every tcp:// host",
            path=path, details=src("hosts")))
        plain = [e.raw for e in tcp if e.port == 2375]
        out.append(self.finding(
            "plaintext-2375", Status.FAIL if plain else Status.PASS,
            f"listener(s) {plain} on the plaintext Docker port 2375" if plain else "nothing on port 2375",
            observed=plain or None, expected="no listener on 2375", path=path, details=src("hosts")))
        tls_only = _truthy(cfg.get("tls")) and not verify
        out.append(self.finding(
            "tls-verify", Status.FAIL if tls_only else Status.PASS,
            "tls is on but tlsverify is not: any client certificate (or none) is accepted"
            if tls_only else "tls, where on, verifies clients",
            observed={"tls": cfg.get("tls"), "tlsverify": cfg.get("tlsverify")},
            expected={"tlsverify": True}, path=path, details=src("tlsverify")))

        # -- single-key settings --------------------------------------------------------------
        def exact(rule: str, key: str, want: Any, default: Any, why: str) -> None:
            have = cfg.get(key, default)
            ok = (_truthy(have) == want) if isinstance(want, bool) else have == want
            out.append(self.finding(
                rule, Status.PASS if ok else Status.FAIL,
                f"{key} is {json.dumps(have)}" + ("" if ok else f": {why}"),
                observed=have, expected=want, path=path, details=src(key)))

        exact("icc", "icc", False, True, "containers on the default bridge can talk to each other")
        exact("log-level", "log-level", settings.log_level, "info", f"CIS asks for {settings.log_level!r}")
        exact("iptables", "iptables", True, True, "Docker cannot keep its network rules in place")
        exact("no-new-privileges", "no-new-privileges", True, False, "setuid binaries can escalate")
        exact("live-restore", "live-restore", True, False, "a daemon restart stops every container")
        exact("userland-proxy", "userland-proxy", False, True, "docker-proxy widens the attack surface")
        exact("experimental", "experimental", False, False, "experimental features in production")

        registries = cfg.get("insecure-registries") or []
        if not isinstance(registries, list):
            registries = [registries]
        bad = [r for r in registries if r not in settings.allowed_insecure_registries]
        out.append(self.finding(
            "insecure-registries", Status.FAIL if bad else Status.PASS,
            f"insecure registries {bad} are not allowed" if bad else "no disallowed insecure registry",
            observed=registries, expected=settings.allowed_insecure_registries, path=path,
            details=src("insecure-registries")))

        driver = cfg.get("storage-driver")
        out.append(self.finding(
            "storage-driver", Status.FAIL if driver == "aufs" else Status.PASS,
            f"storage driver is {driver or 'the default'}", observed=driver, expected="not aufs", path=path,
            details=src("storage-driver")))

        remap = cfg.get("userns-remap")
        out.append(self.finding(
            "userns-remap", Status.PASS if remap else Status.FAIL,
            f"userns-remap is {remap!r}" if remap else "no user namespace remapping: root in a container is root",
            observed=remap, expected="set (e.g. \"default\")", path=path, details=src("userns-remap")))

        log_driver = cfg.get("log-driver", "json-file")
        opts = cfg.get("log-opts") if isinstance(cfg.get("log-opts"), dict) else {}
        assert isinstance(opts, dict)
        rotated = log_driver not in ROTATING_LOG_DRIVERS or ("max-size" in opts and "max-file" in opts)
        out.append(self.finding(
            "log-rotation", Status.PASS if rotated else Status.FAIL,
            f"log driver {log_driver} with max-size={opts.get('max-size')} max-file={opts.get('max-file')}",
            observed={"log-driver": log_driver, "max-size": opts.get("max-size"), "max-file": opts.get("max-file")},
            expected={"max-size": settings.log_rotation.max_size, "max-file": settings.log_rotation.max_file},
            path=path, details=src("log-opts")))
        return out

    # -- enforce ---------------------------------------------------------------------------

    def patch_for(self, rule_id: str, observed: DaemonConfigObservation, policy: Policy) -> dict[str, Any]:
        """The daemon.json keys that put `rule_id` back to policy ({} when the file cannot fix it)."""
        settings = self.settings(policy)
        assert isinstance(settings, DaemonConfigPolicy)
        cfg = observed.config or {}
        fixed: dict[str, Any] = {
            "icc": {"icc": False},
            "log-level": {"log-level": settings.log_level},
            "iptables": {"iptables": True},
            "no-new-privileges": {"no-new-privileges": True},
            "live-restore": {"live-restore": True},
            "userland-proxy": {"userland-proxy": False},
            "experimental": {"experimental": False},
        }
        if rule_id in fixed:
            key = next(iter(fixed[rule_id]))
            return {} if observed.source_of(key) == "flag" else fixed[rule_id]
        if rule_id == "insecure-registries":
            if observed.source_of("insecure-registries") == "flag":
                return {}
            # Reload applies only keys present: an explicit list, never a deleted key.
            kept = [r for r in cfg.get("insecure-registries") or [] if r in settings.allowed_insecure_registries]
            return {"insecure-registries": kept}
        if rule_id == "log-rotation":
            opts = dict(cfg.get("log-opts") or {})
            opts.setdefault("max-size", settings.log_rotation.max_size)
            opts.setdefault("max-file", settings.log_rotation.max_file)
            return {"log-opts": opts}
        if rule_id in ("tcp-host-tls", "plaintext-2375"):
            if observed.source_of("hosts") != "file":
                return {}
            verify = _truthy(cfg.get("tlsverify"))
            kept_hosts = [e.raw for e in hosts_of(cfg)
                          if e.scheme != "tcp" or (verify and e.port != 2375)]
            # Never add a hosts key, and drop an emptied one: a socket-activated daemon (-H fd://)
            # refuses to start with hosts in the file.
            return {"hosts": kept_hosts if kept_hosts else DELETE}
        return {}
