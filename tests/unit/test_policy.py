"""The policy: embedded default, partial files merged over it, modes, and `nodeguard policy validate`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nodeguard.controls.socket import SocketControl
from nodeguard.policy import ControlPolicy, PolicyError, load_policy, parse_policy
from nodeguard.structs import Mode
from tests.support.cli import REPO, run_nodeguard


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
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
    # No apiVersion, no kind, one key of one control: everything else is the default's.
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


def test_an_empty_file_is_the_default(tmp_path: Path) -> None:
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
    pol = load_policy(write(tmp_path, "spec: {controls: {daemonConfig: {restartDaemon: yes}}}\n"))
    assert pol.spec.controls.daemon_config.restart_daemon is True


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
        """, 1, "apiVersion", ["nodeguard.io/v1alpha1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_policy_validate_explains_file_line_field_and_why(tmp_path: Path, case: str) -> None:
    text, line, fld, whys = BAD_POLICIES[case]
    path = write(tmp_path, text, f"{case}.yaml")
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
    assert [ln.split(": ")[0] for ln in lines if ln.startswith(str(path))] == [f"{path}:{n}" for n in (2, 5, 7)]
    assert f"{path}:2: spec.mode: " in proc.stderr
    assert f"{path}:5: spec.controls.socket.fileMode: " in proc.stderr
    assert f"{path}:7: spec.controls.socket.rules.socket-acll: unknown rule" in proc.stderr


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
