"""Property tests: whatever a hostile host writes, the parsers and evaluate functions answer, never raise."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeguard.controls.daemon_config import DaemonConfigControl, DaemonConfigObservation, parse_daemon_json, parse_host
from nodeguard.controls.socket import parse_acl
from nodeguard.host import FileStat
from nodeguard.host.accounts import parse_group, parse_gshadow, parse_passwd
from nodeguard.host.shadow import remove_member_line
from nodeguard.policy import load_policy
from nodeguard.structs import Status

POLICY = load_policy()
CTL = DaemonConfigControl()
KEYS = ["hosts", "tls", "tlsverify", "icc", "log-level", "iptables", "insecure-registries", "storage-driver",
        "userns-remap", "no-new-privileges", "live-restore", "userland-proxy", "experimental", "log-driver",
        "log-opts", "default-ulimits", "authorization-plugins", "seccomp-profile", "cgroup-parent", "storage-opts"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
configs = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), json_values, max_size=8)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_daemon_json_never_raises(raw: bytes) -> None:
    value, why = parse_daemon_json(raw)
    assert (value is None) != (why is None)
    assert value is None or isinstance(value, dict)


@settings(max_examples=120, deadline=None)
@given(configs, st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4))
def test_evaluate_answers_every_rule_for_any_configuration(config: dict[str, Any], flags: dict[str, Any]) -> None:
    obs = DaemonConfigObservation("/etc/docker/daemon.json", FileStat("/etc/docker/daemon.json", 0, 0, 0o644,
                                                                      "file", 1, 1, 1), config=config, flags=flags)
    findings = CTL.evaluate(obs, POLICY)
    assert {r.id for r in CTL.rules} <= {f.rule for f in findings}
    assert all(f.status in (Status.PASS, Status.FAIL, Status.SKIP) for f in findings)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.booleans())
def test_parse_host_never_raises(raw: str, tls: bool) -> None:
    endpoint = parse_host(raw, tls)
    assert endpoint.port is None or endpoint.scheme == "tcp"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_parse_acl_raises_only_value_error(blob: bytes) -> None:
    try:
        entries = parse_acl(blob)
    except ValueError:
        return
    assert all(0 <= e.perms <= 7 for e in entries)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_account_parsers_never_raise(text: str) -> None:
    problems: list[str] = []
    parse_passwd(text, problems)
    parse_group(text, problems)
    parse_gshadow(text, problems)


@settings(max_examples=300, deadline=None)
@given(NAME, NAME, st.lists(NAME, max_size=6), st.sampled_from([":x:990:", ":!:"]))
def test_remove_member_line_removes_only_that_member(group: str, member: str, members: list[str],
                                                     middle: str) -> None:
    line = f"{group}{middle}{','.join(members)}"
    field = 3 if middle == ":x:990:" else 2
    out = remove_member_line(line, group, member, field)
    kept = out.split(":")[field].split(",") if out.split(":")[field] else []
    assert member not in kept
    assert kept == [m for m in members if m != member]
    assert out.split(":")[:field] == line.split(":")[:field]
    # Another group's line is never touched.
    assert remove_member_line(line, group + "x", member, field) == line
