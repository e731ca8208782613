"""daemon-config, CIS section 2: every id from daemon.json (sandbox) *and* from dockerd's flags.

Flags are given the way `DaemonProcess.config_values()` hands them over (daemon.json spelling),
parsed from a real command line by `parse_flags`. The real-dockerd versions of these cases are in
tests/integration/test_cis_dockerd.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodeguard.controls.daemon_config import DaemonConfigControl, DaemonConfigObservation
from nodeguard.dockerd import DaemonProcess, parse_flags
from nodeguard.structs import Status
from tests.support.rules import one, policy_from, run
from tests.support.sandbox import Sandbox

CTL = DaemonConfigControl()
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
