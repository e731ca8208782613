"""daemon-files: owner and mode of /etc/docker, daemon.json, TLS files and units, compared as bits and names."""

from __future__ import annotations

import json
import os

import pytest

from nodeguard.controls.daemon_files import (
    DaemonFilesControl,
    DaemonFilesObservation,
    FileObservation,
    FileSpec,
    excess_bits,
)
from nodeguard.host import FileStat
from nodeguard.structs import Finding, Status
from tests.support.rules import one, policy_from, run
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root

CTL = DaemonFilesControl()
DAEMON_JSON = "/etc/docker/daemon.json"


def status_of(found: list[Finding], rule: str, path: str) -> Status:
    return one(found, rule, path).status


# -- pure evaluate ---------------------------------------------------------------------------------


def _observation(mode: int, uid: int = 0, gid: int = 0, want: tuple[int | None, int | None] = (0, 0)) -> (
        DaemonFilesObservation):
    spec = FileSpec("daemon-json", DAEMON_JSON, "root", "root", 0o644)
    st = FileStat(DAEMON_JSON, uid, gid, mode, "file", 2, 1, 1)
    return DaemonFilesObservation([FileObservation(spec, st, want)], {0: "root", 1000: "alice"}, {0: "root"})


@pytest.mark.parametrize(("mode", "ok"), [
    (0o644, True), (0o640, True), (0o600, True), (0o400, True), (0o000, True),
    (0o606, False),  # 606 < 644 as a number, yet world-writable
    (0o664, False), (0o645, False), (0o744, False), (0o4644, False), (0o1644, False),
])
def test_modes_are_compared_as_bits(mode: int, ok: bool) -> None:
    found = CTL.evaluate(_observation(mode), policy_from())
    f = one(found, "daemon-json-mode", DAEMON_JSON)
    assert f.status is (Status.PASS if ok else Status.FAIL), f"{mode:04o}"
    assert f.observed == f"{mode:04o}"
    assert f.expected == "at most 0644"
    assert f.cis == "3.18"


def test_excess_bits() -> None:
    assert excess_bits(0o606, 0o644) == 0o002
    assert excess_bits(0o4755, 0o755) == 0o4000
    assert excess_bits(0o400, 0o444) == 0


def test_owner_pure() -> None:
    f = one(CTL.evaluate(_observation(0o644, uid=1000), policy_from()), "daemon-json-owner", DAEMON_JSON)
    assert (f.status, f.observed, f.expected, f.cis) == (Status.FAIL, "alice:root", "root:root", "3.17")
    unknown = one(CTL.evaluate(_observation(0o644, want=(None, 0)), policy_from()), "daemon-json-owner", DAEMON_JSON)
    assert unknown.status is Status.FAIL
    assert "does not exist" in unknown.message


# -- observe on a sandbox --------------------------------------------------------------------------


def test_a_missing_file_is_skipped_not_failed(sandbox: Sandbox) -> None:
    found = run(CTL, sandbox)
    assert status_of(found, "daemon-json-mode", DAEMON_JSON) is Status.SKIP
    assert status_of(found, "etc-docker-mode", "/etc/docker") is Status.PASS
    # Roles the host does not have (no TLS configured, no units) are "not configured".
    tls = [f for f in found if f.rule.startswith("tls-")]
    assert tls and {f.status for f in tls} == {Status.SKIP}


@pytest.mark.parametrize(("mode", "status"), [(0o606, Status.FAIL), (0o644, Status.PASS), (0o600, Status.PASS)])
def test_daemon_json_mode_on_disk(sandbox: Sandbox, mode: int, status: Status) -> None:
    sandbox.write(DAEMON_JSON, "{}", mode)
    assert status_of(run(CTL, sandbox), "daemon-json-mode", DAEMON_JSON) is status


def test_etc_docker_mode(sandbox: Sandbox) -> None:
    sandbox.path("/etc/docker").chmod(0o775)
    f = one(run(CTL, sandbox), "etc-docker-mode", "/etc/docker")
    assert (f.status, f.observed, f.expected) == (Status.FAIL, "0775", "at most 0755")


def test_owner_names_come_from_the_host_roots_passwd(sandbox: Sandbox) -> None:
    require_root()
    # On this sandbox host `daemon` is uid 4242 and `docker` gid 990, whatever this machine says.
    sandbox.write("/etc/passwd", sandbox.read("/etc/passwd").replace("daemon:x:1:1:", "daemon:x:4242:4242:"))
    pol = policy_from("""
        spec:
          controls:
            daemonFiles:
              extra:
                - {path: /etc/docker/agent.conf, owner: daemon, group: docker, fileMode: "0640"}
    """)
    conf = sandbox.write("/etc/docker/agent.conf", "x", 0o640)
    os.chown(conf, 4242, DOCKER_GID)
    found = run(CTL, sandbox, pol)
    f = one(found, "extra-owner", "/etc/docker/agent.conf")
    assert (f.status, f.observed, f.expected) == (Status.PASS, "daemon:docker", "daemon:docker")
    assert status_of(found, "extra-mode", "/etc/docker/agent.conf") is Status.PASS
    os.chown(conf, 1, DOCKER_GID)  # the machine's own `daemon` uid is not the host's
    f = one(run(CTL, sandbox, pol), "extra-owner", "/etc/docker/agent.conf")
    assert (f.status, f.observed) == (Status.FAIL, "1:docker")


def test_an_owner_the_host_does_not_know_fails(sandbox: Sandbox) -> None:
    pol = policy_from("""
        spec: {controls: {daemonFiles: {extra: [{path: /etc/docker/x, owner: nosuchuser, fileMode: "0600"}]}}}
    """)
    sandbox.write("/etc/docker/x", "x", 0o600)
    f = one(run(CTL, sandbox, pol), "extra-owner", "/etc/docker/x")
    assert f.status is Status.FAIL
    assert "does not exist on this host" in f.message


def test_a_wrong_owner_on_disk_fails(sandbox: Sandbox) -> None:
    require_root()
    p = sandbox.write(DAEMON_JSON, "{}", 0o644)
    os.chown(p, 1000, 0)
    f = one(run(CTL, sandbox), "daemon-json-owner", DAEMON_JSON)
    assert (f.status, f.observed) == (Status.FAIL, "alice:root")


def test_tls_files_the_configuration_names(sandbox: Sandbox) -> None:
    # dockerd names them as it sees them: here, paths under the sandbox root.
    cfg = {"tlsverify": True, "tlscacert": str(sandbox.path("/etc/docker/ca.pem")),
           "tlscert": str(sandbox.path("/etc/docker/cert.pem")), "tlskey": "/etc/docker/key.pem"}
    sandbox.write(DAEMON_JSON, json.dumps(cfg), 0o644)
    sandbox.write("/etc/docker/ca.pem", "ca", 0o444)
    sandbox.write("/etc/docker/cert.pem", "cert", 0o644)
    sandbox.write("/etc/docker/key.pem", "key", 0o440)
    found = run(CTL, sandbox)
    assert status_of(found, "tls-ca-mode", "/etc/docker/ca.pem") is Status.PASS
    cert = one(found, "tls-cert-mode", "/etc/docker/cert.pem")
    assert (cert.status, cert.expected, cert.cis) == (Status.FAIL, "at most 0444", "3.12")
    key = one(found, "tls-key-mode", "/etc/docker/key.pem")
    assert (key.status, key.expected, key.cis) == (Status.FAIL, "at most 0400", "3.14")
    sandbox.path("/etc/docker/key.pem").chmod(0o400)
    assert status_of(run(CTL, sandbox), "tls-key-mode", "/etc/docker/key.pem") is Status.PASS


def test_the_first_unit_on_systemds_path_is_the_one_checked(sandbox: Sandbox) -> None:
    sandbox.write("/lib/systemd/system/docker.service", "[Service]\n", 0o644)
    found = run(CTL, sandbox)
    assert status_of(found, "docker-service-mode", "/lib/systemd/system/docker.service") is Status.PASS
    # An admin's copy in /etc/systemd/system hides the packaged one.
    sandbox.write("/etc/systemd/system/docker.service", "[Service]\n", 0o666)
    found = run(CTL, sandbox)
    f = one(found, "docker-service-mode", "/etc/systemd/system/docker.service")
    assert (f.status, f.cis) == (Status.FAIL, "3.2")
    assert not [x for x in found if x.subject == "/lib/systemd/system/docker.service"]


def test_a_symlinked_daemon_json_is_checked_inside_the_root(sandbox: Sandbox) -> None:
    sandbox.write("/etc/real-daemon.json", "{}", 0o666)
    os.symlink("/etc/real-daemon.json", sandbox.path(DAEMON_JSON))
    f = one(run(CTL, sandbox), "daemon-json-mode", DAEMON_JSON)
    assert (f.status, f.observed) == (Status.FAIL, "0666")
