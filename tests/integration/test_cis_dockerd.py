"""CIS section 2 against a real dockerd whose *command line* carries the setting.

A setting given as a flag never shows in daemon.json; nodeguard reads /proc/PID/cmdline of the
daemon named by the pidfile and judges the effective value. Two daemons: one started with the
settings CIS wants, one with the settings it warns about.

Not started for real here: `--storage-opt dm.basesize=...` (2.11; overlay2 refuses the option and
dockerd exits) and `--authorization-plugin` (2.12; without the plugin installed every API call
fails). Both are checked from a real command line parsed by `parse_flags` in
tests/unit/test_control_daemon_config.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.dockerd import running_dockerd
from tests.support.sandbox import Sandbox

pytestmark = [pytest.mark.dockerd, pytest.mark.root]

DENY_BY_DEFAULT = {"defaultAction": "SCMP_ACT_ERRNO", "archMap": [],
                   "syscalls": [{"names": ["read", "write", "exit", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}

ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}


def check(sb: Sandbox, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "nodeguard", "check", "--host-root", str(sb.root),
                           "--format", "json", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def rule(report: dict[str, Any], name: str, control: str = "daemon-config") -> dict[str, Any]:
    hits: list[dict[str, Any]] = [f for f in report["findings"] if f["control"] == control and f["rule"] == name]
    assert len(hits) == 1, hits
    return hits[0]


def test_flags_cis_wants_pass(sandbox: Sandbox) -> None:
    profile = sandbox.write("/etc/docker/seccomp-strict.json", json.dumps(DENY_BY_DEFAULT))
    args = ["--default-ulimit", "nofile=1024:2048", "--default-ulimit", "nproc=512:1024",
            "--log-level", "info", "--seccomp-profile", str(profile), "--log-driver", "syslog"]
    with running_dockerd(sandbox, {}, extra_args=args) as d:
        assert d.info()["LoggingDriver"] == "syslog"
        report = check(sandbox, "--only", "daemon-config")
    ulimits = rule(report, "default-ulimits")
    assert ulimits["status"] == "pass", ulimits
    assert ulimits["observed"] == {"nofile": "1024:2048", "nproc": "512:1024"}
    assert ulimits["details"]["source"] == "flag"
    seccomp = rule(report, "seccomp-profile")
    assert seccomp["status"] == "pass", seccomp
    assert seccomp["details"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert rule(report, "log-level")["status"] == "pass"
    assert rule(report, "cgroup-parent")["status"] == "pass"
    assert rule(report, "remote-logging")["status"] == "pass"
    assert rule(report, "base-device-size")["status"] == "pass"
    assert report["cis"]["2"]["ids"]["2.8"] == "pass"


def test_flags_cis_warns_about_fail(sandbox: Sandbox) -> None:
    # dockerd 20.10 reads --seccomp-profile as a file ("unconfined" is refused at start): a
    # "custom" profile that allows every system call is how a daemon really runs unfiltered.
    allow_all = sandbox.write("/etc/docker/seccomp-allow.json", json.dumps(ALLOW_ALL))
    args = ["--cgroup-parent", "/nodeguard-test", "--log-level", "debug", "--seccomp-profile", str(allow_all),
            "--experimental"]
    # The file says the opposite of two flags: dockerd refuses a directive in both places, so the
    # file holds only keys the flags do not name, and the flags are what the daemon runs with.
    with running_dockerd(sandbox, {"live-restore": True}, extra_args=args) as d:
        assert d.info()["CgroupDriver"]  # it really runs with these flags
        report = check(sandbox, "--only", "daemon-config")
    parent = rule(report, "cgroup-parent")
    assert parent["status"] == "fail"
    assert parent["observed"] == "/nodeguard-test"
    assert parent["details"]["source"] == "flag"
    level = rule(report, "log-level")
    assert (level["status"], level["observed"]) == ("fail", "debug")
    seccomp = rule(report, "seccomp-profile")
    assert (seccomp["status"], seccomp["details"]["defaultAction"]) == ("fail", "SCMP_ACT_ALLOW")
    assert rule(report, "experimental")["status"] == "fail"
    assert rule(report, "default-ulimits")["status"] == "fail"
    assert rule(report, "remote-logging")["status"] == "fail"  # json-file by default
    assert rule(report, "authorization-plugin")["status"] == "fail"
    assert rule(report, "live-restore")["status"] == "pass"
    two = report["cis"]["2"]
    assert two["ids"]["2.10"] == "fail" and two["ids"]["2.3"] == "fail"
    assert two["fail"] >= 7


def test_cis_summary_and_section1_on_a_real_daemon(sandbox: Sandbox) -> None:
    """The data root and the binaries of a real daemon, audited through the host root."""
    sandbox.write("/etc/audit/rules.d/docker.rules", "-w /var/lib/docker -p wa -k docker\n")
    with running_dockerd(sandbox, {}):
        report = check(sandbox)
    assert set(report["cis"]) >= {"1", "2", "3"}
    audit = [f for f in report["findings"] if f["control"] == "host-audit" and f["rule"] == "audit-data-root"]
    assert [(f["subject"], f["status"]) for f in audit] == [("/var/lib/docker", "pass")]
    # The containerd that dockerd started itself, under its exec-root, is found and checked.
    sock = [f for f in report["findings"] if f["rule"] == "containerd-sock-mode"]
    assert [(f["subject"], f["status"]) for f in sock] == [("/run/docker-exec/containerd/containerd.sock", "pass")]
    # The daemon's data root is a folder of the machine's /tmp here, not a partition.
    layout = rule(report, "data-root-partition", "host-layout")
    assert layout["status"] == "fail", layout
    for section in ("1", "2", "3"):
        counts = report["cis"][section]
        assert counts["pass"] + counts["fail"] + counts["skip"] + counts["not_checked"] == len(counts["ids"])
