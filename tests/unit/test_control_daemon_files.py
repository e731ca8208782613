"""daemon-files: owner and mode of /etc/docker, daemon.json, TLS files and units, compared as bits and names.

First CIS section 3 on a sandbox host root: every id, a passing and a failing file (owner or mode).
The failing modes are chosen where a decimal comparison goes wrong whenever one exists (0606
passes `stat -c %a <= 644`, 0707 passes `<= 755`), so a test of "mode as a number" would fail here.
The section's two docker.sock ids (3.15, 3.16) are the socket control's, but stay in this table so
that one test sees every id of the section; the socket's own tests are in test_control_socket.py.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from nodeguard.controls.daemon_files import (
    DaemonFilesControl,
    DaemonFilesObservation,
    FileObservation,
    FileSpec,
    excess_bits,
    find_unit_files,
)
from nodeguard.controls.socket import SocketControl
from nodeguard.host import FileStat, HostRoot
from nodeguard.structs import Finding, Status
from tests.support.rules import one, policy_from, run
from tests.support.sandbox import ALICE_UID, DOCKER_GID, Sandbox, require_root

FILES = DaemonFilesControl()
SOCKET = SocketControl()


def _bind(sb: Sandbox, host_path: str) -> None:
    path = sb.path(host_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
    finally:
        s.close()


@dataclass(frozen=True)
class Case:
    cis: str
    rule: str
    path: str  # the host path the finding names
    make: Callable[[Sandbox], None]
    good_mode: int
    bad_mode: int
    good_owner: tuple[int, int] = (0, 0)
    kind: str = "owner"  # which half of the pair the CIS id is about: "owner" or "mode"
    # Where the file really is in the sandbox when `path` goes through a symlink: /var/run is an
    # absolute link to /run, which outside the HostRoot would be this machine's own /run.
    fs_path: str | None = None


def _plain(path: str, mode: int = 0o644) -> Callable[[Sandbox], None]:
    def make(sb: Sandbox) -> None:
        sb.write(path, "x\n", mode)
    return make


def _tls(sb: Sandbox) -> None:
    for name in ("ca.pem", "server-cert.pem", "server-key.pem"):
        sb.write(f"/etc/docker/tls/{name}", "pem\n", 0o400)
    sb.write("/etc/docker/daemon.json", json.dumps({
        "tlsverify": True, "tlscacert": "/etc/docker/tls/ca.pem", "tlscert": "/etc/docker/tls/server-cert.pem",
        "tlskey": "/etc/docker/tls/server-key.pem"}))


def _certs_d(sb: Sandbox) -> None:
    sb.write("/etc/docker/certs.d/registry.example:5000/ca.crt", "pem\n", 0o444)


def _docker_sock(sb: Sandbox) -> None:
    _bind(sb, "/run/docker.sock")


def _containerd_sock(sb: Sandbox) -> None:
    _bind(sb, "/run/containerd/containerd.sock")


def _etc_docker(sb: Sandbox) -> None:
    pass  # make_sandbox made it


def _pair(owner_cis: str, mode_cis: str, role: str, path: str, make: Callable[[Sandbox], None], good: int,
          bad: int, owner: tuple[int, int] = (0, 0)) -> list[Case]:
    return [Case(owner_cis, f"{role}-owner", path, make, good, bad, owner, "owner"),
            Case(mode_cis, f"{role}-mode", path, make, good, bad, owner, "mode")]


CASES: list[Case] = [
    *_pair("3.1", "3.2", "docker-service", "/lib/systemd/system/docker.service",
           _plain("/lib/systemd/system/docker.service"), 0o644, 0o606),
    *_pair("3.3", "3.4", "docker-socket-unit", "/lib/systemd/system/docker.socket",
           _plain("/lib/systemd/system/docker.socket"), 0o644, 0o606),
    *_pair("3.5", "3.6", "etc-docker", "/etc/docker", _etc_docker, 0o755, 0o707),
    *_pair("3.7", "3.8", "registry-cert", "/etc/docker/certs.d/registry.example:5000/ca.crt", _certs_d,
           0o444, 0o446),
    *_pair("3.9", "3.10", "tls-ca", "/etc/docker/tls/ca.pem", _tls, 0o444, 0o446),
    *_pair("3.11", "3.12", "tls-cert", "/etc/docker/tls/server-cert.pem", _tls, 0o444, 0o406),
    *_pair("3.13", "3.14", "tls-key", "/etc/docker/tls/server-key.pem", _tls, 0o400, 0o440),
    *_pair("3.17", "3.18", "daemon-json", "/etc/docker/daemon.json", _plain("/etc/docker/daemon.json"),
           0o644, 0o606),
    Case("3.19", "etc-default-docker-owner", "/etc/default/docker", _plain("/etc/default/docker"), 0o644, 0o606),
    Case("3.20", "etc-sysconfig-docker-mode", "/etc/sysconfig/docker", _plain("/etc/sysconfig/docker"), 0o644,
         0o606, kind="mode"),
    Case("3.21", "etc-sysconfig-docker-owner", "/etc/sysconfig/docker", _plain("/etc/sysconfig/docker"), 0o644,
         0o606),
    Case("3.22", "etc-default-docker-mode", "/etc/default/docker", _plain("/etc/default/docker"), 0o644, 0o606,
         kind="mode"),
    *_pair("3.23", "3.24", "containerd-sock", "/run/containerd/containerd.sock", _containerd_sock, 0o660, 0o606),
]
SOCKET_CASES: list[Case] = [
    Case("3.15", "socket-owner", "/var/run/docker.sock", _docker_sock, 0o660, 0o660, (0, DOCKER_GID),
         fs_path="/run/docker.sock"),
    Case("3.16", "socket-mode", "/var/run/docker.sock", _docker_sock, 0o660, 0o606, (0, DOCKER_GID), "mode",
         fs_path="/run/docker.sock"),
]


def test_every_section3_id_has_a_case() -> None:
    assert sorted({c.cis for c in CASES + SOCKET_CASES}, key=lambda c: int(c.split(".")[1])) == [
        f"3.{n}" for n in range(1, 25)]


def _finding(found: list[Finding], case: Case) -> Finding:
    hits = [f for f in found if (f.rule == case.rule and (f.subject or f.path) in (case.path, None))
            or (f.rule == case.rule and f.path == case.path)]
    assert len(hits) == 1, (case, found)
    return hits[0]


@pytest.mark.root
@pytest.mark.parametrize("case", CASES + SOCKET_CASES, ids=[f"{c.cis}-{c.rule}" for c in CASES + SOCKET_CASES])
@pytest.mark.parametrize("passing", [True, False], ids=["pass", "fail"])
def test_each_cis_id(sandbox: Sandbox, case: Case, passing: bool) -> None:
    require_root()  # owners: only root can hand a file to root, or to someone else
    case.make(sandbox)
    real = sandbox.path(case.fs_path or case.path)
    assert str(real).startswith(str(sandbox.root)) and not real.parent.is_symlink()
    if case.kind == "owner":
        os.lchown(real, *(case.good_owner if passing else (ALICE_UID, case.good_owner[1])))
        os.chmod(real, case.good_mode)
    else:
        os.lchown(real, *case.good_owner)
        os.chmod(real, case.good_mode if passing else case.bad_mode)
    control = SOCKET if case in SOCKET_CASES else FILES
    f = _finding(run(control, sandbox), case)
    assert f.cis == case.cis
    assert f.status is (Status.PASS if passing else Status.FAIL), f.message
    if not passing and case.kind == "mode":
        # The bits are what fails, not the number: every bad mode here is 'less than' a decimal reading
        # would allow, or only differs in a bit a decimal reading cannot see.
        assert "bits" in f.message


def test_a_registry_key_must_be_0400_not_444(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/certs.d/reg:5000/client.cert", "pem\n", 0o444)
    sandbox.write("/etc/docker/certs.d/reg:5000/client.key", "key\n", 0o444)
    found = {f.subject: f.status for f in run(FILES, sandbox) if f.rule == "registry-cert-mode"}
    assert found == {"/etc/docker/certs.d/reg:5000/client.cert": Status.PASS,
                     "/etc/docker/certs.d/reg:5000/client.key": Status.FAIL}


def test_every_file_under_certs_d_is_checked(sandbox: Sandbox) -> None:
    for reg in ("a.example", "b.example:5000", "c.example/nested"):
        sandbox.write(f"/etc/docker/certs.d/{reg}/ca.crt", "pem\n", 0o444)
    sandbox.write("/etc/docker/certs.d/b.example:5000/extra.pem", "pem\n", 0o666)
    found = {f.subject: f.status for f in run(FILES, sandbox) if f.rule == "registry-cert-mode"}
    assert len(found) == 4
    assert found["/etc/docker/certs.d/b.example:5000/extra.pem"] is Status.FAIL


def test_units_are_found_the_way_systemd_finds_them(sandbox: Sandbox) -> None:
    # /lib is /usr/lib on a merged-/usr host; /etc wins over /lib; drop-ins come from every folder.
    sandbox.path("/usr/lib/systemd/system").mkdir(parents=True)
    sandbox.write("/usr/lib/systemd/system/docker.service", "[Service]\n")
    sandbox.write("/etc/systemd/system/docker.service", "[Service]\n")
    sandbox.write("/run/systemd/system/docker.service.d/10-flags.conf", "[Service]\n", 0o666)
    sandbox.write("/lib/systemd/system/docker.service.d/10-flags.conf", "[Service]\n")  # hidden by /run's
    sandbox.write("/lib/systemd/system/docker.service.d/20-more.conf", "[Service]\n")
    sandbox.write("/etc/systemd/system/docker.service.d/notes.txt", "not a drop-in\n")
    os.symlink("/dev/null", sandbox.path("/etc/systemd/system/docker.service.d/30-masked.conf"))
    host = HostRoot(sandbox.root)
    dirs = ["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"]
    main, dropins = find_unit_files(host, dirs, "docker.service")
    assert main == "/etc/systemd/system/docker.service"
    assert dropins == ["/run/systemd/system/docker.service.d/10-flags.conf",
                       "/lib/systemd/system/docker.service.d/20-more.conf"]
    found = {f.subject: f.status for f in run(FILES, sandbox) if f.rule == "docker-service-mode"}
    assert found == {"/etc/systemd/system/docker.service": Status.PASS,
                     "/run/systemd/system/docker.service.d/10-flags.conf": Status.FAIL,
                     "/lib/systemd/system/docker.service.d/20-more.conf": Status.PASS}


def test_a_masked_unit_is_not_checked(sandbox: Sandbox) -> None:
    sandbox.write("/lib/systemd/system/docker.socket", "[Socket]\n", 0o666)
    os.symlink("/dev/null", sandbox.path("/etc/systemd/system/docker.socket"))
    found = [f for f in run(FILES, sandbox) if f.rule == "docker-socket-unit-mode"]
    assert [f.status for f in found] == [Status.SKIP]


def test_enforce_clears_only_the_extra_bits(sandbox: Sandbox) -> None:
    from tests.support.rules import context

    sandbox.write("/etc/default/docker", "DOCKER_OPTS=\n", 0o666)
    ctx = context(sandbox)
    obs = FILES.observe(ctx)
    bad = [f for f in FILES.evaluate(obs, ctx.policy) if f.rule == "etc-default-docker-mode"]
    assert bad[0].status is Status.FAIL
    outcome = FILES.remediate(ctx, bad[0], obs)
    assert outcome.ok and outcome.changed
    assert oct(sandbox.path("/etc/default/docker").stat().st_mode & 0o7777) == oct(0o644)


@pytest.mark.root
def test_an_acl_on_containerd_socket_fails_3_24_and_is_stripped(sandbox: Sandbox) -> None:
    """`setfacl -m u:bob:rw` keeps containerd.sock at 0660 root:root, yet bob may drive containerd."""
    import subprocess

    from tests.support.rules import context
    from tests.support.sandbox import BOB_UID, require_tool

    require_root()
    require_tool("setfacl")
    _containerd_sock(sandbox)
    real = sandbox.path("/run/containerd/containerd.sock")
    os.chmod(real, 0o660)
    ctx = context(sandbox)
    assert {f.rule: f.status for f in run(FILES, sandbox) if f.rule.startswith("containerd-sock")} == {
        "containerd-sock-owner": Status.PASS, "containerd-sock-mode": Status.PASS, "containerd-sock-acl": Status.PASS}
    subprocess.run(["setfacl", "-m", f"u:{BOB_UID}:rw", str(real)], check=True)
    obs = FILES.observe(ctx)
    found = {f.rule: f for f in FILES.evaluate(obs, ctx.policy) if f.rule.startswith("containerd-sock")}
    assert found["containerd-sock-mode"].status is Status.PASS  # the mode still says 0660
    acl = found["containerd-sock-acl"]
    assert (acl.status, acl.cis, acl.observed) == (Status.FAIL, "3.24", ["user:bob:rw-"])
    assert FILES.remediate(ctx, acl, obs).ok
    assert {f.rule: f.status for f in run(FILES, sandbox)}["containerd-sock-acl"] is Status.PASS


def test_the_containerd_socket_dockerd_really_uses_is_checked(sandbox: Sandbox) -> None:
    # dockerd's own containerd listens under its exec-root; `--containerd` names another one.
    sandbox.write("/etc/docker/daemon.json", json.dumps({"exec-root": "/run/dx", "containerd": "/run/ctd/c.sock"}))
    _bind(sandbox, "/run/dx/containerd/containerd.sock")
    _bind(sandbox, "/run/ctd/c.sock")
    os.chmod(sandbox.path("/run/dx/containerd/containerd.sock"), 0o660)
    os.chmod(sandbox.path("/run/ctd/c.sock"), 0o666)
    found = {f.subject: f.status for f in run(FILES, sandbox) if f.rule == "containerd-sock-mode"}
    assert found == {"/run/dx/containerd/containerd.sock": Status.PASS, "/run/ctd/c.sock": Status.FAIL}


# -- the control's rules, evaluate pure and on disk ------------------------------------------------

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


@pytest.mark.root
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


@pytest.mark.root
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
