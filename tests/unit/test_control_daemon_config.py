"""daemon-config: every rule's evaluate, pass and fail, on daemon.json and dockerd's flags, hostile input included.

Then CIS section 2: every id from daemon.json (sandbox) *and* from dockerd's flags. Flags are given
the way `DaemonProcess.config_values()` hands them over (daemon.json spelling), parsed from a real
command line by `parse_flags`. The real-dockerd versions of these cases are in
tests/integration/test_cis_dockerd.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nodeguard.controls.daemon_config import (
    DaemonConfigControl,
    DaemonConfigObservation,
    parse_daemon_json,
    parse_host,
)
from nodeguard.dockerd import DaemonProcess, parse_flags
from nodeguard.host import FileStat
from nodeguard.structs import Finding, Status
from tests.support.rules import assert_complete, context, one, policy_from, run, statuses
from tests.support.sandbox import Sandbox

CTL = DaemonConfigControl()
PATH = "/etc/docker/daemon.json"

# The rules of DESIGN.md's table; later issues add more rules to the control (CIS 2.1, 2.8, ...),
# which these tests leave to their own.
CORE_RULES = {"valid-json", "tcp-host-tls", "plaintext-2375", "tls-verify", "icc", "log-level", "iptables",
              "insecure-registries", "storage-driver", "userns-remap", "no-new-privileges", "live-restore",
              "userland-proxy", "experimental", "log-rotation"}

HARDENED: dict[str, Any] = {
    "icc": False, "live-restore": True, "no-new-privileges": True, "userland-proxy": False,
    "log-level": "info", "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"},
    "userns-remap": "default", "hosts": ["unix:///var/run/docker.sock"],
}


def evaluate(config: dict[str, Any] | None, flags: list[str] | None = None, policy: str | None = None) -> list[Finding]:
    """Pure evaluate on a constructed observation: `config` as the file holds it, `flags` as dockerd's argv."""
    obs = DaemonConfigObservation(path=PATH, stat=None if config is None else _fake_stat())
    obs.config = config
    if flags is not None:
        argv = ["dockerd", *flags]
        obs.flags = DaemonProcess(4242, argv, "pidfile", parse_flags(argv)).config_values()
        obs.daemon_pid = 4242
    findings = CTL.evaluate(obs, policy_from(policy))
    assert_complete(CTL, findings)
    return findings


def _fake_stat() -> FileStat:
    return FileStat(PATH, 0, 0, 0o644, "file", 2, 1, 1)


def write_json(sb: Sandbox, text: str | bytes) -> Path:
    p = sb.path(PATH)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_a_hardened_configuration_passes_every_rule() -> None:
    found = statuses(evaluate(HARDENED))
    assert set(found) >= CORE_RULES
    assert {r for r, s in found.items() if s is not Status.PASS and r in CORE_RULES} == set(), found


def test_the_docker_defaults_fail_what_cis_asks_to_change() -> None:
    found = statuses(evaluate({}))
    failing = {r for r, s in found.items() if s is Status.FAIL and r in CORE_RULES}
    assert failing == {"icc", "no-new-privileges", "live-restore", "userland-proxy", "userns-remap", "log-rotation"}


def test_no_daemon_json_is_valid_and_means_defaults() -> None:
    found = evaluate(None)
    assert one(found, "valid-json").status is Status.PASS
    assert one(found, "icc").status is Status.FAIL


# -- listeners -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["tcp://0.0.0.0:2376", "tcp://127.0.0.1:12345", "tcp://[::]:2376", "0.0.0.0:2376",
                                  ":2376"])
def test_tcp_host_without_tlsverify_fails(host: str) -> None:
    f = one(evaluate({**HARDENED, "hosts": ["unix:///var/run/docker.sock", host]}), "tcp-host-tls")
    assert f.status is Status.FAIL
    assert f.observed == [host]
    assert f.details["source"] == "file"


def test_tcp_host_with_tlsverify_passes() -> None:
    cfg = {**HARDENED, "hosts": ["tcp://0.0.0.0:2376"], "tlsverify": True, "tlscacert": "/etc/docker/ca.pem"}
    found = statuses(evaluate(cfg))
    assert found["tcp-host-tls"] is Status.PASS
    assert found["plaintext-2375"] is Status.PASS
    assert found["tls-verify"] is Status.PASS


@pytest.mark.parametrize("host", ["tcp://0.0.0.0:2375", "tcp://127.0.0.1:2375", "tcp://[::1]:2375", ":2375",
                                  "tcp://10.0.0.1:2375/"])
def test_any_listener_on_2375_fails_even_with_tlsverify(host: str) -> None:
    f = one(evaluate({**HARDENED, "hosts": [host], "tlsverify": True}), "plaintext-2375")
    assert f.status is Status.FAIL, host
    assert f.observed == [host]


def test_tcp_without_a_port_defaults_to_2376_under_tls() -> None:
    assert parse_host("tcp://0.0.0.0", tls=True).port == 2376
    assert parse_host("tcp://0.0.0.0", tls=False).port == 2375
    assert parse_host("tcp://[2001:db8::1]:2376", tls=False).host == "2001:db8::1"
    assert parse_host("unix:///run/docker.sock", tls=False).scheme == "unix"
    assert parse_host("fd://", tls=False).scheme == "fd"


def test_hosts_as_a_single_string_is_still_audited() -> None:
    assert one(evaluate({**HARDENED, "hosts": "tcp://0.0.0.0:2375"}), "plaintext-2375").status is Status.FAIL


def test_a_tls_flag_without_tlsverify_fails() -> None:
    assert one(evaluate(HARDENED, ["--tls"]), "tls-verify").status is Status.FAIL
    assert one(evaluate(HARDENED, ["--tls", "--tlsverify"]), "tls-verify").status is Status.PASS


def test_tls_without_tlsverify_fails() -> None:
    found = statuses(evaluate({**HARDENED, "hosts": ["tcp://0.0.0.0:2376"], "tls": True}))
    assert found["tls-verify"] is Status.FAIL
    # tls alone encrypts but accepts any client: the TCP listener is not protected either.
    assert found["tcp-host-tls"] is Status.FAIL
    assert statuses(evaluate({**HARDENED, "tls": True, "tlsverify": True}))["tls-verify"] is Status.PASS


# -- flags beat the file ---------------------------------------------------------------------------


def test_a_host_flag_is_audited_though_the_file_is_clean() -> None:
    found = evaluate(HARDENED, ["-H", "unix:///var/run/docker.sock", "-H", "tcp://0.0.0.0:2375"])
    f = one(found, "plaintext-2375")
    assert f.status is Status.FAIL
    assert f.details["source"] == "flag"
    assert one(found, "tcp-host-tls").status is Status.FAIL


@pytest.mark.parametrize(("flags", "rule"), [
    (["--live-restore=false"], "live-restore"),
    (["--icc=true"], "icc"),
    (["--userland-proxy=true"], "userland-proxy"),
    (["--iptables=false"], "iptables"),
    (["--experimental"], "experimental"),
    (["--insecure-registry", "registry.example:5000"], "insecure-registries"),
    (["-l", "debug"], "log-level"),
])
def test_flags_override_the_file(flags: list[str], rule: str) -> None:
    assert one(evaluate(HARDENED), rule).status is Status.PASS
    f = one(evaluate(HARDENED, flags), rule)
    assert f.status is Status.FAIL, f
    assert f.details["source"] == "flag"


def test_a_flag_can_also_fix_what_the_file_lacks() -> None:
    f = one(evaluate({}, ["--live-restore", "--no-new-privileges"]), "live-restore")
    assert f.status is Status.PASS


# -- single keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "bad", "good"), [
    ("icc", {"icc": True}, {"icc": False}),
    ("log-level", {"log-level": "debug"}, {"log-level": "info"}),
    ("iptables", {"iptables": False}, {"iptables": True}),
    ("no-new-privileges", {"no-new-privileges": False}, {"no-new-privileges": True}),
    ("live-restore", {"live-restore": False}, {"live-restore": True}),
    ("userland-proxy", {"userland-proxy": True}, {"userland-proxy": False}),
    ("experimental", {"experimental": True}, {"experimental": False}),
    ("insecure-registries", {"insecure-registries": ["r.example:5000"]}, {"insecure-registries": []}),
    ("storage-driver", {"storage-driver": "aufs"}, {"storage-driver": "overlay2"}),
    ("userns-remap", {"userns-remap": ""}, {"userns-remap": "default"}),
    ("log-rotation", {"log-opts": {"max-size": "10m"}}, {"log-opts": {"max-size": "10m", "max-file": "3"}}),
])
def test_each_key_rule_passes_and_fails(rule: str, bad: dict[str, Any], good: dict[str, Any]) -> None:
    failed = one(evaluate({**HARDENED, **bad}), rule)
    assert failed.status is Status.FAIL, failed
    assert failed.cis == CTL.rule(rule).cis
    assert failed.severity is CTL.rule(rule).severity
    assert one(evaluate({**HARDENED, **good}), rule).status is Status.PASS


def test_allowed_insecure_registries_match_whole_names() -> None:
    pol = "spec: {controls: {daemonConfig: {allowedInsecureRegistries: ['reg.example:5000']}}}"
    ok = one(evaluate({**HARDENED, "insecure-registries": ["reg.example:5000"]}, policy=pol), "insecure-registries")
    assert ok.status is Status.PASS
    bad = one(evaluate({**HARDENED, "insecure-registries": ["reg.example:500"]}, policy=pol), "insecure-registries")
    assert bad.status is Status.FAIL


def test_log_level_follows_the_policy() -> None:
    pol = "spec: {controls: {daemonConfig: {logLevel: warn}}}"
    assert one(evaluate(HARDENED, policy=pol), "log-level").status is Status.FAIL
    assert one(evaluate({**HARDENED, "log-level": "warn"}, policy=pol), "log-level").status is Status.PASS


def test_a_non_rotating_log_driver_needs_no_rotation() -> None:
    assert one(evaluate({**HARDENED, "log-driver": "journald", "log-opts": {}}), "log-rotation").status is Status.PASS


@pytest.mark.parametrize("cfg", [
    {"hosts": 5}, {"hosts": [None, 7]}, {"log-opts": "max-size=1m"}, {"insecure-registries": "r.example"},
    {"icc": {"nested": [1, 2]}}, {"tlsverify": "yes", "hosts": ["tcp://h:x"]},
])
def test_odd_value_types_never_crash(cfg: dict[str, Any]) -> None:
    for f in evaluate(cfg):
        assert f.status in (Status.PASS, Status.FAIL, Status.SKIP)


# -- the file itself, hostile input included (observe on a sandbox) -----------------------------------------


def test_observe_reads_the_sandbox_file(sandbox: Sandbox) -> None:
    write_json(sandbox, json.dumps(HARDENED))
    found = run(CTL, sandbox)
    assert {f.rule for f in found if f.status is not Status.PASS and f.rule in CORE_RULES} == set()
    assert one(found, "icc").path == PATH


def _only_valid_json_fails(found: list[Finding]) -> Finding:
    bad = one(found, "valid-json")
    assert bad.status is Status.FAIL
    assert {f.status for f in found if f.rule != "valid-json"} == {Status.SKIP}
    return bad


def test_invalid_json_is_reported_with_line_and_column(sandbox: Sandbox) -> None:
    write_json(sandbox, '{\n  "icc": false,\n  "live-restore": true,\n}\n')
    bad = _only_valid_json_fails(run(CTL, sandbox))
    assert "line 4 column 1" in bad.message
    assert bad.path == PATH


def test_a_json_array_is_not_a_configuration(sandbox: Sandbox) -> None:
    write_json(sandbox, '[{"icc": false}]')
    bad = _only_valid_json_fails(run(CTL, sandbox))
    assert "must be a JSON object" in bad.message
    assert "array" in bad.message


@pytest.mark.parametrize("text", ["null", '"icc"', "42", "true"])
def test_json_scalars_are_not_a_configuration(text: str) -> None:
    value, why = parse_daemon_json(text.encode())
    assert value is None
    assert why is not None and "must be a JSON object" in why


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_file_is_an_empty_configuration(sandbox: Sandbox, text: str) -> None:
    write_json(sandbox, text)
    found = run(CTL, sandbox)
    assert one(found, "valid-json").status is Status.PASS
    assert one(found, "icc").status is Status.FAIL  # defaults apply


def test_a_huge_file_is_not_read(sandbox: Sandbox) -> None:
    p = write_json(sandbox, "")
    os.truncate(p, 65 * 1024 * 1024)  # sparse: costs no disk, larger than the read limit
    bad = _only_valid_json_fails(run(CTL, sandbox))
    assert "limit" in bad.message


def test_deeply_nested_json_is_reported_not_a_crash(sandbox: Sandbox) -> None:
    # Beyond dockerd's own limit (Go's encoding/json: 10,000 levels): dockerd refuses it too.
    write_json(sandbox, '{"a":' + "[" * 200_000 + "]" * 200_000 + "}")
    bad = _only_valid_json_fails(run(CTL, sandbox))
    assert "exceeded max depth (10000)" in bad.message


# Files a real dockerd 20.10 starts with, listening on [::]:2375 (tests/integration/
# test_daemon_json_oracle.py starts one with each): nodeguard must read them as dockerd does and
# judge the listener, not stop at "invalid JSON".
PLAIN = b'"hosts": ["unix:///run/docker.sock", "tcp://0.0.0.0:2375"]'
DOCKERD_ACCEPTS = {
    "latin-1 byte in a label": b'{' + PLAIN + b', "labels": ["caf\xe9=1"]}',
    "1500-deep array under runtimes": b'{' + PLAIN + b', "runtimes": {"r": {"path": "runc", "x": '
                                      + b"[" * 1500 + b"]" * 1500 + b'}}}',
    "5000-digit fraction": b'{' + PLAIN + b', "runtimes": {"r": {"path": "runc", "x": 0.' + b"0" * 4998 + b'1}}}',
    "text after the object": b'{' + PLAIN + b'} trailing garbage',
    "duplicate key, last wins": b'{"hosts": ["unix:///run/docker.sock"], ' + PLAIN + b'}',
}


@pytest.mark.parametrize("name", list(DOCKERD_ACCEPTS), ids=list(DOCKERD_ACCEPTS))
def test_files_dockerd_accepts_are_audited_for_the_listener(sandbox: Sandbox, name: str) -> None:
    write_json(sandbox, DOCKERD_ACCEPTS[name])
    found = run(CTL, sandbox)
    assert one(found, "valid-json").status is Status.PASS
    assert one(found, "plaintext-2375").status is Status.FAIL
    assert one(found, "tcp-host-tls").status is Status.FAIL
    assert one(found, "plaintext-2375").observed == ["tcp://0.0.0.0:2375"]
    # Every finding survives the event pipeline's JSON encoding (no 1500-level recursion, no surrogates).
    json.dumps([f.to_json() for f in found], ensure_ascii=False).encode()


def test_a_number_out_of_float64_range_is_refused_as_dockerd_refuses_it() -> None:
    # dockerd: "cannot unmarshal number 1000...0 into Go value of type float64"; Python's int()
    # would raise ValueError past 4,300 digits: the parser must answer, never raise.
    value, why = parse_daemon_json(b'{"hosts": [], "x": {"y": 1' + b"0" * 4999 + b"}}")
    assert value is None and why is not None and "out of range" in why
    value, why = parse_daemon_json(b'{"x": -1e400}')
    assert value is None and why is not None and "out of range" in why


def test_a_latin_1_label_is_read_as_u_fffd_like_dockerd_shows_it() -> None:
    value, why = parse_daemon_json(b'{"labels": ["caf\xe9=1", "\\ud800"]}')
    assert why is None and value == {"labels": ["caf\ufffd=1", "\ufffd"]}


def test_a_symlink_out_of_the_root_is_never_followed(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "outside.json"
    secret.write_text('{"icc": false, "planted": "OUTSIDE-SECRET"}')
    os.symlink(str(secret), sandbox.path(PATH))
    obs = CTL.observe(context(sandbox))
    assert obs.raw is None and obs.config is None
    bad = _only_valid_json_fails(CTL.evaluate(obs, policy_from()))
    assert "symlink" in bad.message
    assert "OUTSIDE-SECRET" not in json.dumps([f.to_json() for f in run(CTL, sandbox)])


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_unreadable_daemon_json_is_a_finding(sandbox: Sandbox, kind: str) -> None:
    # chmod 000 is no obstacle to root: a folder or a FIFO in the file's place is.
    if kind == "folder":
        sandbox.path(PATH).mkdir()
    else:
        os.mkfifo(sandbox.path(PATH))
    bad = _only_valid_json_fails(run(CTL, sandbox))
    assert "cannot read" in bad.message
    assert ("dir" if kind == "folder" else "fifo") in bad.message


def test_non_utf8_is_read_like_dockerd_and_noted(sandbox: Sandbox) -> None:
    # dockerd reads the stray bytes as U+FFFD and starts: the file is valid, the oddity is said.
    write_json(sandbox, b'{"log-level": "\xff\xfe"}')
    found = run(CTL, sandbox)
    ok = one(found, "valid-json")
    assert ok.status is Status.PASS and "not UTF-8" in ok.message
    assert one(found, "log-level").observed == "\ufffd\ufffd"
    # Outside a string such a byte is a syntax error for dockerd and for nodeguard.
    write_json(sandbox, b'{"log-level": "info"}\xff')  # after the value: never read
    assert one(run(CTL, sandbox), "valid-json").status is Status.PASS
    write_json(sandbox, b'{"log-level": \xff}')
    assert "invalid character" in _only_valid_json_fails(run(CTL, sandbox)).message


def test_dockerd_config_file_flag_chooses_the_file(sandbox: Sandbox) -> None:
    # The real dockerd's --config-file, read through the pidfile and /proc: the integration tests
    # do it with a live daemon; here the policy path is the fallback when no daemon runs.
    sandbox.write("/etc/docker/other.json", json.dumps({"icc": True}))
    pol = policy_from("spec: {controls: {daemonConfig: {path: /etc/docker/other.json}}}")
    found = run(CTL, sandbox, pol)
    assert one(found, "icc").status is Status.FAIL
    assert one(found, "icc").path == "/etc/docker/other.json"


# -- dockerd's command line ------------------------------------------------------------------------


def test_parse_flags_as_dockerd_reads_them() -> None:
    argv = ["/usr/sbin/dockerd", "-H", "fd://", "-Htcp://0.0.0.0:2375", "--host=unix:///run/d.sock", "-D",
            "--tlsverify", "--iptables=false", "--config-file", "/etc/docker/other.json", "-G", "docker",
            "--insecure-registry", "a:5000", "--insecure-registry=b:5000", "-l", "warn"]
    flags = parse_flags(argv)
    assert flags["host"] == ["fd://", "tcp://0.0.0.0:2375", "unix:///run/d.sock"]
    assert flags["config-file"] == ["/etc/docker/other.json"]
    values = DaemonProcess(1, argv, "pidfile", flags).config_values()
    assert values["hosts"] == ["fd://", "tcp://0.0.0.0:2375", "unix:///run/d.sock"]
    assert (values["debug"], values["tlsverify"], values["iptables"]) == (True, True, False)
    assert values["insecure-registries"] == ["a:5000", "b:5000"]
    assert (values["group"], values["log-level"]) == ("docker", "warn")


# -- CIS section 2, id by id -----------------------------------------------------------------------

ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}
DENY_BY_DEFAULT = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}

# (CIS, rule, passing daemon.json, failing daemon.json)
FILE_CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("2.2", "icc", {"icc": False}, {"icc": True}),
    ("2.3", "log-level", {"log-level": "info"}, {"log-level": "debug"}),
    ("2.4", "iptables", {}, {"iptables": False}),
    ("2.5", "insecure-registries", {"insecure-registries": []}, {"insecure-registries": ["10.0.0.1:5000"]}),
    ("2.6", "storage-driver", {"storage-driver": "overlay2"}, {"storage-driver": "aufs"}),
    ("2.7", "tcp-host-tls", {"hosts": ["tcp://0.0.0.0:2376"], "tlsverify": True}, {"hosts": ["tcp://0.0.0.0:2376"]}),
    ("2.8", "default-ulimits", {"default-ulimits": {"nofile": {"Name": "nofile", "Hard": 64000, "Soft": 64000}}},
     {"default-ulimits": {}}),
    ("2.9", "userns-remap", {"userns-remap": "default"}, {}),
    ("2.10", "cgroup-parent", {}, {"cgroup-parent": "/custom"}),
    ("2.11", "base-device-size", {"storage-opts": ["overlay2.size=10G"]}, {"storage-opts": ["dm.basesize=20G"]}),
    ("2.12", "authorization-plugin", {"authorization-plugins": ["authz-broker"]}, {"authorization-plugins": []}),
    ("2.13", "remote-logging", {"log-driver": "syslog"}, {"log-driver": "local"}),
    ("2.14", "no-new-privileges", {"no-new-privileges": True}, {}),
    ("2.15", "live-restore", {"live-restore": True}, {"live-restore": False}),
    ("2.16", "userland-proxy", {"userland-proxy": False}, {}),
    ("2.17", "seccomp-profile", {"seccomp-profile": "/etc/docker/seccomp.json"}, {"seccomp-profile": "unconfined"}),
    ("2.18", "experimental", {"experimental": False}, {"experimental": True}),
]

# (CIS, rule, passing dockerd arguments, failing dockerd arguments)
FLAG_CASES: list[tuple[str, str, list[str], list[str]]] = [
    ("2.2", "icc", ["--icc=false"], ["--icc"]),
    ("2.3", "log-level", ["-l", "info"], ["--log-level=debug"]),
    ("2.4", "iptables", ["--iptables"], ["--iptables=false"]),
    ("2.5", "insecure-registries", [], ["--insecure-registry", "10.0.0.1:5000"]),
    ("2.6", "storage-driver", ["-s", "overlay2"], ["--storage-driver=aufs"]),
    ("2.7", "plaintext-2375", ["-H", "unix:///run/docker.sock"], ["-H", "tcp://0.0.0.0:2375"]),
    ("2.8", "default-ulimits", ["--default-ulimit", "nproc=1024:2048", "--default-ulimit", "nofile=100:200"], []),
    ("2.9", "userns-remap", ["--userns-remap=default"], []),
    ("2.10", "cgroup-parent", [], ["--cgroup-parent", "/custom"]),
    ("2.11", "base-device-size", ["--storage-opt", "overlay2.size=1G"], ["--storage-opt", "dm.basesize=20G"]),
    ("2.12", "authorization-plugin", ["--authorization-plugin=authz-broker"], []),
    ("2.13", "remote-logging", ["--log-driver", "gelf"], ["--log-driver=json-file"]),
    ("2.14", "no-new-privileges", ["--no-new-privileges"], ["--no-new-privileges=false"]),
    ("2.15", "live-restore", ["--live-restore"], []),
    ("2.16", "userland-proxy", ["--userland-proxy=false"], ["--userland-proxy"]),
    ("2.17", "seccomp-profile", [], ["--seccomp-profile", "unconfined"]),
    ("2.18", "experimental", [], ["--experimental"]),
]


def _ids(cases: list[Any]) -> list[str]:
    return [f"{c[0]}-{c[1]}" for c in cases]


def test_every_section2_id_but_2_1_is_covered_here() -> None:
    # 2.1 (rootless) is the runtime control's: it asks `docker info`.
    want = [f"2.{n}" for n in range(2, 19)]
    assert [c[0] for c in FILE_CASES] == want
    assert [c[0] for c in FLAG_CASES] == want


@pytest.mark.parametrize(("cis", "rule", "good", "bad"), FILE_CASES, ids=_ids(FILE_CASES))
@pytest.mark.parametrize("passing", [True, False], ids=["pass", "fail"])
def test_from_daemon_json(sandbox: Sandbox, cis: str, rule: str, good: dict[str, Any], bad: dict[str, Any],
                          passing: bool) -> None:
    sandbox.write("/etc/docker/seccomp.json", json.dumps(DENY_BY_DEFAULT))
    sandbox.write("/etc/docker/daemon.json", json.dumps(good if passing else bad))
    f = one(run(CTL, sandbox), rule)
    assert f.cis == cis
    assert f.status is (Status.PASS if passing else Status.FAIL), f.message
    assert f.details.get("source") in ("file", "default")


def _from_flags(args: list[str], config: dict[str, Any] | None = None) -> DaemonConfigObservation:
    argv = ["/usr/sbin/dockerd", *args]
    daemon = DaemonProcess(4242, argv, "pidfile", parse_flags(argv))
    return DaemonConfigObservation("/etc/docker/daemon.json", None, None, config, None, daemon.config_values(),
                                   daemon.pid)


@pytest.mark.parametrize(("cis", "rule", "good", "bad"), FLAG_CASES, ids=_ids(FLAG_CASES))
@pytest.mark.parametrize("passing", [True, False], ids=["pass", "fail"])
def test_from_flags(cis: str, rule: str, good: list[str], bad: list[str], passing: bool) -> None:
    obs = _from_flags(good if passing else bad)
    f = one(CTL.evaluate(obs, policy_from()), rule)
    assert f.cis == cis
    assert f.status is (Status.PASS if passing else Status.FAIL), f.message


def test_flag_beats_file_and_both_values_are_reported() -> None:
    obs = _from_flags(["--cgroup-parent", "/from-flag"], {"cgroup-parent": "/from-file"})
    f = one(CTL.evaluate(obs, policy_from()), "cgroup-parent")
    assert f.observed == "/from-flag"
    assert f.details == {"source": "flag", "flag": "/from-flag", "file": "/from-file"}


def test_debug_overrides_log_level() -> None:
    # dockerd -D logs at debug whatever --log-level says; an audit of log-level alone passes it.
    f = one(CTL.evaluate(_from_flags(["-D", "--log-level", "info"]), policy_from()), "log-level")
    assert f.status is Status.FAIL
    assert f.observed == "debug"


def test_debug_in_the_file_is_reverted_with_log_level(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", json.dumps({"debug": True, "log-level": "info"}))
    from tests.support.rules import observe

    obs = observe(CTL, sandbox)
    assert one(CTL.evaluate(obs, policy_from()), "log-level").status is Status.FAIL
    assert CTL.patch_for("log-level", obs, policy_from()) == {"log-level": "info", "debug": False}


def test_confirmed_cgroup_parent_passes(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", json.dumps({"cgroup-parent": "/docker-ci"}))
    pol = policy_from("spec:\n  controls:\n    daemonConfig:\n      allowedCgroupParents: [/docker-ci]\n")
    assert one(run(CTL, sandbox, pol), "cgroup-parent").status is Status.PASS


@pytest.mark.parametrize(("profile", "ok"), [
    (DENY_BY_DEFAULT, True),
    (ALLOW_ALL, False),          # a "custom profile" that allows everything it does not list
    ("not json", False),
    (None, False),               # named but missing
], ids=["deny-by-default", "allow-by-default", "garbage", "missing"])
def test_custom_seccomp_profile_is_read(sandbox: Sandbox, profile: Any, ok: bool) -> None:
    if profile is not None:
        sandbox.write("/etc/docker/seccomp.json", profile if isinstance(profile, str) else json.dumps(profile))
    sandbox.write("/etc/docker/daemon.json", json.dumps({"seccomp-profile": "/etc/docker/seccomp.json"}))
    f = one(run(CTL, sandbox), "seccomp-profile")
    assert f.status is (Status.PASS if ok else Status.FAIL), f.message


def test_ulimits_are_normalised_from_both_spellings() -> None:
    from nodeguard.controls.daemon_config import default_ulimits

    assert default_ulimits({"nofile": {"Name": "nofile", "Soft": 100, "Hard": 200}}) == {"nofile": "100:200"}
    assert default_ulimits(["nofile=100:200", "nproc=512"]) == {"nofile": "100:200", "nproc": "512:512"}
    assert default_ulimits(None) == {}
