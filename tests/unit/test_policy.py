"""The policy: embedded default, partial files merged over it, modes, and `nodeguard policy validate`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from nodeguard.controls.socket import SocketControl
from nodeguard.policy import ControlPolicy, PolicyError, load_policy, parse_policy
from nodeguard.structs import Mode
from tests.support.cli import REPO, check_json, run_nodeguard
from tests.support.sandbox import Sandbox

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"


def with_head(text: str) -> str:
    """A partial document made whole: the two header lines first (so lines below move by 2)."""
    text = textwrap.dedent(text).lstrip("\n")
    return text if "apiVersion" in text or text.startswith("-") else HEAD + text


def write(tmp_path: Path, text: str, name: str = "policy.yaml", *, head: bool = True) -> Path:
    p = tmp_path / name
    p.write_text(with_head(text) if head else textwrap.dedent(text).lstrip("\n"))
    return p


# -- the embedded default -----------------------------------------------------------------------


def test_embedded_default_loads_with_the_cis_settings() -> None:
    pol = load_policy()
    assert pol.api_version == "nodeguard.io/v1alpha1"
    assert pol.kind == "NodeGuardPolicy"
    assert pol.spec.mode is Mode.OBSERVE
    c = pol.spec.controls
    assert (c.socket.path, c.socket.owner, c.socket.group, c.socket.file_mode) == (
        "/var/run/docker.sock", "root", "docker", "0660")
    assert c.docker_group.allowed_members == []
    assert [(p.port, p.allow) for p in c.firewall.ports] == [(2376, []), (2375, [])]
    assert c.daemon_config.rules == {"userns-remap": Mode.OBSERVE}


def test_config_policy_and_packaged_copy_are_byte_identical() -> None:
    assert (REPO / "config/policy.yaml").read_bytes() == (REPO / "nodeguard/data/policy.yaml").read_bytes()


# -- a file names only what it changes ------------------------------------------------------------


def test_partial_file_merges_over_the_default(tmp_path: Path) -> None:
    # The header and one key of one control: everything else is the default's.
    pol = load_policy(write(tmp_path, """
        spec:
          controls:
            dockerGroup:
              allowedMembers: [ci-runner]
            socket:
              fileMode: "0600"
    """))
    default = load_policy()
    c = pol.spec.controls
    assert c.docker_group.allowed_members == ["ci-runner"]
    assert c.docker_group.group == "docker"
    assert c.socket.file_mode == "0600"
    assert (c.socket.owner, c.socket.group, c.socket.path) == ("root", "docker", "/var/run/docker.sock")
    assert c.daemon_config == default.spec.controls.daemon_config
    assert c.firewall == default.spec.controls.firewall
    assert pol.spec.agent == default.spec.agent
    assert pol.api_version == default.api_version


def test_lists_replace_the_default_and_mappings_merge(tmp_path: Path) -> None:
    pol = load_policy(write(tmp_path, """
        spec:
          controls:
            firewall:
              ports:
                - {port: 2376, allow: ["198.51.100.0/24", "2001:db8::/32"]}
            daemonConfig:
              rules:
                icc: enforce
    """))
    ports = pol.spec.controls.firewall.ports
    assert [(p.port, p.allow) for p in ports] == [(2376, ["198.51.100.0/24", "2001:db8::/32"])]
    # The default's own rule override survives beside the file's: rules merge key by key.
    assert pol.spec.controls.daemon_config.rules == {"userns-remap": Mode.OBSERVE, "icc": Mode.ENFORCE}


def test_the_header_alone_is_the_default(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "")) == load_policy()


# -- modes ------------------------------------------------------------------------------------------


def test_rule_mode_inherits_control_then_spec_mode() -> None:
    ctl = ControlPolicy(rules={"a": Mode.ENFORCE, "b": Mode.OFF})
    assert ctl.rule_mode("a", Mode.OBSERVE) is Mode.ENFORCE
    assert ctl.rule_mode("b", Mode.ENFORCE) is Mode.OFF
    assert ctl.rule_mode("c", Mode.OBSERVE) is Mode.OBSERVE  # unset control: the spec's mode
    assert ctl.rule_mode("c", Mode.ENFORCE) is Mode.ENFORCE
    enforced = ControlPolicy(mode=Mode.ENFORCE, rules={"a": Mode.OBSERVE})
    assert enforced.rule_mode("a", Mode.OBSERVE) is Mode.OBSERVE
    assert enforced.rule_mode("c", Mode.OBSERVE) is Mode.ENFORCE  # control mode beats the spec's


def test_control_off_turns_every_rule_off() -> None:
    off = ControlPolicy(mode=Mode.OFF, rules={"a": Mode.ENFORCE})
    assert off.rule_mode("a", Mode.ENFORCE) is Mode.OFF
    assert off.rule_mode("c", Mode.ENFORCE) is Mode.OFF


def test_modes_from_a_file_resolve_per_rule(tmp_path: Path) -> None:
    # `off` unquoted: YAML 1.1 would read it as the boolean false; the policy loader keeps the word.
    pol = load_policy(write(tmp_path, """
        spec:
          mode: enforce
          controls:
            socket:
              mode: observe
              rules:
                socket-acl: enforce
                socket-owner: off
            dockerGroup:
              mode: off
              rules:
                member-allowed: enforce
    """))
    sock = SocketControl()
    assert sock.rule_mode(pol, "socket-acl") is Mode.ENFORCE
    assert sock.rule_mode(pol, "socket-owner") is Mode.OFF
    assert sock.rule_mode(pol, "socket-mode") is Mode.OBSERVE
    assert pol.spec.controls.docker_group.rule_mode("member-allowed", pol.spec.mode) is Mode.OFF
    assert pol.spec.controls.daemon_config.rule_mode("icc", pol.spec.mode) is Mode.ENFORCE


def test_yes_no_still_mean_booleans_for_boolean_fields(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "spec: {controls: {daemonConfig: {restartDaemon: no}}}\n")) == load_policy()
    # `yes` is read as true: refused for what true means (nodeguard never restarts dockerd), not as a word.
    with pytest.raises(PolicyError, match="never restarts dockerd"):
        load_policy(write(tmp_path, "spec: {controls: {daemonConfig: {restartDaemon: yes}}}\n"))


# -- errors: file, line, field and why ----------------------------------------------------------------

BAD_POLICIES = {
    "wrong-mode": ("""
        spec:
          controls:
            socket:
              mode: enforcing
        """, 4, "spec.controls.socket.mode", ["'off', 'observe' or 'enforce'", "enforcing"]),
    "unknown-key": ("""
        spec:
          controls:
            socket:
              owner: root
              colour: blue
        """, 5, "spec.controls.socket.colour", ["unknown key"]),
    "unknown-rule": ("""
        spec:
          controls:
            daemonConfig:
              rules:
                icc: enforce
                no-such-rule: observe
        """, 6, "spec.controls.daemonConfig.rules.no-such-rule", ["unknown rule", "live-restore"]),
    "bare-int-file-mode": ("""
        spec:
          controls:
            socket:
              fileMode: 0660
        """, 4, "spec.controls.socket.fileMode", ['quoted octal string such as "0660"', "432"]),
    "bad-cidr": ("""
        spec:
          controls:
            firewall:
              ports:
                - port: 2376
                  allow:
                    - 198.51.100.0/24
                    - 198.51.100.0/33
        """, 6, "spec.controls.firewall.ports[0].allow", ["'198.51.100.0/33' is not an IPv4 or IPv6 network"]),
    "invalid-yaml": ("""
        spec:
          controls: {socket: [
        """, 3, "(document)", ["not valid YAML"]),
    "not-a-mapping": ("""
        - apiVersion
        - kind
        """, 1, "(document)", ["must be a mapping, got list"]),
    "wrong-api-version": ("""
        apiVersion: nodeguard.io/v9
        kind: NodeGuardPolicy
        """, 1, "apiVersion", ["nodeguard.io/v1alpha1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_policy_validate_explains_file_line_field_and_why(tmp_path: Path, case: str) -> None:
    text, line, fld, whys = BAD_POLICIES[case]
    path = write(tmp_path, text, f"{case}.yaml")
    line += 2 if with_head(text).startswith(HEAD) else 0
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    located = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{path}:{line}: {fld}: ")]
    assert located, proc.stderr
    for why in whys:
        assert why in located[0], proc.stderr
    # The same problem, as the library reports it.
    with pytest.raises(PolicyError) as exc_info:
        parse_policy(path.read_text(), str(path))
    assert (line, fld if fld != "(document)" else "") in [(p[0], p[1]) for p in exc_info.value.problems]


def test_policy_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
        spec:
          mode: enforcing
          controls:
            socket:
              fileMode: 660
              rules:
                socket-acll: enforce
    """)
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert [ln.split(": ")[0] for ln in lines if ln.startswith(str(path))] == [f"{path}:{n}" for n in (4, 7, 9)]
    assert f"{path}:4: spec.mode: " in proc.stderr
    assert f"{path}:7: spec.controls.socket.fileMode: " in proc.stderr
    assert f"{path}:9: spec.controls.socket.rules.socket-acll: unknown rule" in proc.stderr


def test_policy_validate_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "spec:\n  mode: enforce\n")
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_policy_validate_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_nodeguard("policy", "validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_huge_policy_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)


def test_the_shipped_default_validates() -> None:
    proc = run_nodeguard("policy", "validate", str(REPO / "config/policy.yaml"))
    assert proc.returncode == 0, proc.stderr


# -- restartDaemon: refused, not silently ignored (issue 19) ----------------------------------------


def test_restart_daemon_true_is_refused_with_its_line_and_why(tmp_path: Path) -> None:
    path = write(tmp_path, """
        spec:
          controls:
            daemonConfig:
              restartDaemon: true
    """)
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 2
    assert f"{path}:6: spec.controls.daemonConfig.restartDaemon: true is not supported" in proc.stderr
    assert "never restarts dockerd" in proc.stderr and "restart_required" in proc.stderr
    # false stays valid: existing files that spell out the default keep loading.
    assert load_policy(write(tmp_path, "spec: {controls: {daemonConfig: {restartDaemon: false}}}")) == load_policy()


# -- bounded values (issue 17) --------------------------------------------------------------------

OUT_OF_RANGE = {
    "resync-1e10": ("spec:\n  agent:\n    resyncSeconds: 1e10\n", 3, "spec.agent.resyncSeconds"),
    "resync-0": ("spec:\n  agent:\n    resyncSeconds: 0.5\n", 3, "spec.agent.resyncSeconds"),
    "resync-nan": ("spec:\n  agent:\n    resyncSeconds: .nan\n", 3, "spec.agent.resyncSeconds"),
    "resync-inf": ("spec:\n  agent:\n    resyncSeconds: .inf\n", 3, "spec.agent.resyncSeconds"),
    "coalesce": ("spec:\n  agent:\n    coalesceMs: 60000\n", 3, "spec.agent.coalesceMs"),
    "flap-threshold": ("spec:\n  agent:\n    flapping:\n      threshold: 10000000\n", 4,
                       "spec.agent.flapping.threshold"),
    "flap-window": ("spec:\n  agent:\n    flapping:\n      windowSeconds: 1e9\n", 4,
                    "spec.agent.flapping.windowSeconds"),
    "flap-backoff": ("spec:\n  agent:\n    flapping:\n      maxBackoffSeconds: 0\n", 4,
                     "spec.agent.flapping.maxBackoffSeconds"),
    "api-timeout": ("spec:\n  controls:\n    runtime:\n      timeoutSeconds: 1e6\n", 4,
                    "spec.controls.runtime.timeoutSeconds"),
    "rsa-bits": ("spec:\n  controls:\n    host:\n      minRsaBits: 1000000\n", 4, "spec.controls.host.minRsaBits"),
    "max-file": ("spec:\n  controls:\n    daemonConfig:\n      logRotation: {maxFile: \"0\"}\n", 4,
                 "spec.controls.daemonConfig.logRotation.maxFile"),
    "socket-mode-7777": ("spec:\n  controls:\n    socket:\n      fileMode: \"7777\"\n", 4,
                         "spec.controls.socket.fileMode"),
    "extra-mode-4755": ("spec:\n  controls:\n    daemonFiles:\n      extra:\n"
                        "        - {path: /etc/docker/x, fileMode: \"4755\"}\n", 5,
                        "spec.controls.daemonFiles.extra[0].fileMode"),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_out_of_range_values_are_refused_with_file_line_and_field(tmp_path: Path, case: str) -> None:
    text, line, fld = OUT_OF_RANGE[case]
    path = write(tmp_path, text, f"{case}.yaml")
    with pytest.raises(PolicyError) as exc_info:
        load_policy(path)
    assert (line + 2, fld) in [(p[0], p[1]) for p in exc_info.value.problems], exc_info.value


def test_policy_validate_refuses_resync_1e10_and_mode_7777(tmp_path: Path) -> None:
    path = write(tmp_path, 'spec:\n  agent: {resyncSeconds: 1e10}\n  controls: {socket: {fileMode: "7777"}}\n')
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 2
    assert f"{path}:4: spec.agent.resyncSeconds: Input should be less than or equal to 86400" in proc.stderr
    assert f"{path}:5: spec.controls.socket.fileMode: '7777' is wider than 0777" in proc.stderr


@pytest.mark.parametrize(("key", "value"), [("resyncSeconds", 1), ("resyncSeconds", 86400), ("coalesceMs", 0)])
def test_the_ends_of_each_range_are_accepted(tmp_path: Path, key: str, value: int) -> None:
    pol = load_policy(write(tmp_path, f"spec: {{agent: {{{key}: {value}}}}}"))
    assert msgspec.to_builtins(pol.spec.agent)[key] == value


def test_a_reload_with_an_out_of_range_value_keeps_the_last_good_policy(sandbox: Sandbox, tmp_path: Path) -> None:
    from nodeguard.engine import Engine, EngineOptions
    from nodeguard.events.model import Event, EventName
    from nodeguard.host import HostRoot

    events: list[Event] = []

    class ListSink:
        def emit(self, event: Event) -> None:
            events.append(event)

        def close(self) -> None:
            pass

    path = write(tmp_path, "spec: {agent: {resyncSeconds: 30}}")
    good = load_policy(path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    engine = Engine(EngineOptions(HostRoot(sandbox.root), state, policy_path=path), good, ListSink(), controls=[])
    for bad in (HEAD + "spec: {agent: {resyncSeconds: 1e10}}", HEAD + 'spec: {controls: {socket: {fileMode: "7777"}}}',
                HEAD + "spec: {controls: {daemonConfig: {restartDaemon: true}}}", "kind: NodeGuardPolicy\n",
                ""):  # "" is the truncated file a reader sees mid-write
        path.write_text(bad)
        assert engine.check_policy("test") is False
        assert engine.policy == good
        rejected = [e for e in events if e.name is EventName.POLICY_REJECTED]
        assert rejected and str(path) in rejected[-1].body, [e.body for e in events]
        events.clear()


# -- a whole document or nothing (issue 18) -------------------------------------------------------


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty document"),
    ("# only a comment\n", "empty document"),
    ("\n\n", "empty document"),
    ("apiVersion: nodeguard.io/v1alpha1\n", "kind: missing"),
    ("spec:\n  mode: enforce\n", "apiVersion: missing"),
    ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  controls:\n    dockerGroup:\n"
     "      allowedMembers: [bob, al", "not valid YAML"),
])
def test_an_empty_partial_or_truncated_document_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=why):
        load_policy(path)
    proc = run_nodeguard("policy", "validate", str(path))
    assert proc.returncode == 2
    assert why in proc.stderr and "Traceback" not in proc.stderr


def test_no_policy_at_all_is_the_embedded_default(sandbox: Sandbox) -> None:
    assert load_policy(None).metadata.name == "cis-default"
    rc, report = check_json(sandbox.root, "--only", "docker-group")  # no --policy
    assert rc == 0 and report["findings"]
