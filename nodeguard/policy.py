"""The policy: a versioned YAML document, validated by msgspec, merged over the embedded default.

A user's file names `apiVersion` and `kind`, then only what it changes. It is deep-merged over the
embedded default (`config/policy.yaml`, shipped as `nodeguard/data/policy.yaml`): mappings merge
key by key, lists replace. An empty document or one without the header is refused, never read as
"the default" (a file caught mid-write must not replace the policy in force). Every number has a
range. Errors name the file, the line and the field, so `nodeguard policy validate` can tell an
operator exactly what to fix.
"""

# No `from __future__ import annotations`: msgspec reads the Structs' annotations when it first
# converts a document, and would evaluate them from strings then (~4 ms more of every `check`).
import errno
import functools
import ipaddress
import os
import pkgutil
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta

from nodeguard.structs import Mode
from nodeguard.validation import Check, Invalid, convert, matching, run_checks

if TYPE_CHECKING:
    import yaml

API_VERSION = "nodeguard.io/v1alpha1"
KIND = "NodeGuardPolicy"
# A policy larger than this is refused before parsing: a ConfigMap holds at most 1 MiB anyway.
MAX_POLICY_BYTES = 1024 * 1024

UNKNOWN_KEY = "unknown key (keys are case-sensitive camelCase; see `nodeguard policy show`)"
RESTART_REFUSED = ("true is not supported: nodeguard never restarts dockerd. A revert of a key that needs a "
                   "restart is reported as restart_required; restart dockerd through its service manager "
                   "yourself (systemctl restart docker). Remove the key or set it to false")

_OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$")


class PolicyError(ValueError):
    """A policy that cannot be used, with every problem located in the source file."""

    def __init__(self, source: str, problems: Sequence[tuple[int | None, str, str]]) -> None:
        self.source = source
        # (line, field, why) per problem; line is 1-based, None when it cannot be located.
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for line, fld, why in self.problems:
            where = f"{self.source}:{line}" if line else self.source
            lines.append(f"{where}: {fld or '(document)'}: {why}")
        return "\n".join(lines)


def _parse_mode(value: object) -> int:
    """File modes are written as octal strings ("0660"); a bare YAML int is ambiguous, so refuse it."""
    if isinstance(value, str) and _OCTAL_MODE.match(value):
        return int(value, 8)
    raise ValueError(f"must be an octal string such as \"0660\" (quoted), got {value!r}")


# PyYAML is imported only when a document is parsed.
# libyaml's composer recurses in C without a depth check: deep nesting overflows the C stack and
# kills the process. Documents that could nest deeper than this go to the pure-Python loader, whose
# recursion ends in a RecursionError instead.
_C_LOADER_MAX_NESTING = 500
# Aliases may add at most this many nodes to the expanded document: "billion laughs" (9 levels of 9
# aliases) is 300 bytes of YAML and 387 million nodes for the validator and its error messages.
MAX_ALIAS_EXPANSION = 10_000


@functools.cache
def _loaders() -> "tuple[type[yaml.SafeLoader], type[yaml.SafeLoader]]":
    """(pure-Python, libyaml) loaders: YAML 1.1 minus its surprise booleans.

    `mode: off` is the string "off", not False: only true/false are booleans; boolean fields
    still accept yes/no/on/off (nodeguard.validation). libyaml parses a 1 MiB policy in ~1.5 s instead of ~15 s.
    """
    import yaml

    class _PolicyLoader(yaml.SafeLoader):
        pass

    _PolicyLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _PolicyLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

    class _CPolicyLoader(getattr(yaml, "CSafeLoader", _PolicyLoader)):  # type: ignore[misc]
        pass

    _CPolicyLoader.yaml_implicit_resolvers = _PolicyLoader.yaml_implicit_resolvers
    return _PolicyLoader, _CPolicyLoader


def _loader_for(text: str) -> "type[yaml.SafeLoader]":
    # An upper bound of the nesting depth: every level needs a flow bracket or more indentation
    # (or block indicators) at the start of a line.
    bound = text.count("[") + text.count("{")
    bound += max((len(ln) - len(ln.lstrip(" -?:")) for ln in text.splitlines()), default=0)
    python_loader, c_loader = _loaders()
    return c_loader if bound <= _C_LOADER_MAX_NESTING else python_loader


def _parse_yaml(text: str, source: str) -> "tuple[yaml.Node | None, Any]":
    """The document's node tree (for error lines) and its data, from one parse.

    Raises PolicyError for YAML that is invalid, nested too deeply or an alias bomb.
    """
    import yaml

    try:
        return _compose_and_construct(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, [(line, "", f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    except RecursionError:
        raise PolicyError(source, [(None, "", "YAML nested too deeply")]) from None


def _compose_and_construct(text: str, source: str) -> "tuple[yaml.Node | None, Any]":
    # What yaml.load does (get_single_data), split so that the nodes are composed once, for the
    # data and for the error lines, and the aliases are counted before anything is built from them.
    loader = _loader_for(text)(text)
    try:
        node = loader.get_single_node()
        if node is not None and _alias_expansion(node) > MAX_ALIAS_EXPANSION:
            raise PolicyError(source, [(None, "", f"YAML aliases expand to more than {MAX_ALIAS_EXPANSION} extra "
                                                  "nodes (or into themselves); write the values out")])
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _alias_expansion(root: "yaml.Node") -> int:
    """Nodes that aliases add when `root` is expanded; memoised, so linear in the distinct nodes.

    An alias inside its own anchor (`&a [*a]`) expands forever: counted as more than any limit.
    """
    import yaml

    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path from the root: reaching one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        if not done and id(node) in open_nodes:
            return MAX_ALIAS_EXPANSION + 1
        open_nodes.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            open_nodes.discard(id(node))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)] - len(size)


# -- the models -------------------------------------------------------------------------------
#
# msgspec Structs (issue 13: pydantic's import and model building cost a one-shot `check` ~160 ms),
# converted by nodeguard.validation: every problem named at once, in the words `policy validate`
# has always printed. A field's validation beyond its type is a Check in its Annotated type.


def _mode_is_text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be a quoted octal string such as "0660", got the bare number {value}: '
                         "YAML reads 0660 as octal (432) and 660 as decimal, so quote it")
    return value


def _mode_is_permissions(value: str) -> str:
    # The most permissive mode allowed: setuid, setgid and sticky bits in it would let a file carry
    # them unreported, and "7777" allows every bit, which quietly turns the mode rule off.
    if int(value, 8) > 0o777:
        raise ValueError(f"{value!r} is wider than 0777: setuid, setgid and sticky bits are never allowed")
    return value


# octal, quoted: "0660"
FileMode = Annotated[str, matching(_OCTAL_MODE.pattern), Check(after=_mode_is_permissions, before=_mode_is_text)]


def _no_restart(value: bool) -> bool:
    # Restarting dockerd safely means asking the host's service manager (systemd's RestartUnit
    # over the system D-Bus), checking the file loads first, rate-limiting, and live-restore;
    # none of that can be tested against a real service manager where nodeguard is built, so
    # it is not offered rather than offered untested.
    if value:
        raise ValueError(RESTART_REFUSED)
    return value


def _each_matching(pattern: re.Pattern[str], why: str) -> Callable[[list[str]], list[str]]:
    """A check that every item of a list matches `pattern`; `why` names the first that does not ({!r})."""
    def check(value: list[str]) -> list[str]:
        for item in value:
            if not pattern.match(item):
                raise ValueError(why.format(item))
        return value

    return check


_acl_entries = _each_matching(re.compile(r"^(user|group):[^:]+:[r-][w-][x-]$"),
                              "ACL entry {!r} must look like user:NAME:rw- or group:NAME:r--")
_user_names = _each_matching(_NAME, "{!r} is not a valid user name")
_container_names = _each_matching(re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
                                  "{!r} is not a container name (matched whole, without the leading /)")


def _cidrs(value: list[str]) -> list[str]:
    out = []
    for cidr in value:
        try:
            out.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError as exc:
            raise ValueError(f"{cidr!r} is not an IPv4 or IPv6 network: {exc}") from None
    return out


def _capabilities(value: list[str]) -> list[str]:
    return [c.upper().removeprefix("CAP_") for c in value]


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute host path")
    return value


def _absolute_all(value: list[str]) -> list[str]:
    for path in value:
        _absolute(path)
    return value


ContainerNames = Annotated[list[str], Check(_container_names)]


# The defaults live in one place, nodeguard/data/policy.yaml, which is merged under every document
# before validation: the models below carry none of their own (a second copy drifts), so a setting
# missing from that file fails every load (tests/unit/test_policy_defaults.py). Two kinds of field
# keep a model default, because the YAML cannot hold it: ControlPolicy's `mode`/`rules` (unset
# means "inherit", not a value), and the fields of list items (FileRequirement, FirewallPort): a
# list replaces the default's whole, so its items have nothing to be merged under.
# Keys are the fields' names in camelCase (rename); an unknown key is refused. kw_only=True lets
# required fields follow ControlPolicy's defaulted ones and keeps the fields in the order written,
# base class first (`policy show` prints them so). Both it and frozen=True are given per class:
# msgspec does not inherit kw_only, and mypy reads frozen from each class's own keywords.
class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, rename="camel"):
    def __post_init__(self) -> None:
        run_checks(self)


class ControlPolicy(_Strict, frozen=True):
    """Settings every control shares: its mode and per-rule overrides."""

    mode: Mode | None = None  # off | observe | enforce; unset: spec.mode
    rules: dict[str, Mode] = {}  # rule id -> off | observe | enforce

    def rule_mode(self, rule_id: str, default: Mode) -> Mode:
        control_mode = self.mode or default
        if control_mode is Mode.OFF:
            return Mode.OFF
        return self.rules.get(rule_id, control_mode)


class LogRotation(_Strict, kw_only=True, frozen=True):
    # Numbers written the way dockerd's json-file driver reads them; max-file below 1 stops dockerd.
    max_size: Annotated[str, matching(r"^[1-9][0-9]{0,9}[kmg]?$")]
    max_file: Annotated[str, matching(r"^[1-9][0-9]{0,3}$")]


class DaemonConfigPolicy(ControlPolicy, kw_only=True, frozen=True):
    path: str
    allowed_insecure_registries: list[str]
    log_rotation: LogRotation
    log_level: str
    # CIS 2.10: a cgroup-parent other than the default is a finding unless confirmed here.
    allowed_cgroup_parents: list[str]
    # A revert never restarts dockerd: a key that needs a restart is reported as "restart required".
    # `true` is refused (see _no_restart): kept in the schema so existing files keep validating.
    restart_daemon: Annotated[bool, Check(_no_restart)]


class FileRequirement(_Strict, kw_only=True, frozen=True):
    path: str
    owner: str = "root"
    group: str = "root"
    file_mode: FileMode


class DaemonFilesPolicy(ControlPolicy, kw_only=True, frozen=True):
    config_dir: str
    unit_dirs: list[str]
    extra: list[FileRequirement]
    # CIS 3.23/3.24: containerd's socket is root on the host as much as dockerd's.
    containerd_socket: str


class HostAuditPolicy(ControlPolicy, kw_only=True, frozen=True):
    """CIS 1.1.3-1.1.18: where the host's audit rules and Docker's binaries are looked for."""

    audit_rules_files: list[str]
    audit_rules_dirs: list[str]
    # `auditctl -l` shows what the kernel really has loaded; only meaningful when the host root is `/`.
    auditctl: Literal["auto", "never"]
    binary_dirs: list[str]


class HostLayoutPolicy(ControlPolicy, kw_only=True, frozen=True):
    """CIS 1.1.1: the mount table read to tell whether the data root has a partition of its own."""

    # Read inside the host root (the host's init sees the host's mounts); when it is missing the
    # agent's own /proc/self/mountinfo is used and matched against real paths.
    mountinfo: str


class SocketPolicy(ControlPolicy, kw_only=True, frozen=True):
    path: str
    owner: str
    group: str
    file_mode: FileMode
    # Extra ACL entries tolerated on the socket, as "user:NAME:PERMS" or "group:NAME:PERMS".
    allowed_acl: Annotated[list[str], Check(_acl_entries)]


class DockerGroupPolicy(ControlPolicy, kw_only=True, frozen=True):
    group: str
    allowed_members: Annotated[list[str], Check(_user_names)]


class FirewallPort(_Strict, kw_only=True, frozen=True):
    port: Annotated[int, Meta(ge=1, le=65535)]
    allow: Annotated[list[str], Check(_cidrs)] = []
    action: Literal["drop", "reject"] = "drop"


class FirewallPolicy(ControlPolicy, kw_only=True, frozen=True):
    backend: Literal["auto", "nftables", "iptables-legacy", "iptables-nft"]
    ports: list[FirewallPort]

    def __post_init__(self) -> None:
        super().__post_init__()
        seen = [p.port for p in self.ports]
        dupes = sorted({p for p in seen if seen.count(p) > 1})
        if dupes:
            raise ValueError(f"port(s) {dupes} listed more than once")


class ListenersPolicy(ControlPolicy, kw_only=True, frozen=True):
    pass


class RuntimePolicy(ControlPolicy, kw_only=True, frozen=True):
    """What the running daemon's containers and settings may be (read through the Docker API)."""

    # CIS 1.2.2: the oldest engine accepted as patched; compared numerically (20.10.24+dfsg1 -> 20.10.24).
    min_engine_version: Annotated[str, matching(r"^[0-9]+(\.[0-9]+){0,2}$")]
    # CIS 5.6: host paths a bind mount may not expose; the host root `/` is always one.
    sensitive_mounts: Annotated[list[str], Check(_absolute_all)]
    # Containers (whole names) allowed to do what the rule forbids: an agent that needs the socket, say.
    allowed_privileged: ContainerNames
    allowed_socket_mounts: ContainerNames
    allowed_sensitive_mounts: ContainerNames
    allowed_host_namespaces: ContainerNames
    # Capabilities any container may add beyond Docker's default set (e.g. NET_ADMIN).
    allowed_capabilities: Annotated[list[str], Check(_capabilities)]
    # Per-user daemons outside the policy's reach (rootless Docker).
    rootless_sockets: Annotated[str, Check(_absolute)]
    timeout_seconds: Annotated[float, Meta(ge=0.1, le=300)]


class HostPolicy(ControlPolicy, kw_only=True, frozen=True):
    """Host-side checks: the daemon's TLS material, sshd, the data root's block device."""

    cert_expiry_warn_days: Annotated[int, Meta(ge=0, le=3650)]
    min_rsa_bits: Annotated[int, Meta(ge=1024, le=16384)]
    min_ec_bits: Annotated[int, Meta(ge=160, le=571)]
    sshd_config: str
    # PermitRootLogin values accepted (without-password is the old name of prohibit-password).
    permit_root_login: list[str]


class Controls(_Strict, kw_only=True, frozen=True):
    daemon_config: DaemonConfigPolicy
    daemon_files: DaemonFilesPolicy
    socket: SocketPolicy
    docker_group: DockerGroupPolicy
    firewall: FirewallPolicy
    listeners: ListenersPolicy
    host_audit: HostAuditPolicy
    host_layout: HostLayoutPolicy
    runtime: RuntimePolicy
    host: HostPolicy


# policy key ("daemonConfig") -> field name ("daemon_config"), for Policy.control.
_CONTROL_FIELDS = {f.encode_name: f.name for f in msgspec.structs.fields(Controls)}


class DaemonLocation(_Strict, kw_only=True, frozen=True):
    """Where to find the running dockerd (its pidfile), to read the flags it really runs with."""

    pid_file: str


# Every number has a range (issue 17): a value outside it is refused with its line by `policy
# validate` and by a reload (which keeps the last good policy), instead of an OverflowError in the
# agent's loop (`resyncSeconds: 1e10`) or a rule quietly turned off. NaN and infinity are refused
# (by the ranges; nodeguard.validation says "finite").
DAY_S = 86_400.0


class Flapping(_Strict, kw_only=True, frozen=True):
    # A threshold out of reach (1000000) is how a benchmark or a noisy host switches flapping off.
    threshold: Annotated[int, Meta(ge=1, le=1_000_000)]  # reverts of one finding within the window
    window_seconds: Annotated[float, Meta(ge=1, le=DAY_S)]
    max_backoff_seconds: Annotated[float, Meta(ge=1, le=DAY_S)]


class Attribution(_Strict, kw_only=True, frozen=True):
    """Who made a drift, read from the host's audit log (nodeguard/attribution/)."""

    enabled: bool
    # Host path; unset: log_file of the host's /etc/audit/auditd.conf.
    audit_log: Annotated[str, Meta(pattern="^/")] | None
    wait_ms: Annotated[int, Meta(ge=0, le=5000)]  # how long the actor may follow the drift event
    # Beyond it (a fight), only flapping events are attributed.
    max_per_finding_per_minute: Annotated[int, Meta(ge=1)]


class AgentSettings(_Strict, kw_only=True, frozen=True):
    resync_seconds: Annotated[float, Meta(ge=1, le=DAY_S)]
    coalesce_ms: Annotated[int, Meta(ge=0, le=5000)]
    # Events per rule per pass before the rest are folded into one summary event (issue 12.3).
    max_events_per_rule: Annotated[int, Meta(ge=1, le=100_000)]
    flapping: Flapping
    attribution: Attribution


class Spec(_Strict, kw_only=True, frozen=True):
    mode: Mode
    daemon: DaemonLocation
    agent: AgentSettings
    controls: Controls


class Metadata(_Strict, kw_only=True, frozen=True):
    name: str
    labels: dict[str, str]


class Policy(_Strict, kw_only=True, frozen=True):
    api_version: Literal["nodeguard.io/v1alpha1"]
    kind: Literal["NodeGuardPolicy"]
    metadata: Metadata
    spec: Spec

    def control(self, policy_key: str) -> ControlPolicy:
        """A control's settings by its key under spec.controls: "daemonConfig", "firewall"..."""
        controls = self.spec.controls
        field_name = _CONTROL_FIELDS.get(policy_key)
        if field_name is None:
            raise KeyError(policy_key)
        value: ControlPolicy = getattr(controls, field_name)
        return value

    def mode_of(self, policy_key: str, rule_id: str = "") -> Mode:
        """Is this control (or one of its rules) off, observed or enforced: the one answer.

        The control's own `mode`, else spec.mode; a control that is off has every rule off;
        otherwise a rule's entry under `rules` wins. `rule_id` "" asks about the control itself.
        """
        return self.control(policy_key).rule_mode(rule_id, self.spec.mode)

    def with_mode(self, mode: Mode) -> "Policy":
        """The same policy with spec.mode overridden (the CLI's --mode)."""
        return msgspec.structs.replace(self, spec=msgspec.structs.replace(self.spec, mode=mode))


def file_mode_bits(text: str) -> int:
    return _parse_mode(text)


# -- loading ---------------------------------------------------------------------------------


def _package_data(name: str) -> bytes:
    # Through the package's loader, as importlib.resources would read it (a zipped install works
    # too), without importing importlib.resources and what it pulls in (~15 ms of `check`).
    data = pkgutil.get_data("nodeguard", f"data/{name}")
    if data is None:
        raise FileNotFoundError(f"nodeguard/data/{name}: the package's loader cannot read data files")
    return data


def default_policy_text() -> str:
    return _package_data("policy.yaml").decode("utf-8")


def default_policy_data() -> dict[str, Any]:
    """The embedded default as data (libyaml's loader: the pure-Python one takes ~11 ms more)."""
    data: dict[str, Any] = _parse_yaml(default_policy_text(), "<embedded default>")[1]
    return data


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _node_line(node: "yaml.Node | None", loc: Sequence[int | str]) -> int | None:
    """Line of the YAML node at an error's location (falls back to the nearest parent)."""
    if node is None:
        return None
    import yaml

    best = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if nxt is None:
                break
            key_node = next(k for k, v in node.value if v is nxt)
            best = key_node.start_mark.line + 1
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            break
    return best


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_rule_ids(merged: Mapping[str, Any], node: "yaml.Node | None") -> list[tuple[int | None, str, str]]:
    """Unknown rule ids, read from the merged document so they are reported beside schema errors."""
    # The rule catalog is data below the policy: validating a rule id imports no control.
    from nodeguard.catalog import rule_ids_by_policy_key

    problems = []
    known = rule_ids_by_policy_key()
    spec = merged.get("spec")
    controls = spec.get("controls") if isinstance(spec, Mapping) else None
    # An unknown control key is the schema's error to report, not a list of unknown rules.
    control_keys = _CONTROL_FIELDS.keys()
    for key, ctl in controls.items() if isinstance(controls, Mapping) else ():
        rules = ctl.get("rules") if isinstance(ctl, Mapping) else None
        for rule_id in rules if isinstance(rules, Mapping) and key in control_keys else ():
            if rule_id not in known.get(key, ()):
                loc = ("spec", "controls", key, "rules", rule_id)
                choices = ", ".join(sorted(known.get(key, ()))) or "none"
                problems.append((_node_line(node, loc), _dotted(loc), f"unknown rule; known rules: {choices}"))
    return problems


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and validate a policy document, merged over the embedded default."""
    if len(text.encode("utf-8", errors="replace")) > MAX_POLICY_BYTES:
        raise PolicyError(source, [(None, "", f"larger than {MAX_POLICY_BYTES} bytes")])
    node, data = _parse_yaml(text, source)
    if data is None:
        # An empty file is what a reader sees in the middle of `cat new > policy.yaml` (truncate,
        # then write): refusing it keeps the last good policy instead of the embedded default.
        raise PolicyError(source, [(None, "", f"empty document: a policy names at least `apiVersion: {API_VERSION}` "
                                              f"and `kind: {KIND}` (no --policy at all means the embedded default)")])
    if not isinstance(data, dict):
        raise PolicyError(source, [(1, "", f"must be a mapping, got {type(data).__name__}")])
    missing = [key for key in ("apiVersion", "kind") if key not in data]
    if missing:
        # A document cut short (or a fragment) is never merged over the default as if it were whole.
        raise PolicyError(source, [(1, key, f"missing: a policy document names `apiVersion: {API_VERSION}` and "
                                            f"`kind: {KIND}` (is the file complete?)") for key in missing])
    merged = _deep_merge(default_policy_data(), data)
    try:
        policy = convert(merged, Policy, unknown_key=UNKNOWN_KEY)
    except Invalid as exc:
        problems = [(_node_line(node, loc), _dotted(loc), why) for loc, why in exc.problems]
        problems += _check_rule_ids(merged, node)
        raise PolicyError(source, sorted(problems, key=lambda p: p[0] or 0)) from None
    problems = _check_rule_ids(merged, node)
    if problems:
        raise PolicyError(source, problems)
    return policy


def load_policy(path: str | Path | None = None) -> Policy:
    """The embedded default when `path` is None, else that file merged over the default."""
    if path is None:
        return parse_policy(default_policy_text(), "<embedded default>")
    p = Path(path)
    try:
        raw = read_policy_bytes(p)
    except OSError as exc:
        raise PolicyError(str(p), [(None, "", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_policy(raw.decode("utf-8", errors="replace"), str(p))


def read_policy_bytes(path: str | Path) -> bytes:
    """At most MAX_POLICY_BYTES + 1 bytes of a regular file (parse_policy refuses the +1).

    Never the whole of a huge file, and never a FIFO or device: O_NONBLOCK so opening a FIFO does
    not wait for a writer, then the kind is checked before reading.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        left = MAX_POLICY_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)

