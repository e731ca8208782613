"""host-audit (CIS 1.1.3-1.1.18): auditd rules parsed, not grepped, against a sandbox host root.

Each CIS id gets a passing case (a real `-w PATH -p wa` rule) and a failing one built from the
near misses that a `grep PATH audit.rules` takes for a rule: the rule commented out, a longer
path that contains this one, a read-only watch.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nodeguard.controls.audit_rules import TARGETS, HostAuditControl, HostAuditObservation
from nodeguard.structs import Finding, Status
from tests.support.rules import observe, policy_from, run
from tests.support.sandbox import Sandbox

CTL = HostAuditControl()
RULES_D = "/etc/audit/rules.d/docker.rules"


@contextmanager
def unix_socket(sb: Sandbox, host_path: str) -> Iterator[None]:
    path = sb.path(host_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        yield
    finally:
        s.close()


def _file(path: str, mode: int = 0o755) -> Callable[[Sandbox], str]:
    def make(sb: Sandbox) -> str:
        sb.write(path, "#!/bin/sh\n", mode)
        return path
    return make


def _dir(path: str) -> Callable[[Sandbox], str]:
    def make(sb: Sandbox) -> str:
        sb.path(path).mkdir(parents=True, exist_ok=True)
        return path
    return make


def _socket_file(path: str) -> Callable[[Sandbox], str]:
    def make(sb: Sandbox) -> str:
        # A bound socket node stays on disk after close: that is all auditd watches.
        with unix_socket(sb, path):
            pass
        return path
    return make


# rule id -> how to make its target in the sandbox (binaries where Debian or Docker CE put them,
# never all in /usr/bin).
MAKERS: dict[str, Callable[[Sandbox], str]] = {
    "audit-dockerd": _file("/usr/sbin/dockerd"),
    "audit-run-containerd": _dir("/run/containerd"),
    "audit-data-root": _dir("/var/lib/docker"),
    "audit-etc-docker": _dir("/etc/docker"),
    "audit-docker-service": _file("/lib/systemd/system/docker.service", 0o644),
    "audit-containerd-sock": _socket_file("/run/containerd/containerd.sock"),
    "audit-docker-socket-unit": _file("/usr/lib/systemd/system/docker.socket", 0o644),
    "audit-etc-default-docker": _file("/etc/default/docker", 0o644),
    "audit-daemon-json": _file("/etc/docker/daemon.json", 0o644),
    "audit-containerd-config": _file("/etc/containerd/config.toml", 0o644),
    "audit-etc-sysconfig-docker": _file("/etc/sysconfig/docker", 0o644),
    "audit-containerd": _file("/usr/local/bin/containerd"),
    "audit-containerd-shim": _file("/usr/bin/containerd-shim"),
    "audit-containerd-shim-runc-v1": _file("/usr/libexec/docker/containerd-shim-runc-v1"),
    "audit-containerd-shim-runc-v2": _file("/usr/bin/containerd-shim-runc-v2"),
    "audit-runc": _file("/usr/sbin/runc"),
}
CIS_OF = {rule: cis for rule, cis, _ in TARGETS}


def findings_of(found: list[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == rule]


def test_every_cis_target_has_a_case() -> None:
    assert set(MAKERS) == {r.id for r in CTL.rules}
    assert sorted(CIS_OF.values(), key=lambda c: [int(x) for x in c.split(".")]) == [
        f"1.1.{n}" for n in range(3, 19)]


IN_CIS_ORDER = [rule for rule, _, _ in TARGETS]


@pytest.mark.parametrize("rule", IN_CIS_ORDER)
@pytest.mark.parametrize("watched", [True, False], ids=["pass", "fail"])
def test_each_cis_id(sandbox: Sandbox, rule: str, watched: bool) -> None:
    path = MAKERS[rule](sandbox)
    if watched:
        rules = f"-D\n-w {path} -p wa -k docker\n"
    else:
        rules = (f"# -w {path} -p wa -k docker\n"      # commented out
                 f"-w {path}.dpkg-old -p wa -k docker\n"  # contains the path as a substring
                 f"-w {path} -p r -k docker\n")        # sees reads, not changes
    sandbox.write(RULES_D, rules, 0o640)
    found = findings_of(run(CTL, sandbox), rule)
    assert len(found) == 1, found
    f = found[0]
    assert f.cis == CIS_OF[rule]
    assert f.status is (Status.PASS if watched else Status.FAIL), f.message
    assert f.subject == path


def test_absent_targets_are_skipped(sandbox: Sandbox) -> None:
    sandbox.write(RULES_D, "-w /usr/bin/dockerd -k docker\n")
    found = run(CTL, sandbox)
    # make_sandbox creates /etc/docker only: every other target is not on this host.
    assert {f.rule for f in found if f.status is not Status.SKIP} == {"audit-etc-docker"}


def test_no_audit_rules_at_all_fails(sandbox: Sandbox) -> None:
    found = findings_of(run(CTL, sandbox), "audit-etc-docker")
    assert found[0].status is Status.FAIL
    assert "auditd not configured" in found[0].message


def test_binaries_are_found_where_they_are_and_merged_usr_counts_once(sandbox: Sandbox) -> None:
    _file("/usr/bin/dockerd")(sandbox)
    os.symlink("usr/bin", sandbox.path("/bin"))  # merged /usr: /bin/dockerd is /usr/bin/dockerd
    # The kernel resolves the folders of a watch: a rule written for /bin/dockerd covers it.
    sandbox.write(RULES_D, "-w /bin/dockerd -p wxa -k docker\n")
    found = findings_of(run(CTL, sandbox), "audit-dockerd")
    assert [(f.subject, f.status) for f in found] == [("/usr/bin/dockerd", Status.PASS)]


def test_every_copy_of_a_binary_must_be_watched(sandbox: Sandbox) -> None:
    _file("/usr/bin/runc")(sandbox)
    _file("/usr/local/bin/runc")(sandbox)
    sandbox.write(RULES_D, "-w /usr/bin/runc -k docker\n")
    found = {f.subject: f.status for f in findings_of(run(CTL, sandbox), "audit-runc")}
    assert found == {"/usr/bin/runc": Status.PASS, "/usr/local/bin/runc": Status.FAIL}


def test_folder_watches_cover_what_is_under_them(sandbox: Sandbox) -> None:
    _file("/etc/docker/daemon.json", 0o644)(sandbox)
    sandbox.write(RULES_D, "-a always,exit -F dir=/etc/docker -F perm=wa -k docker\n")
    found = run(CTL, sandbox)
    assert findings_of(found, "audit-daemon-json")[0].status is Status.PASS
    assert findings_of(found, "audit-etc-docker")[0].status is Status.PASS
    # path= watches one inode, not the tree below it.
    sandbox.write(RULES_D, "-a exit,always -F path=/etc/docker -F perm=wa -k docker\n")
    found = run(CTL, sandbox)
    assert findings_of(found, "audit-daemon-json")[0].status is Status.FAIL
    assert findings_of(found, "audit-etc-docker")[0].status is Status.PASS


@pytest.mark.parametrize(("rules", "ok"), [
    ("-w /etc/docker -k docker\n", True),                                   # no -p: rwxa
    ("-w /etc/docker -p wa -k docker\n-W /etc/docker -k docker\n", False),  # removed again
    ("-w /etc/docker -p wa -k docker\n-D\n", False),                        # wiped by -D
    ("-a never,exit -F dir=/etc/docker -k docker\n", False),                # an exclusion
    ("-a always,exit -F arch=b64 -S openat -F dir=/etc/docker -F perm=w -k docker\n", False),  # no `a`
    ('-w "/etc/docker" -p "rwa"\n', True),                                  # quoted
    ("-a always,exit -F dir=/etc/docker -F perm=wa -F auid>=1000 -F auid!=-1 -k docker\n", False),  # not root's
    ("-a always,exit -F arch=b64 -S all -F dir=/etc/docker -F perm=rwa -F key=docker\n", True),
])
def test_auditctl_semantics(sandbox: Sandbox, rules: str, ok: bool) -> None:
    sandbox.write(RULES_D, rules)
    assert findings_of(run(CTL, sandbox), "audit-etc-docker")[0].status is (Status.PASS if ok else Status.FAIL)


def test_rules_d_is_one_stream_in_name_order(sandbox: Sandbox) -> None:
    # augenrules concatenates rules.d by name: 10-base's -D wipes nothing after it, and a -W in a
    # later file removes a watch of an earlier one.
    sandbox.write("/etc/audit/rules.d/10-base-config.rules", "-D\n-b 8192\n")
    sandbox.write("/etc/audit/rules.d/20-docker.rules", "-w /etc/docker -p wa -k docker\n")
    assert findings_of(run(CTL, sandbox), "audit-etc-docker")[0].status is Status.PASS
    sandbox.write("/etc/audit/rules.d/99-local.rules", "-W /etc/docker\n")
    assert findings_of(run(CTL, sandbox), "audit-etc-docker")[0].status is Status.FAIL
    # audit.rules is its own stream: a watch there counts too.
    sandbox.write("/etc/audit/audit.rules", "-w /etc/docker -p rwxa\n")
    assert findings_of(run(CTL, sandbox), "audit-etc-docker")[0].status is Status.PASS


def test_data_root_follows_the_daemon_configuration(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", json.dumps({"data-root": "/srv/docker"}))
    _dir("/srv/docker")(sandbox)
    _dir("/var/lib/docker")(sandbox)
    sandbox.write(RULES_D, "-w /var/lib/docker -k docker\n")
    found = findings_of(run(CTL, sandbox), "audit-data-root")
    assert [(f.subject, f.status) for f in found] == [("/srv/docker", Status.FAIL)]


def test_policy_can_turn_the_control_off(sandbox: Sandbox) -> None:
    pol = policy_from("spec:\n  controls:\n    hostAudit:\n      mode: off\n")
    assert CTL.rule_mode(pol, "audit-dockerd").value == "off"


def _observation_with(written: str, loaded: str | None, sb: Sandbox) -> HostAuditObservation:
    from nodeguard.controls.audit_rules import AuditTarget, parse_audit_rules
    from nodeguard.host import HostRoot

    host = HostRoot(sb.root)
    obs = HostAuditObservation(sources=[RULES_D])
    obs.watches, _ = parse_audit_rules([(RULES_D, written)], host)
    if loaded is not None:
        obs.loaded, _ = parse_audit_rules([("auditctl -l", loaded)], host)
    for rule, _, _ in TARGETS:
        obs.targets[rule] = []
        obs.looked_for[rule] = ["-"]
    obs.targets["audit-etc-docker"] = [AuditTarget("/etc/docker", "/etc/docker", "dir")]
    return obs


@pytest.mark.parametrize(("written", "loaded", "ok"), [
    ("-w /etc/docker -p wa\n", "-w /etc/docker -p rwxa -k docker\n", True),
    ("-w /etc/docker -p wa\n", "No rules\n", False),          # written, never loaded (augenrules --load)
    ("-w /etc/docker -p wa\n", None, True),                   # loaded rules unknown: the files decide
    ("", "-w /etc/docker -p wa\n", False),                    # loaded now, gone at the next boot
])
def test_loaded_rules_must_match_the_written_ones(sandbox: Sandbox, written: str, loaded: str | None,
                                                  ok: bool) -> None:
    obs = _observation_with(written, loaded, sandbox)
    f = findings_of(CTL.evaluate(obs, policy_from()), "audit-etc-docker")[0]
    assert f.status is (Status.PASS if ok else Status.FAIL), f.message


def test_auditctl_is_asked_only_on_the_real_host_root(sandbox: Sandbox, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in auditctl on PATH: it must not be run for a sandbox (it would describe this
    # machine's kernel, not the sandboxed host's).
    marker = tmp_path / "ran"
    fake = tmp_path / "auditctl"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho '-w /etc/docker -p wa'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ.get('PATH', '')}")
    obs = observe(CTL, sandbox)
    assert obs.loaded is None and not marker.exists()
