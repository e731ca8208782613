"""host-audit: auditd watches the Docker binaries, folders, units and sockets (CIS 1.1.3-1.1.18).

Rules are read from the host root's `/etc/audit/audit.rules` and `/etc/audit/rules.d/*.rules`
(and, when the host root is this machine's `/`, from `auditctl -l`: what the kernel has loaded).
Where the usual audit greps for a path, this one parses the rules:

- a commented-out rule, a `-W` (watch removed), an `-a never,...` (an exclusion) or a rule wiped
  by a later `-D` does not count; `-w /usr/bin/dockerd-rootless.sh` does not cover
  `/usr/bin/dockerd` (a substring match would say it does);
- a watch must see writes and attribute changes (`-p` with `w` and `a`; no `-p` means `rwxa`),
  by anyone: a rule narrowed to some processes (`-F auid>=1000`) misses root's changes;
- paths compare as the kernel resolves them inside the host root (folders followed, the last
  name not: auditd watches a name in a folder), so `-w /bin/dockerd` covers `/usr/bin/dockerd` on
  a merged-/usr host, and a folder watch (`-w DIR`, `-F dir=DIR`) covers what is under it;
- binaries are found where they really are (`/usr/bin`, `/usr/sbin`, `/usr/libexec/docker`, ... and
  the running dockerd's own path), never assumed to be in /usr/bin.

Report only: loading audit rules means `augenrules --load` on the host (impossible from a pod,
refused outright when the rules are immutable with `-e 2`), so nodeguard says what is missing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.controls.daemon_files import containerd_sockets, find_unit_files
from nodeguard.host import HostPathError, HostRoot
from nodeguard.policy import HostAuditPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

AUDIT_RULES_LIMIT = 8 * 1024 * 1024
REQUIRED_PERMS = frozenset("wa")
AUDITCTL_TIMEOUT = 5.0
# A stock rules.d is a few hundred lines; a hostile one stops being read here (and says so).
MAX_RULE_LINES = 100_000
MAX_RULES_FILES = 1000
# -F fields that say what is watched, not whose access: any other field narrows the rule.
NEUTRAL_FIELDS = frozenset({"path", "dir", "perm", "key", "arch", "filetype"})


@dataclass(frozen=True)
class AuditWatch:
    """One audit rule that watches a path, as the kernel would hold it."""

    path: str  # as written
    resolved: str  # host path, folders resolved inside the host root
    perms: str  # subset of "rwxa"
    recursive: bool  # a folder watch covers everything under it
    source: str  # "FILE:LINE" or "auditctl -l"
    # Field filters that narrow the rule to some processes (`-F auid>=1000`): root's writes,
    # the ones that matter, would go unaudited.
    filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditTarget:
    """A file or folder CIS wants watched, found on this host."""

    path: str  # host path as found
    resolved: str  # host path after following symlinks inside the root
    kind: str


@dataclass
class HostAuditObservation:
    sources: list[str] = field(default_factory=list)
    watches: list[AuditWatch] = field(default_factory=list)
    # None: the loaded rules are unknown (no auditctl, or not this machine's host root).
    loaded: list[AuditWatch] | None = None
    loaded_error: str | None = None
    problems: list[str] = field(default_factory=list)
    # rule id -> the existing files/folders it is about
    targets: dict[str, list[AuditTarget]] = field(default_factory=dict)
    # rule id -> what was looked for (for the "not present" message)
    looked_for: dict[str, list[str]] = field(default_factory=dict)


def _resolved(host: HostRoot, host_path: str, *, follow_last: bool) -> str:
    try:
        return host.host_path_of(host.resolve(host_path, follow_last=follow_last))
    except (HostPathError, OSError):
        return host_path


def _perms_of(value: str) -> str:
    return "".join(c for c in "rwxa" if c in value)


def parse_audit_rules(chunks: list[tuple[str, str]], host: HostRoot) -> tuple[list[AuditWatch], list[str]]:
    """The path watches that rules files loaded in this order leave in place; (watches, problems).

    auditctl's own syntax: `-D` deletes every rule before it, `-W PATH` removes a watch,
    `-a never,...` excludes rather than watches; options irrelevant to path watches are ignored.
    """
    watches: list[AuditWatch] = []
    problems: list[str] = []
    resolved: dict[str, str] = {}

    def resolve(path: str) -> str:
        if path not in resolved:
            resolved[path] = _resolved(host, path, follow_last=False)
        return resolved[path]

    lines = [(source, lineno, raw) for source, text in chunks for lineno, raw in enumerate(text.splitlines(), 1)]
    if len(lines) > MAX_RULE_LINES:
        problems.append(f"{len(lines)} audit rule lines: only the first {MAX_RULE_LINES} were read")
        lines = lines[:MAX_RULE_LINES]
    for source, lineno, raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line, comments=False)
        except ValueError:
            problems.append(f"{source}:{lineno}: cannot parse {line!r}")
            continue
        where = f"{source}:{lineno}"
        opts: dict[str, list[str]] = {}
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok.startswith("-") and len(tok) == 2:
                value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("-") else ""
                opts.setdefault(tok, []).append(value)
                i += 2 if value else 1
            else:
                i += 1
        if "-D" in opts:
            watches = []
            continue
        if "-W" in opts:
            gone = {resolve(p) for p in opts["-W"] if p}
            watches = [w for w in watches if w.resolved not in gone]
            continue
        if "-w" in opts:
            path = opts["-w"][-1]
            if not path:
                continue
            perms = _perms_of(opts["-p"][-1]) if "-p" in opts else "rwxa"
            watches.append(AuditWatch(path, resolve(path), perms, True, where))
            continue
        rule_spec = (opts.get("-a") or opts.get("-A") or [""])[-1]
        if not rule_spec:
            continue
        parts = {p.strip() for p in rule_spec.split(",")}
        if "always" not in parts or "exit" not in parts:
            continue  # `never` excludes; other lists never see file access
        fields: dict[str, str] = {}
        filters: list[str] = []
        for f in opts.get("-F", []):
            name, op, value = f.partition("=")
            if op and not name.endswith(("!", "<", ">")) and name in NEUTRAL_FIELDS:
                fields[name] = value
            elif f:
                filters.append(f)
        watched = fields.get("path") or fields.get("dir")
        if not watched:
            continue
        perms = _perms_of(fields["perm"]) if "perm" in fields else "rwxa"
        watches.append(AuditWatch(watched, resolve(watched), perms, "dir" in fields, where, tuple(filters)))
    return watches, problems


def covering(watches: list[AuditWatch], target: AuditTarget) -> list[AuditWatch]:
    """Watches that see changes to `target`: the same name, or a folder watch above it."""
    out = []
    for w in watches:
        names = {target.path, target.resolved}
        same = w.resolved in names or w.path in names
        below = w.recursive and any(n.startswith(w.resolved.rstrip("/") + "/") for n in names)
        if same or below:
            out.append(w)
    return out


# (rule id, CIS id, title, what): what is "binary:NAME", "path:/HOST/PATH", "unit:NAME" or a
# special target resolved from the daemon's own configuration.
TARGETS: tuple[tuple[str, str, str], ...] = (
    ("audit-dockerd", "1.1.3", "binary:dockerd"),
    ("audit-run-containerd", "1.1.4", "path:/run/containerd"),
    ("audit-data-root", "1.1.5", "data-root"),
    ("audit-etc-docker", "1.1.6", "config-dir"),
    ("audit-docker-service", "1.1.7", "unit:docker.service"),
    ("audit-containerd-sock", "1.1.8", "containerd-sock"),
    ("audit-docker-socket-unit", "1.1.9", "unit:docker.socket"),
    ("audit-etc-default-docker", "1.1.10", "path:/etc/default/docker"),
    ("audit-daemon-json", "1.1.11", "daemon-json"),
    ("audit-containerd-config", "1.1.12", "path:/etc/containerd/config.toml"),
    ("audit-etc-sysconfig-docker", "1.1.13", "path:/etc/sysconfig/docker"),
    ("audit-containerd", "1.1.14", "binary:containerd"),
    ("audit-containerd-shim", "1.1.15", "binary:containerd-shim"),
    ("audit-containerd-shim-runc-v1", "1.1.16", "binary:containerd-shim-runc-v1"),
    ("audit-containerd-shim-runc-v2", "1.1.17", "binary:containerd-shim-runc-v2"),
    ("audit-runc", "1.1.18", "binary:runc"),
)
_TITLES = {
    "binary": "the {} binary is watched by auditd", "path": "{} is watched by auditd",
    "unit": "the {} unit is watched by auditd", "data-root": "the daemon's data root is watched by auditd",
    "config-dir": "/etc/docker is watched by auditd", "containerd-sock": "containerd's socket is watched by auditd",
    "daemon-json": "daemon.json is watched by auditd",
}


def _title(what: str) -> str:
    kind, _, arg = what.partition(":")
    return _TITLES[kind].format(arg)


class HostAuditControl(Control):
    name: ClassVar[str] = "host-audit"
    policy_key: ClassVar[str] = "hostAudit"
    rules: ClassVar[tuple[Rule, ...]] = tuple(
        Rule(rule_id, _title(what), Severity.LOW, cis, False) for rule_id, cis, what in TARGETS)

    def _settings(self, policy: Policy) -> HostAuditPolicy:
        s = self.settings(policy)
        assert isinstance(s, HostAuditPolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        s = self._settings(ctx.policy)
        folders = {p.rsplit("/", 1)[0] or "/" for p in s.audit_rules_files} | set(s.audit_rules_dirs)
        return sorted(f for f in folders if ctx.host.stat(f) is not None)

    # -- observe ---------------------------------------------------------------------------

    def _find(self, ctx: Context, what: str) -> tuple[list[str], list[str]]:
        """(host paths to look at, description of where they were looked for)."""
        s = self._settings(ctx.policy)
        kind, _, arg = what.partition(":")
        dc = ctx.daemon_config
        if kind == "binary":
            paths = [f"{d.rstrip('/')}/{arg}" for d in s.binary_dirs]
            daemon = ctx.daemon
            if arg == "dockerd" and daemon is not None and daemon.argv and daemon.argv[0].startswith("/"):
                # The daemon that really runs, wherever it was installed.
                paths.insert(0, ctx.host.from_daemon_path(daemon.argv[0]))
            return paths, [", ".join(s.binary_dirs)]
        if kind == "path":
            return [arg], [arg]
        if kind == "unit":
            unit_dirs = ctx.policy.spec.controls.daemon_files.unit_dirs
            main, _ = find_unit_files(ctx.host, unit_dirs, arg)
            return ([main] if main else []), [f"{arg} in {', '.join(unit_dirs)}"]
        if kind == "data-root":
            cfg = dc.effective
            root = cfg.get("data-root") or cfg.get("graph") or "/var/lib/docker"
            path = ctx.host.from_daemon_path(str(root))
            return [path], [path]
        if kind == "config-dir":
            path = ctx.policy.spec.controls.daemon_files.config_dir
            return [path], [path]
        if kind == "daemon-json":
            return [dc.path], [dc.path]
        if kind == "containerd-sock":
            socks = containerd_sockets(ctx) or [ctx.policy.spec.controls.daemon_files.containerd_socket]
            unit_dirs = ctx.policy.spec.controls.daemon_files.unit_dirs
            main, _ = find_unit_files(ctx.host, unit_dirs, "containerd.socket")
            return [*socks, *([main] if main else [])], socks
        raise ValueError(what)

    def observe(self, ctx: Context) -> HostAuditObservation:
        s = self._settings(ctx.policy)
        obs = HostAuditObservation()
        files = list(s.audit_rules_files)
        # augenrules concatenates rules.d/*.rules in name order: one stream, so a -D in
        # 10-base-config.rules wipes what came before it.
        stream: list[tuple[str, str]] = []
        for folder in s.audit_rules_dirs:
            for name in ctx.host.listdir(folder):
                if name.endswith(".rules"):
                    stream.append((name, f"{folder.rstrip('/')}/{name}"))
        stream.sort()
        if len(stream) > MAX_RULES_FILES:
            obs.problems.append(f"{len(stream)} rules files: only the first {MAX_RULES_FILES} were read")
            stream = stream[:MAX_RULES_FILES]
        # Two streams, each loaded as one: audit.rules (what `auditctl -R` loads) and rules.d in
        # name order (what augenrules concatenates). A watch left by either counts.
        for group in (files, [path for _, path in stream]):
            texts = []
            for path in group:
                try:
                    texts.append((path, ctx.host.read_text(path, limit=AUDIT_RULES_LIMIT)))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    obs.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
                    continue
                obs.sources.append(path)
            got, problems = parse_audit_rules(texts, ctx.host)
            obs.watches += got
            obs.problems += problems
        self._observe_loaded(ctx, s, obs)
        for rule_id, _, what in TARGETS:
            candidates, looked = self._find(ctx, what)
            obs.looked_for[rule_id] = looked
            found: dict[str, AuditTarget] = {}
            for path in candidates:
                st = ctx.host.stat(path)
                if st is None:
                    continue
                resolved = _resolved(ctx.host, path, follow_last=True)
                # /bin/dockerd and /usr/bin/dockerd on a merged-/usr host are one file.
                found.setdefault(resolved, AuditTarget(path, resolved, st.kind))
            obs.targets[rule_id] = list(found.values())
        return obs

    def _observe_loaded(self, ctx: Context, s: HostAuditPolicy, obs: HostAuditObservation) -> None:
        # auditctl talks to *this* machine's kernel: that is the host only when the root is `/`.
        if s.auditctl == "never" or ctx.host.root != Path("/"):
            return
        import shutil  # both only when the host root is this machine's own `/`
        import subprocess

        auditctl = shutil.which("auditctl")
        if auditctl is None:
            return
        try:
            proc = subprocess.run([auditctl, "-l"], capture_output=True, text=True, timeout=AUDITCTL_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            obs.loaded_error = f"auditctl -l: {exc}"
            return
        if proc.returncode != 0:
            obs.loaded_error = f"auditctl -l exited {proc.returncode}: {proc.stderr.strip()[:200]}"
            return
        text = "" if proc.stdout.strip() == "No rules" else proc.stdout
        obs.loaded, problems = parse_audit_rules([("auditctl -l", text)], ctx.host)
        obs.problems += problems

    # -- evaluate --------------------------------------------------------------------------

    def evaluate(self, observed: HostAuditObservation, policy: Policy) -> list[Finding]:
        obs = observed
        out: list[Finding] = []
        for rule_id, _, _what in TARGETS:
            targets = obs.targets.get(rule_id, [])
            if not targets:
                out.append(self.finding(rule_id, Status.SKIP,
                                        f"not present on this host (looked for {'; '.join(obs.looked_for[rule_id])})"))
                continue
            for t in targets:
                out.append(self._judge(rule_id, t, obs))
        return out

    def _judge(self, rule_id: str, target: AuditTarget, obs: HostAuditObservation) -> Finding:
        expected = f"-w {target.resolved} -p wa (or wider) in the audit rules"
        details: dict[str, object] = {"rules_files": obs.sources}
        if obs.problems:
            details["problems"] = obs.problems[:20]
        if not obs.sources and obs.loaded is None:
            return self.finding(rule_id, Status.FAIL, f"{target.path}: no audit rules on this host (auditd not "
                                "configured)", observed=None, expected=expected, path=target.path,
                                subject=target.resolved, details=details)
        written = covering(obs.watches, target)
        full = [w for w in written if set(w.perms) >= REQUIRED_PERMS and not w.filters]
        details["rules"] = [f"{w.source}: {w.path} -p {w.perms}" + "".join(f" -F {f}" for f in w.filters)
                            for w in written]
        if not full:
            narrowed = [f for w in written for f in w.filters]
            if not written:
                why = "no audit rule watches it"
            elif narrowed and all(set(w.perms) >= REQUIRED_PERMS for w in written):
                why = (f"watched only for some processes ({', '.join(sorted(set(narrowed)))}): root's changes "
                       "go unaudited")
            else:
                why = (f"watched only for {'/'.join(sorted({w.perms for w in written}))}: a change to it is not "
                       "audited")
            return self.finding(rule_id, Status.FAIL, f"{target.path}: {why}",
                                observed=[w.perms for w in written] or None, expected=expected,
                                path=target.path, subject=target.resolved, details=details)
        if obs.loaded is not None:
            loaded = [w for w in covering(obs.loaded, target) if set(w.perms) >= REQUIRED_PERMS and not w.filters]
            if not loaded:
                return self.finding(rule_id, Status.FAIL, f"{target.path}: the rule is written but not loaded "
                                    "(run augenrules --load)", observed="not loaded", expected=expected,
                                    path=target.path, subject=target.resolved, details=details)
        return self.finding(rule_id, Status.PASS, f"{target.path} is watched ({full[0].source})",
                            observed=full[0].perms, expected=expected, path=target.path,
                            subject=target.resolved, details=details)
