"""daemon-config: the settings dockerd runs with, from daemon.json *and* its command line.

Every setting is read from both places and judged on the effective value (a flag wins: dockerd
refuses to start with one directive in both, so a file edited after the start is pending). The
source and, when they differ, both values go into the finding's details.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.daemon_json import DELETE
from nodeguard.daemon_settings import (
    RELOADABLE_KEYS,
    DaemonConfigObservation,
    as_list,
    default_ulimits,
    effective_log_level,
    hosts_of,
    oddities,
    parse_daemon_json,
    parse_host,
    tls_enabled,
    truthy,
)
from nodeguard.daemon_settings import config_path as daemon_json_path
from nodeguard.observations import Surface
from nodeguard.policy import DaemonConfigPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

if TYPE_CHECKING:
    from nodeguard.state import StateStore

# The parsers moved to nodeguard.daemon_settings; these names stay importable from here.
__all__ = ["DELETE", "RELOADABLE_KEYS", "DaemonConfigControl", "DaemonConfigObservation", "default_ulimits",
           "hosts_of", "parse_daemon_json", "parse_host", "tls_enabled"]

ROTATING_LOG_DRIVERS = ("json-file", "local")
# CIS 2.13: these drivers keep logs on the node only (or nowhere); anything else ships them.
LOCAL_LOG_DRIVERS = frozenset({"json-file", "local", "none"})


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
        return daemon_json_path(ctx.host, ctx.policy, ctx.daemon)

    def watch_paths(self, ctx: Context) -> list[str]:
        return [self.config_path(ctx).rsplit("/", 1)[0] or "/"]

    def observe(self, ctx: Context) -> DaemonConfigObservation:
        # Read once per pass, shared with every control that needs the effective configuration.
        return ctx.daemon_config

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
        verify = truthy(cfg.get("tlsverify"))
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
        tls_only = truthy(cfg.get("tls")) and not verify
        out.append(self.finding(
            "tls-verify", Status.FAIL if tls_only else Status.PASS,
            "tls is on but tlsverify is not: any client certificate (or none) is accepted"
            if tls_only else "tls, where on, verifies clients",
            observed={"tls": cfg.get("tls"), "tlsverify": cfg.get("tlsverify")},
            expected={"tlsverify": True}, path=path, details=src("tlsverify")))

        # -- single-key settings --------------------------------------------------------------
        def exact(rule: str, key: str, want: Any, default: Any, why: str) -> None:
            have = cfg.get(key, default)
            ok = (truthy(have) == want) if isinstance(want, bool) else have == want
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
            + (" (debug: true overrides log-level)" if truthy(cfg.get("debug", False)) else ""),
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

        try:
            return remediate_config(ctx, findings, observed,
                                    lambda rule_id: self.patch_for(rule_id, observed, ctx.policy))
        finally:
            # Whatever was written, the rest of the pass reads daemon.json again.
            ctx.observed.forget(Surface.DAEMON_CONFIG)

    def remember(self, ctx: Context, observed: Any, store: StateStore) -> None:
        from nodeguard.daemon_json import remember_last_good

        remember_last_good(ctx, observed, store)

    def patch_for(self, rule_id: str, observed: DaemonConfigObservation, policy: Policy) -> dict[str, Any]:
        """The daemon.json keys that put `rule_id` back to policy ({} when the file cannot fix it)."""
        settings = self.settings(policy)
        assert isinstance(settings, DaemonConfigPolicy)
        cfg = observed.config or {}
        if rule_id == "log-level" and truthy(cfg.get("debug", False)) and observed.source_of("debug") == "file":
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
            verify = truthy(observed.effective.get("tlsverify"))
            kept_hosts = [e.raw for e in hosts_of(cfg)
                          if e.scheme != "tcp" or (verify and e.port != 2375)]
            # Never add a hosts key, and drop an emptied one: a socket-activated daemon (-H fd://)
            # refuses to start with hosts in the file.
            return {"hosts": kept_hosts if kept_hosts else DELETE}
        return {}

