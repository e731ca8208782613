"""Every policy key does something (issue 19): the schema is walked, and each key's change is seen.

The keys are enumerated from the policy's msgspec Structs, recursively (list items too), so a key added
without a behaviour case here fails `test_every_schema_key_has_a_behaviour_case`. For each key the
embedded default (plus the case's `base`, when the default cannot show the key's effect) is
compared with the same policy where only that key changed; the two must behave differently:
different findings (status, mode, observed, expected, message, details) of the control the key
belongs to, evaluated on one real sandbox host root; or a different engine decision (passes,
flapping events, the policy.loaded event); or a refusal (`restartDaemon: true`, a wrong
apiVersion). The README's policy table lists the same keys.

The firewall, listener and runtime rules are evaluated on fixed observations (netfilter, sockets and
the Docker API are not this sandbox's); the firewall backend choice runs in a network namespace the
test creates; `hostAudit.auditctl` reads `auditctl -l` of this machine, read-only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec.inspect
import pytest

from nodeguard.audit import apply_modes, run_audit
from nodeguard.controls import all_controls
from nodeguard.controls.base import Context, Control
from nodeguard.controls.firewall import FirewallControl
from nodeguard.controls.listeners import ListenersControl, ListenersObservation
from nodeguard.controls.runtime import ContainerView, MountView, RuntimeControl
from nodeguard.controls.socket import SocketControl
from nodeguard.engine import Engine, EngineOptions
from nodeguard.events.model import EventName
from nodeguard.host import HostRoot
from nodeguard.netfilter.model import Desired, rules_for
from nodeguard.policy import API_VERSION, KIND, Policy, PolicyError, load_policy, parse_policy
from nodeguard.structs import Finding, Severity, Status
from tests.support.events import RecordingSink
from tests.support.sandbox import BOB_UID, DOCKER_GID, Sandbox, make_sandbox, require_root, require_tool
from tests.support.tlsca import make_tls
from tests.unit.test_attribution_sink import attribution_probe
from tests.unit.test_control_firewall import nft_observation
from tests.unit.test_control_listeners import listener

HEAD: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
PID = 4242  # the fake dockerd's pid in the world's fake /proc


def schema_keys(model: msgspec.inspect.StructType, prefix: str = "") -> list[str]:
    """Every key of the policy, dotted as written in a file; items of a list of objects as `key[].sub`."""
    out: list[str] = []
    for f in model.fields:
        key = f"{prefix}{f.encode_name}"
        if isinstance(f.type, msgspec.inspect.StructType):
            out += schema_keys(f.type, key + ".")
        elif isinstance(f.type, msgspec.inspect.ListType) and isinstance(f.type.item_type, msgspec.inspect.StructType):
            out.append(key)
            out += schema_keys(f.type.item_type, key + "[].")
        else:
            out.append(key)
    return out


def at(key: str, value: Any) -> dict[str, Any]:
    """{"spec": {"agent": {"resyncSeconds": 1}}} from ("spec.agent.resyncSeconds", 1)."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    assert isinstance(out, dict)
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def policy_of(doc: dict[str, Any]) -> Policy | str:
    """The policy a file holding `doc` (over the header) gives, or the refusal `policy validate` prints."""
    try:
        return parse_policy(json.dumps(merge(HEAD, doc)), "key-test.yaml")
    except PolicyError as exc:
        return exc.render()


# -- the world: one sandbox host where every key has something to act on ------------------------


@dataclass
class World:
    sb: Sandbox
    proc: Path  # a fake /proc holding the fake dockerd
    tmp: Path


def _listening(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(64)
    return s


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root()
    require_tool("setfacl")
    tmp = Path(tempfile.mkdtemp(prefix="ngk-", dir="/tmp"))
    closers: list[Callable[[], None]] = []
    try:
        sb = make_sandbox(tmp / "root")
        # docker.sock: root:docker 0660 with bob in its ACL. It listens but never answers (nobody
        # accepts), so a Docker API call waits for exactly its timeout.
        for path in ("/run/docker.sock", "/run/containerd/containerd.sock", "/run/user/1000/docker.sock"):
            closers.append(_listening(sb.path(path)).close)
            sb.path(path).chmod(0o660)
        os.chown(sb.path("/run/docker.sock"), 0, DOCKER_GID)
        subprocess.run(["setfacl", "-m", f"u:{BOB_UID}:rw", str(sb.path("/run/docker.sock"))], check=True)
        tls = make_tls(sb.path("/etc/docker/tls"), ["192.0.2.1"])  # EC P-256, valid for one day

        def host(p: Path) -> str:
            return "/" + str(p.relative_to(sb.root))

        sb.write("/etc/docker/daemon.json", json.dumps({
            "icc": True, "insecure-registries": ["reg.example:5000"], "cgroup-parent": "/custom",
            "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"},
            "tlscacert": host(tls.ca), "tlscert": host(tls.server_cert), "tlskey": host(tls.server_key)}))
        sb.write("/etc/docker/agent.conf", "x", 0o640)
        sb.write("/lib/systemd/system/docker.service", "[Service]\nExecStart=/usr/bin/dockerd\n", 0o644)
        sb.write("/usr/bin/dockerd", "#!/bin/sh\n", 0o755)
        sb.write("/etc/group", sb.read("/etc/group").replace(f"docker:x:{DOCKER_GID}:", f"docker:x:{DOCKER_GID}:bob"))
        sb.write("/etc/audit/audit.rules", "-w /usr/bin/dockerd -k docker\n")
        sb.write("/etc/audit/rules.d/docker.rules", "-w /etc/docker -k docker\n")
        sb.path("/var/lib/docker").mkdir()
        sb.write("/proc/1/mountinfo", "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
                                      "50 22 8:17 / /var/lib/docker rw - ext4 /dev/sdb1 rw\n", 0o444)
        sb.write("/etc/ssh/sshd_config", "PermitRootLogin yes\nPasswordAuthentication yes\n")
        # A dockerd found through the pidfile, started with a flag the file does not have.
        sb.write("/run/docker.pid", f"{PID}\n")
        proc = tmp / "proc"
        (proc / str(PID)).mkdir(parents=True)
        (proc / str(PID) / "cmdline").write_bytes(b"dockerd\0--experimental\0")
        yield World(sb, proc, tmp)
    finally:
        for close in closers:
            close()
        shutil.rmtree(tmp, ignore_errors=True)


# -- probes: what a policy makes nodeguard do on the world ------------------------------------------

Probe = Callable[[World, Policy], Any]


def _summary(findings: list[Finding]) -> list[str]:
    return sorted(json.dumps(dataclasses.asdict(f), sort_keys=True, default=str) for f in findings)


def _control(policy_key: str) -> Control:
    return next(c for c in all_controls() if c.policy_key == policy_key)


def audit_probe(policy_key: str) -> Probe:
    """`nodeguard check --only CONTROL` on the world: every finding with its status and mode."""
    def probe(w: World, policy: Policy) -> Any:
        report = run_audit(HostRoot(w.sb.root), policy, only=[policy_key], proc=w.proc)
        return _summary(report.findings)
    return probe


def firewall_probe(w: World, policy: Policy) -> Any:
    # The kernel holds exactly what the default policy asks for; the policy under test judges it.
    default = load_policy()
    observed = nft_observation(rules_for(Desired.from_policy(default.spec.controls.firewall), None))
    control = FirewallControl()
    return _summary(apply_modes(control, control.evaluate(observed, policy), policy))


def listeners_probe(w: World, policy: Policy) -> Any:
    observed = ListenersObservation([listener("::", 2376, 42), listener("127.0.0.1", 2375, 42, socket.AF_INET)],
                                    daemon_pid=42, daemon_tls=True, firewalled_ports={2375})
    control = ListenersControl()
    return _summary(apply_modes(control, control.evaluate(observed, policy), policy))


def _container(name: str, *mounts: str, **kw: Any) -> ContainerView:
    base: dict[str, Any] = dict(id=name, name=name, state="running", image="img", privileged=False, cap_add=[],
                                pid_mode="", network_mode="default", security_opt=["no-new-privileges"],
                                mounts=[MountView("bind", m, "/mnt", True, m) for m in mounts])
    base.update(kw)
    return ContainerView(**base)


def runtime_probe(w: World, policy: Policy) -> Any:
    """The real observe (sensitive paths, rootless sockets, the API's timeout), then a known daemon's answers."""
    control = RuntimeControl()
    observed = control.observe(Context(HostRoot(w.sb.root), policy, w.proc))
    observed.error = None
    observed.unresponsive = False  # the world's daemon never answers; what follows is a known daemon's answers
    observed.version = {"Version": "24.0.7"}
    observed.info = {"SecurityOptions": ["name=seccomp,profile=builtin", "name=apparmor"], "LiveRestoreEnabled": True,
                     "LoggingDriver": "json-file"}
    observed.containers = [_container("priv", privileged=True), _container("sock", "/run/docker.sock"),
                           _container("etcm", "/etc"), _container("hostpid", pid_mode="host"),
                           _container("caps", cap_add=["NET_ADMIN"]), _container("srv", "/srv/data")]
    return _summary(apply_modes(control, control.evaluate(observed, policy), policy))


FAST_API = at("spec.controls.runtime.timeoutSeconds", 0.1)  # the world's daemon never answers


def api_wait_probe(w: World, policy: Policy) -> Any:
    """How long the runtime control waits for a daemon that never answers: the policy's timeout."""
    t0 = time.monotonic()
    RuntimeControl().observe(Context(HostRoot(w.sb.root), policy, w.proc))
    return time.monotonic() - t0 >= 1.0


def backend_probe(w: World, policy: Policy) -> Any:
    """The backend chosen and why, in a network namespace of the test's own (read-only there too)."""
    from tests.support.netns import in_netns, netns

    with netns("keys") as ns:
        return in_netns(ns, _select, policy.spec.controls.firewall.backend, str(w.sb.root))


def _select(requested: str, root: str) -> tuple[str | None, str]:
    from nodeguard.netfilter.select import select_backend

    sel = select_backend(requested, HostRoot(root))
    return sel.name, sel.reason


def auditctl_probe(w: World, policy: Policy) -> Any:
    """`auditctl -l` is read only when the root is this machine's `/` and the policy lets it (read-only)."""
    from nodeguard.controls.audit_rules import HostAuditControl

    require_tool("auditctl")
    obs = HostAuditControl().observe(Context(HostRoot("/"), policy, Path("/proc")))
    return obs.loaded is None and obs.loaded_error is None


def _engine(w: World, policy: Policy, **kw: Any) -> tuple[Engine, RecordingSink]:
    state = Path(tempfile.mkdtemp(prefix="state-", dir=w.tmp))
    state.chmod(0o700)
    sink = RecordingSink()
    return Engine(EngineOptions(HostRoot(w.sb.root), state, proc=w.proc), policy, sink, **kw), sink


def loaded_event_probe(w: World, policy: Policy) -> Any:
    engine, _ = _engine(w, policy, controls=[])
    attrs = dict(engine.source.loaded_event().attributes)
    return {k: v for k, v in attrs.items() if k not in ("host.name", "nodeguard.policy_sha256")}


def flapping_probe(w: World, policy: Policy) -> Any:
    """The flapping reports 14 reverts of one expensive finding (a daemon.json rewrite), 10 s apart,
    give (engine clock injected); a cheap revert never backs off, so the expensive one shows all three keys."""
    engine, _ = _engine(w, policy, controls=[])
    reports = [engine.flaps.note_revert("daemon-config/live-restore/", 1000.0 + 10 * i, cheap=False)
               for i in range(14)]
    return [(r.backoff, r.level, r.count) for r in reports if r is not None]


def max_events_probe(w: World, policy: Policy) -> Any:
    """Events the engine emits for 150 findings of one rule in one pass: the first N and a summary."""
    engine, sink = _engine(w, policy, controls=[])
    findings = [Finding("docker-group", "member-allowed", Status.FAIL, Severity.HIGH, f"u{i}", subject=f"u{i}")
                for i in range(150)]
    engine._emit_bounded(EventName.DRIFT_DETECTED, "detected", findings, engine._max_events(policy))
    return len(sink.events)


def _running(engine: Engine) -> threading.Thread:
    t = threading.Thread(target=engine.run, daemon=True)
    t.start()
    return t


class _CountingSocket(SocketControl):
    """The socket control, counting its looks at the host: the engine's lanes each make passes of
    their own, so the probes count what the one lane holding this control did."""

    def __init__(self) -> None:
        self.looks = 0

    def observe(self, ctx: Context) -> Any:
        self.looks += 1
        return super().observe(ctx)


def resync_probe(w: World, policy: Policy) -> Any:
    """Looks within 2.5 s with nothing changing: only the periodic resync makes more than the first."""
    socket_control = _CountingSocket()
    engine, _ = _engine(w, policy, controls=[socket_control])
    t = _running(engine)
    time.sleep(2.5)
    engine.stop()
    t.join(30)
    return socket_control.looks > 1


def coalesce_probe(w: World, policy: Policy) -> Any:
    """A change right after a pass: evaluated at once, or held for the coalescing window."""
    socket_control = _CountingSocket()
    engine, _ = _engine(w, policy, controls=[socket_control])
    t = _running(engine)
    deadline = time.monotonic() + 30
    while socket_control.looks < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)  # the start-up pass has ended: the trigger comes right after it
    engine.trigger("socket", "test")
    time.sleep(1.0)
    looks = socket_control.looks
    engine.stop()
    t.join(30)
    return looks


# -- the cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    change: dict[str, Any]
    probe: Probe | None  # None: the change is refused, and the refusal names the key
    base: dict[str, Any] = field(default_factory=dict)


CONTROL_PROBES: dict[str, Probe] = {
    **{k: audit_probe(k) for k in ("daemonConfig", "daemonFiles", "socket", "dockerGroup", "hostAudit", "hostLayout",
                                   "host")},
    "firewall": firewall_probe,
    "listeners": listeners_probe,
    "runtime": runtime_probe,
}
CTL = "spec.controls."
EXTRA = {"path": "/etc/docker/agent.conf", "owner": "root", "group": "root", "fileMode": "0640"}
PORTS = [{"port": 2376, "allow": [], "action": "drop"}, {"port": 2375, "allow": [], "action": "drop"}]


def _attribution(w: World, p: Policy) -> Any:
    return attribution_probe(w.sb, w.proc, p)


def _extra(**change: str) -> dict[str, Any]:
    return at(f"{CTL}daemonFiles.extra", [{**EXTRA, **change}])


def _ports(**change: Any) -> dict[str, Any]:
    return at(f"{CTL}firewall.ports", [{**PORTS[0], **change}, PORTS[1]])


def _control_case(key: str, value: Any, base: dict[str, Any] | None = None) -> Case:
    control = key.removeprefix(CTL).split(".")[0]
    return Case(at(key, value), CONTROL_PROBES[control], base or {})


CASES: dict[str, Case] = {
    "apiVersion": Case({"apiVersion": "nodeguard.io/v9"}, None),
    "kind": Case({"kind": "Policy"}, None),
    "metadata.name": Case(at("metadata.name", "fleet-a"), loaded_event_probe),
    "metadata.labels": Case(at("metadata.labels", {"team": "platform"}), loaded_event_probe),
    "spec.mode": Case(at("spec.mode", "enforce"), audit_probe("socket")),
    "spec.daemon.pidFile": Case(at("spec.daemon.pidFile", "/run/other.pid"), audit_probe("daemonConfig")),
    "spec.agent.resyncSeconds": Case(at("spec.agent.resyncSeconds", 1), resync_probe),
    "spec.agent.coalesceMs": Case(at("spec.agent.coalesceMs", 5000), coalesce_probe),
    "spec.agent.flapping.threshold": Case(at("spec.agent.flapping.threshold", 20), flapping_probe),
    "spec.agent.flapping.windowSeconds": Case(at("spec.agent.flapping.windowSeconds", 5), flapping_probe),
    "spec.agent.flapping.maxBackoffSeconds": Case(at("spec.agent.flapping.maxBackoffSeconds", 1), flapping_probe),
    "spec.agent.maxEventsPerRule": Case(at("spec.agent.maxEventsPerRule", 20), max_events_probe),
    "spec.agent.attribution.enabled": Case(at("spec.agent.attribution.enabled", False), _attribution),
    "spec.agent.attribution.auditLog": Case(at("spec.agent.attribution.auditLog", "/srv/elsewhere.log"), _attribution),
    "spec.agent.attribution.waitMs": Case(at("spec.agent.attribution.waitMs", 1500), _attribution),
    "spec.agent.attribution.maxPerFindingPerMinute": Case(at("spec.agent.attribution.maxPerFindingPerMinute", 1),
                                                          _attribution),
    f"{CTL}daemonConfig.path": _control_case(f"{CTL}daemonConfig.path", "/etc/docker/other.json"),
    f"{CTL}daemonConfig.allowedInsecureRegistries": _control_case(f"{CTL}daemonConfig.allowedInsecureRegistries",
                                                                  ["reg.example:5000"]),
    f"{CTL}daemonConfig.logRotation.maxSize": _control_case(f"{CTL}daemonConfig.logRotation.maxSize", "50m"),
    f"{CTL}daemonConfig.logRotation.maxFile": _control_case(f"{CTL}daemonConfig.logRotation.maxFile", "5"),
    f"{CTL}daemonConfig.logLevel": _control_case(f"{CTL}daemonConfig.logLevel", "warn"),
    f"{CTL}daemonConfig.allowedCgroupParents": _control_case(f"{CTL}daemonConfig.allowedCgroupParents", ["/custom"]),
    f"{CTL}daemonConfig.restartDaemon": Case(at(f"{CTL}daemonConfig.restartDaemon", True), None),
    f"{CTL}daemonFiles.configDir": _control_case(f"{CTL}daemonFiles.configDir", "/etc/docker2"),
    f"{CTL}daemonFiles.unitDirs": _control_case(f"{CTL}daemonFiles.unitDirs", ["/etc/systemd/system"]),
    f"{CTL}daemonFiles.extra": Case(_extra(), audit_probe("daemonFiles")),
    f"{CTL}daemonFiles.extra[].path": Case(_extra(path="/etc/docker/daemon.json"), audit_probe("daemonFiles"),
                                           _extra()),
    f"{CTL}daemonFiles.extra[].owner": Case(_extra(owner="bob"), audit_probe("daemonFiles"), _extra()),
    f"{CTL}daemonFiles.extra[].group": Case(_extra(group="docker"), audit_probe("daemonFiles"), _extra()),
    f"{CTL}daemonFiles.extra[].fileMode": Case(_extra(fileMode="0600"), audit_probe("daemonFiles"), _extra()),
    f"{CTL}daemonFiles.containerdSocket": _control_case(f"{CTL}daemonFiles.containerdSocket", "/run/ctd.sock"),
    f"{CTL}socket.path": _control_case(f"{CTL}socket.path", "/run/containerd/containerd.sock"),
    f"{CTL}socket.owner": _control_case(f"{CTL}socket.owner", "bob"),
    f"{CTL}socket.group": _control_case(f"{CTL}socket.group", "root"),
    f"{CTL}socket.fileMode": _control_case(f"{CTL}socket.fileMode", "0600"),
    f"{CTL}socket.allowedAcl": _control_case(f"{CTL}socket.allowedAcl", ["user:bob:rw-"]),
    f"{CTL}dockerGroup.group": _control_case(f"{CTL}dockerGroup.group", "bobby"),
    f"{CTL}dockerGroup.allowedMembers": _control_case(f"{CTL}dockerGroup.allowedMembers", ["bob"]),
    f"{CTL}firewall.backend": Case(at(f"{CTL}firewall.backend", "iptables-legacy"), backend_probe),
    f"{CTL}firewall.ports": Case(at(f"{CTL}firewall.ports", PORTS[:1]), firewall_probe),
    f"{CTL}firewall.ports[].port": Case(_ports(port=2377), firewall_probe),
    f"{CTL}firewall.ports[].allow": Case(_ports(allow=["192.0.2.0/24"]), firewall_probe),
    f"{CTL}firewall.ports[].action": Case(_ports(action="reject"), firewall_probe),
    f"{CTL}hostAudit.auditRulesFiles": _control_case(f"{CTL}hostAudit.auditRulesFiles", []),
    f"{CTL}hostAudit.auditRulesDirs": _control_case(f"{CTL}hostAudit.auditRulesDirs", []),
    f"{CTL}hostAudit.auditctl": Case(at(f"{CTL}hostAudit.auditctl", "never"), auditctl_probe),
    f"{CTL}hostAudit.binaryDirs": _control_case(f"{CTL}hostAudit.binaryDirs", ["/opt/bin"]),
    f"{CTL}hostLayout.mountinfo": _control_case(f"{CTL}hostLayout.mountinfo", "/nonexistent/mountinfo"),
    f"{CTL}runtime.minEngineVersion": _control_case(f"{CTL}runtime.minEngineVersion", "99.0", FAST_API),
    f"{CTL}runtime.sensitiveMounts": _control_case(f"{CTL}runtime.sensitiveMounts", ["/srv"], FAST_API),
    f"{CTL}runtime.allowedPrivileged": _control_case(f"{CTL}runtime.allowedPrivileged", ["priv"], FAST_API),
    f"{CTL}runtime.allowedSocketMounts": _control_case(f"{CTL}runtime.allowedSocketMounts", ["sock"], FAST_API),
    f"{CTL}runtime.allowedSensitiveMounts": _control_case(f"{CTL}runtime.allowedSensitiveMounts", ["etcm"],
                                                          FAST_API),
    f"{CTL}runtime.allowedHostNamespaces": _control_case(f"{CTL}runtime.allowedHostNamespaces", ["hostpid"],
                                                         FAST_API),
    f"{CTL}runtime.allowedCapabilities": _control_case(f"{CTL}runtime.allowedCapabilities", ["NET_ADMIN"], FAST_API),
    f"{CTL}runtime.rootlessSockets": _control_case(f"{CTL}runtime.rootlessSockets", "/run/nouser/*/docker.sock",
                                                   merge(FAST_API, at(f"{CTL}runtime.rules", {"rootless": "observe"}))),
    f"{CTL}runtime.timeoutSeconds": Case(at(f"{CTL}runtime.timeoutSeconds", 2.0), api_wait_probe, FAST_API),
    f"{CTL}host.certExpiryWarnDays": _control_case(f"{CTL}host.certExpiryWarnDays", 0),
    f"{CTL}host.minRsaBits": _control_case(f"{CTL}host.minRsaBits", 4096),
    f"{CTL}host.minEcBits": _control_case(f"{CTL}host.minEcBits", 384),
    f"{CTL}host.sshdConfig": _control_case(f"{CTL}host.sshdConfig", "/etc/ssh/other_config"),
    f"{CTL}host.permitRootLogin": _control_case(f"{CTL}host.permitRootLogin", ["no", "yes"]),
}
# Every control's mode and per-rule modes: enforce instead of the inherited observe, seen in the findings.
for _ctl in all_controls():
    _base = FAST_API if _ctl.policy_key == "runtime" else {}
    CASES[f"{CTL}{_ctl.policy_key}.mode"] = _control_case(f"{CTL}{_ctl.policy_key}.mode", "enforce", _base)
    CASES[f"{CTL}{_ctl.policy_key}.rules"] = _control_case(f"{CTL}{_ctl.policy_key}.rules",
                                                           {_ctl.rules[0].id: "enforce"}, _base)

KEYS = schema_keys(msgspec.inspect.type_info(Policy))


def test_every_schema_key_has_a_behaviour_case() -> None:
    assert len(KEYS) > 70
    missing = [k for k in KEYS if k not in CASES]
    assert not missing, f"policy keys with no behaviour case (add one here and a README row): {missing}"
    assert not [k for k in CASES if k not in KEYS], "cases for keys the schema no longer has"


def test_the_readme_policy_table_names_every_key() -> None:
    from tests.support.cli import REPO

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Policy"):readme.index("### Rules")]
    for key in KEYS:
        leaf = key.removeprefix("spec.").replace("[]", "").rsplit(".", 1)[-1]
        assert f"{leaf}`" in table or f".{leaf}" in table, f"{key} is not in the README's policy table"


@pytest.mark.root
@pytest.mark.parametrize("key", KEYS)
def test_changing_the_key_changes_behaviour(world: World, key: str) -> None:
    case = CASES.get(key)
    assert case is not None, f"{key}: no behaviour case"
    base = policy_of(case.base)
    assert isinstance(base, Policy), base
    changed = policy_of(merge(case.base, case.change))
    if case.probe is None:
        assert isinstance(changed, str), f"{key}: the change was expected to be refused"
        assert key.rsplit(".", 1)[-1] in changed, changed
        return
    assert isinstance(changed, Policy), changed
    assert changed != base, f"{key}: the change did not reach the parsed policy"
    before, after = case.probe(world, base), case.probe(world, changed)
    assert before != after, f"{key}: changing it changed nothing nodeguard does ({before!r})"
