"""What dockerd runs with: daemon.json read as dockerd reads it, overlaid by its command line.

The parsers here are pure; `read_daemon_config` is the one place that reads daemon.json (and the
seccomp profile it names) from the host. A pass calls it once, through the context's
observations (nodeguard.observations); the controls judge what it returns and never read the
file themselves.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from nodeguard.dockerd import DaemonProcess
from nodeguard.formats import gojson
from nodeguard.host import FileStat, HostRoot
from nodeguard.policy import Policy

# Keys dockerd applies on SIGHUP; any other changed key needs a daemon restart to take effect.
RELOADABLE_KEYS = frozenset({
    "debug", "labels", "live-restore", "max-concurrent-downloads", "max-concurrent-uploads",
    "max-download-attempts", "default-runtime", "runtimes", "authorization-plugins",
    "insecure-registries", "registry-mirrors", "shutdown-timeout", "features",
    "allow-nondistributable-artifacts", "default-shm-size", "default-ipc-mode", "default-cgroupns-mode",
})
# A seccomp profile is read to tell a real filter from an allow-all one; bigger is refused.
SECCOMP_PROFILE_LIMIT = 4 * 1024 * 1024


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
    """(object, None) or (None, why), reading the file as dockerd does (nodeguard.formats.gojson): bytes that
    are not UTF-8 become U+FFFD, nesting up to dockerd's 10,000 levels, numbers of any length (out of
    float64 range is dockerd's own refusal), the last of duplicate keys. Never raises."""
    return _parse_text(raw.decode("utf-8", "surrogateescape"))


_BLANK = re.compile(r"[ \t\n\r]*\Z")
# A daemon.json larger than this is parsed without its bytes in memory, which are read again after
# (and compared): its bytes, its text and its parsed values are never all held at once.
REREAD_ABOVE = 1 << 20
# The last big reading, for as long as some pass still holds it: a lane reading the same bytes
# shares its parsed values instead of holding a second copy of a 50 MB file.
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


def _read_into(host: HostRoot, obs: DaemonConfigObservation) -> None:
    """obs.raw: daemon.json's bytes; obs.config/obs.error: what dockerd reads in them (parse_daemon_json)."""
    path = obs.path
    with _BIG_READ:  # one reader of a big file at a time: a second lane shares the first one's values
        ref = _LAST[0]
        last = ref() if ref is not None else None
        if last is not None and last.path == path and last.raw is not None and len(last.raw) > REREAD_ABOVE \
                and host.holds(path, last.raw, follow=False):
            obs.raw, obs.config, obs.error = last.raw, last.config, last.error
            return
        raw = host.read_bytes(path, follow=False)
        if len(raw) > REREAD_ABOVE:
            import hashlib  # only for a big file: OpenSSL's _hashlib costs every pass ~4 ms to load

        for _ in range(3):
            if len(raw) <= REREAD_ABOVE:
                break
            digest = hashlib.sha256(raw).digest()
            text = raw.decode("utf-8", "surrogateescape")
            del raw
            config, error = _parse_text(text)
            del text
            raw = host.read_bytes(path, follow=False)
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


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def effective_log_level(cfg: dict[str, Any]) -> str:
    """`debug: true` (or `-D`) sets dockerd's log level to debug whatever `log-level` says."""
    if truthy(cfg.get("debug", False)):
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
    return truthy(cfg.get("tlsverify")) or truthy(cfg.get("tls"))


def hosts_of(cfg: dict[str, Any]) -> list[Endpoint]:
    hosts = cfg.get("hosts") or []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list):
        return []
    tls = tls_enabled(cfg)
    return [parse_host(str(h), tls) for h in hosts]


def config_path(host: HostRoot, policy: Policy, daemon: DaemonProcess | None) -> str:
    """daemon.json's host path: the running daemon's --config-file, else the policy's."""
    if daemon is not None and daemon.flags.get("config-file"):
        return host.from_daemon_path(daemon.flags["config-file"][-1])
    return policy.spec.controls.daemon_config.path


def read_daemon_config(host: HostRoot, path: str, daemon: DaemonProcess | None) -> DaemonConfigObservation:
    """daemon.json at `path` and the running daemon's flags: one read of the file (and of the
    seccomp profile it names). Never raises for what is in the file; a host path that cannot be
    walked (HostPathError) does."""
    obs = DaemonConfigObservation(path=path, stat=host.lstat(path))
    if daemon is not None:
        obs.daemon_pid = daemon.pid
        flags = daemon.config_values()
        obs.config_file_flag = flags.pop("config-file", None)  # type: ignore[assignment]
        obs.flags = flags
    if obs.stat is not None:
        try:
            _read_into(host, obs)
        except OSError as exc:
            obs.raw = obs.config = None
            obs.error = f"cannot read: {exc.strerror or exc}"
            return obs
    if obs.error is None:
        _read_seccomp(host, obs)
    return obs


def _read_seccomp(host: HostRoot, obs: DaemonConfigObservation) -> None:
    """Read the daemon-wide seccomp profile named by the effective config (CIS 2.17)."""
    profile = obs.effective.get("seccomp-profile")
    if not isinstance(profile, str) or not profile or profile in ("unconfined", "builtin"):
        return
    host_path = host.from_daemon_path(profile)
    try:
        raw = host.read_bytes(host_path, limit=SECCOMP_PROFILE_LIMIT)
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
