"""daemon-config: the settings dockerd runs with, from daemon.json *and* its command line.

Every setting is read from both places and judged on the effective value (a flag wins: dockerd
refuses to start with one directive in both, so a file edited after the start is pending). The
source and, when they differ, both values go into the finding's details.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard import gojson
from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.host import FileStat
from nodeguard.policy import DaemonConfigPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

if TYPE_CHECKING:
    from nodeguard.state import StateStore

# Keys dockerd applies on SIGHUP; any other changed key needs a daemon restart to take effect.
RELOADABLE_KEYS = frozenset({
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins",
    "insecure-registries", "registry-mirrors", "shutdown-timeout", "features",
    "allow-nondistributable-artifacts", "default-shm-size", "default-ipc-mode", "default-cgroupns-mode",
})
ROTATING_LOG_DRIVERS = ("json-file", "local")
# CIS 2.13: these drivers keep logs on the node only (or nowhere); anything else ships them.
LOCAL_LOG_DRIVERS = frozenset({"json-file", "local", "none"})
# A seccomp profile is read to tell a real filter from an allow-all one; bigger is refused.
SECCOMP_PROFILE_LIMIT = 4 * 1024 * 1024
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
    # CIS 2.17: the daemon-wide seccomp profile's file, when one is named: its defaultAction.
    seccomp_default_action: str | None = None
    seccomp_error: str | None = None

    @property
    def effective(self) -> dict[str, Any]:
        """File overlaid by flags: what dockerd runs with (it refuses to start on a conflict).

        A list key set in both (`hosts` in the file beside `-H`) is audited as the union: the file's
        entries are what a restart would try to apply, so they must not hide behind the flag's.
        """
        cfg = {**(self.config or {}), **self.flags}
        for key, value in (self.config or {}).items():
            flag_value = self.flags.get(key)
            if isinstance(value, list) and isinstance(flag_value, list):
                cfg[key] = value + [v for v in flag_value if v not in value]
        return cfg

    def source_of(self, key: str) -> str:
        if key in self.flags:
            return "flag"
        if self.config is not None and key in self.config:
            return "file"
        return "default"

    def sources(self, key: str) -> dict[str, Any]:
        """Where the effective value comes from; both values when file and flags disagree."""
        out: dict[str, Any] = {"source": self.source_of(key)}
        in_file = self.config is not None and key in self.config
        if key in self.flags and in_file and self.config is not None and self.config[key] != self.flags[key]:
            out["flag"] = self.flags[key]
            out["file"] = self.config[key]
        return out


# JSON's own names in messages: an admin reads "array", not Python's "list".
_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
                    type(None): "null"}


# Deeper than this, a value is kept as a marker: dockerd accepts 10,000 levels (a deep array under
# `runtimes`), but nothing nodeguard audits is nested more than a few levels, and findings, events
# and comparisons must never recurse that deep.
AUDIT_DEPTH = 64
TOO_DEEP = f"<nested deeper than {AUDIT_DEPTH} levels: not audited>"


def parse_daemon_json(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, why), reading the file as dockerd does (nodeguard.gojson): bytes that
    are not UTF-8 become U+FFFD, nesting up to dockerd's 10,000 levels, numbers of any length (out of
    float64 range is dockerd's own refusal), the last of duplicate keys. Never raises."""
    return _parse_text(raw.decode("utf-8", "surrogateescape"))


_BLANK = re.compile(r"[ \t\n\r]*\Z")
# A daemon.json larger than this is parsed without its bytes in memory, which are read again after
# (and compared): its bytes, its text and its parsed values are never all held at once.
REREAD_ABOVE = 1 << 20
# The last reading, for as long as some pass still holds it: a lane reading the same bytes shares
# its parsed values instead of holding a second copy of a 50 MB file.
_LAST: list[weakref.ref[DaemonConfigObservation] | None] = [None]
_BIG_READ = threading.Lock()


def _parse_text(text: str) -> tuple[dict[str, Any] | None, str | None]:
    if _BLANK.match(text):  # (no stripped copy of the whole text)
        # dockerd treats an empty file as no configuration.
        return {}, None
    try:
        value = gojson.loads(text)
    except gojson.GoJSONError as exc:
        return None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    if not isinstance(value, dict):
        return None, f"must be a JSON object, found a JSON {_JSON_TYPE_NAMES.get(type(value), 'value')}"
    limited: dict[str, Any] = gojson.depth_limited(value, AUDIT_DEPTH, TOO_DEEP)
    return limited, None


def _read_into(ctx: Context, obs: DaemonConfigObservation) -> None:
    """obs.raw: daemon.json's bytes; obs.config/obs.error: what dockerd reads in them (parse_daemon_json)."""
    path = obs.path
    with _BIG_READ:  # one reader of a big file at a time: a second lane shares the first one's values
        ref = _LAST[0]
        last = ref() if ref is not None else None
        if last is not None and last.path == path and last.raw is not None and len(last.raw) > REREAD_ABOVE \
                and ctx.host.holds(path, last.raw, follow=False):
            obs.raw, obs.config, obs.error = last.raw, last.config, last.error
            return
        raw = ctx.host.read_bytes(path, follow=False)
        for _ in range(3):
            if len(raw) <= REREAD_ABOVE:
                break
            digest = hashlib.sha256(raw).digest()
            text = raw.decode("utf-8", "surrogateescape")
            del raw
            config, error = _parse_text(text)
            del text
            raw = ctx.host.read_bytes(path, follow=False)
            if hashlib.sha256(raw).digest() == digest:
                obs.raw, obs.config, obs.error = raw, config, error
                _LAST[0] = weakref.ref(obs)
                return
            # Rewritten while it was parsed: what is there now is read.
        obs.raw = raw
        obs.config, obs.error = parse_daemon_json(raw)
        if len(raw) > REREAD_ABOVE:
            _LAST[0] = weakref.ref(obs)


def oddities(raw: bytes) -> list[str]:
    """What dockerd reads differently from a strict JSON reader, for the valid-json finding's details."""
    out = []
    try:
        if not raw.isascii():  # (no decoded copy of a 50 MB file that is plain ASCII)
            raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.append(f"bytes that are not UTF-8 (first at byte {exc.start}) are read as U+FFFD, as dockerd does")
    return out


@dataclass(frozen=True)
class Endpoint:
    raw: str
    scheme: str  # tcp, unix, fd, ...
    host: str
    port: int | None


def _port(text: str) -> int | None:
    # ASCII digits only: "²".isdigit() is True and int("²") raises (found by the fuzz tests).
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else None


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
        port = _port(tail[1:]) if tail.startswith(":") else None
    elif hostport.count(":") == 1:
        host, _, p = hostport.partition(":")
        port = _port(p)
    if port is None:
        port = 2376 if tls else 2375
    return Endpoint(raw, "tcp", host or "0.0.0.0", port)  # noqa: S104 (it is what dockerd binds)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def effective_log_level(cfg: dict[str, Any]) -> str:
    """`debug: true` (or `-D`) sets dockerd's log level to debug whatever `log-level` says."""
    if _truthy(cfg.get("debug", False)):
        return "debug"
    return str(cfg.get("log-level") or "info")


def default_ulimits(value: Any) -> dict[str, str]:
    """daemon.json's {"nofile": {"Name", "Soft", "Hard"}} or the flags' ["nofile=100:200"] -> {name: "soft:hard"}."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for name, spec in value.items():
            if isinstance(spec, dict):
                out[str(spec.get("Name") or name)] = f"{spec.get('Soft')}:{spec.get('Hard')}"
            else:
                out[str(name)] = str(spec)
    elif isinstance(value, list | str):
        for item in [value] if isinstance(value, str) else value:
            name, _, limits = str(item).partition("=")
            soft, _, hard = limits.partition(":")
            out[name] = f"{soft}:{hard or soft}"
    return out


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


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
        # Report only: each needs a daemon restart, and a wrong value stops every container.
        Rule("default-ulimits", "containers get default ulimits", Severity.LOW, "2.8", False),
        Rule("cgroup-parent", "containers use the default (or a confirmed) cgroup parent", Severity.LOW, "2.10",
             False),
        Rule("base-device-size", "the base device size (dm.basesize) is not changed", Severity.LOW, "2.11", False),
        Rule("authorization-plugin", "an authorization plugin checks every API request", Severity.MEDIUM, "2.12",
             False),
        Rule("remote-logging", "container logs go to a central or remote log driver", Severity.LOW, "2.13", False),
        Rule("seccomp-profile", "the daemon-wide seccomp profile filters system calls", Severity.HIGH, "2.17",
             False),
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
        # One reading per pass: the context's (ctx.daemon_config, which other controls use) is this
        # control's too. A 50 MB daemon.json is not held twice, once per reader.
        shared = ctx.__dict__.get("daemon_config")
        if isinstance(shared, DaemonConfigObservation):
            return shared
        obs = self._observe(ctx)
        ctx.__dict__["daemon_config"] = obs  # where functools.cached_property keeps it
        return obs

    def _observe(self, ctx: Context) -> DaemonConfigObservation:
        path = self.config_path(ctx)
        obs = DaemonConfigObservation(path=path, stat=ctx.host.lstat(path))
        daemon = ctx.daemon
        if daemon is not None:
            obs.daemon_pid = daemon.pid
            flags = daemon.config_values()
            obs.config_file_flag = flags.pop("config-file", None)  # type: ignore[assignment]
            obs.flags = flags
        if obs.stat is not None:
            try:
                _read_into(ctx, obs)
            except OSError as exc:
                obs.raw = obs.config = None
                obs.error = f"cannot read: {exc.strerror or exc}"
                return obs
        if obs.error is None:
            _observe_seccomp(ctx, obs)
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
            odd = oddities(obs.raw or b"")
            shown = "valid JSON object" + (f" ({'; '.join(odd)})" if odd else "")
            out.append(self.finding("valid-json", Status.PASS, shown,
                                    observed="valid", expected="valid JSON object", path=path,
                                    details={"read_as_dockerd": list(odd)} if odd else None))
        cfg = obs.effective

        def src(key: str) -> dict[str, Any]:
            return obs.sources(key)

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
        level = effective_log_level(cfg)
        level_ok = level == settings.log_level
        out.append(self.finding(
            "log-level", Status.PASS if level_ok else Status.FAIL,
            f"effective log level is {level!r}"
            + ("" if level_ok else f": CIS asks for {settings.log_level!r}")
            + (" (debug: true overrides log-level)" if _truthy(cfg.get("debug", False)) else ""),
            observed=level, expected=settings.log_level, path=path,
            details={**obs.sources("log-level"), "debug": obs.sources("debug")}))
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
        out += self._evaluate_section2_extras(obs, cfg, settings)
        return out

    def _evaluate_section2_extras(self, obs: DaemonConfigObservation, cfg: dict[str, Any],
                                  settings: DaemonConfigPolicy) -> list[Finding]:
        """CIS 2.8, 2.10-2.13 and 2.17 (2.1, rootless, is the runtime control's: it asks the daemon)."""
        path = obs.path
        out: list[Finding] = []

        ulimits = default_ulimits(cfg.get("default-ulimits"))
        out.append(self.finding(
            "default-ulimits", Status.PASS if ulimits else Status.FAIL,
            f"default ulimits {ulimits}" if ulimits
            else "no default ulimits: containers inherit dockerd's limits (often unlimited processes and files)",
            observed=ulimits or None, expected="e.g. nofile and nproc limits", path=path,
            details=obs.sources("default-ulimits")))

        parent = cfg.get("cgroup-parent") or None
        parent_ok = parent is None or parent in settings.allowed_cgroup_parents
        out.append(self.finding(
            "cgroup-parent", Status.PASS if parent_ok else Status.FAIL,
            "containers use the default cgroup parent" if parent is None
            else f"cgroup-parent is {parent!r}" + ("" if parent_ok else ": not confirmed in allowedCgroupParents"),
            observed=parent, expected=settings.allowed_cgroup_parents or "unset", path=path,
            details=obs.sources("cgroup-parent")))

        basesize = [o for o in as_list(cfg.get("storage-opts")) if o.split("=", 1)[0].strip() == "dm.basesize"]
        out.append(self.finding(
            "base-device-size", Status.FAIL if basesize else Status.PASS,
            f"storage option {basesize[-1]} changes the base device size" if basesize
            else "base device size is the driver's default",
            observed=basesize or None, expected="no dm.basesize", path=path, details=obs.sources("storage-opts")))

        plugins = [p for p in as_list(cfg.get("authorization-plugins")) if p]
        out.append(self.finding(
            "authorization-plugin", Status.PASS if plugins else Status.FAIL,
            f"authorization plugins {plugins}" if plugins
            else "no authorization plugin: whoever reaches the API may do anything",
            observed=plugins, expected="at least one authorization plugin", path=path,
            details=obs.sources("authorization-plugins")))

        driver = str(cfg.get("log-driver") or "json-file")
        remote = driver not in LOCAL_LOG_DRIVERS
        out.append(self.finding(
            "remote-logging", Status.PASS if remote else Status.FAIL,
            f"log driver {driver}" + ("" if remote else ": container logs stay on this node"),
            observed=driver, expected=f"a remote driver (not {', '.join(sorted(LOCAL_LOG_DRIVERS))})", path=path,
            details=obs.sources("log-driver")))

        profile = cfg.get("seccomp-profile") or None
        if profile is None or profile == "builtin":
            status, msg = Status.PASS, "Docker's default seccomp profile applies"
        elif profile == "unconfined":
            status, msg = Status.FAIL, "seccomp-profile is unconfined: containers may make every system call"
        elif obs.seccomp_error is not None:
            status, msg = Status.FAIL, f"seccomp profile {profile}: {obs.seccomp_error}"
        elif obs.seccomp_default_action in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG"):
            status, msg = Status.FAIL, (f"seccomp profile {profile} allows every system call it does not list "
                                        f"(defaultAction {obs.seccomp_default_action})")
        else:
            status, msg = Status.PASS, f"custom seccomp profile {profile} (defaultAction {obs.seccomp_default_action})"
        out.append(self.finding(
            "seccomp-profile", status, msg, observed=profile,
            expected="default, or a profile whose defaultAction refuses", path=path,
            details={**obs.sources("seccomp-profile"), "defaultAction": obs.seccomp_default_action}))
        return out

    # -- enforce ---------------------------------------------------------------------------

    def remediate_many(self, ctx: Context, findings: Sequence[Finding], observed: Any) -> list[Outcome]:
        # One write and at most one SIGHUP for every failing key of a pass (nodeguard/daemon_json.py).
        from nodeguard.daemon_json import remediate_config

        return remediate_config(ctx, findings, observed)

    def remember(self, ctx: Context, observed: Any, store: StateStore) -> None:
        from nodeguard.daemon_json import remember_last_good

        remember_last_good(ctx, observed, store)

    def patch_for(self, rule_id: str, observed: DaemonConfigObservation, policy: Policy) -> dict[str, Any]:
        """The daemon.json keys that put `rule_id` back to policy ({} when the file cannot fix it)."""
        settings = self.settings(policy)
        assert isinstance(settings, DaemonConfigPolicy)
        cfg = observed.config or {}
        if rule_id == "log-level" and _truthy(cfg.get("debug", False)) and observed.source_of("debug") == "file":
            # debug: true wins over log-level, so both keys go back (debug is reloadable).
            return {} if observed.source_of("log-level") == "flag" else {
                "log-level": settings.log_level, "debug": False}
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
            if "hosts" not in cfg:  # only a flag names them: the unit must change, not the file
                return {}
            verify = _truthy(observed.effective.get("tlsverify"))
            kept_hosts = [e.raw for e in hosts_of(cfg)
                          if e.scheme != "tcp" or (verify and e.port != 2375)]
            # Never add a hosts key, and drop an emptied one: a socket-activated daemon (-H fd://)
            # refuses to start with hosts in the file.
            return {"hosts": kept_hosts if kept_hosts else DELETE}
        return {}


def _observe_seccomp(ctx: Context, obs: DaemonConfigObservation) -> None:
    """Read the daemon-wide seccomp profile named by the effective config (CIS 2.17)."""
    profile = obs.effective.get("seccomp-profile")
    if not isinstance(profile, str) or not profile or profile in ("unconfined", "builtin"):
        return
    host_path = ctx.host.from_daemon_path(profile)
    try:
        raw = ctx.host.read_bytes(host_path, limit=SECCOMP_PROFILE_LIMIT)
    except FileNotFoundError:
        obs.seccomp_error = "the file does not exist (dockerd cannot start containers with it)"
        return
    except OSError as exc:
        obs.seccomp_error = f"cannot read: {exc.strerror or exc}"
        return
    value, error = parse_daemon_json(raw)
    if value is None:
        obs.seccomp_error = f"not a seccomp profile: {error}"
        return
    action = value.get("defaultAction")
    if not isinstance(action, str):
        obs.seccomp_error = "not a seccomp profile: no defaultAction"
        return
    obs.seccomp_default_action = action
