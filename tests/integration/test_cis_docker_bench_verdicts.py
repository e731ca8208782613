"""Side by side with docker-bench-security where its verdicts are known to be wrong.

docker-bench is not run here (it audits this machine's own /etc and socket); each test replays
the exact comparison its script makes, on the same real host state, and shows that nodeguard
fails what must fail:

- 3.16 `[ "$(stat -c %a /var/run/docker.sock)" -le 660 ]` reads the octal mode as a *decimal*
  number: 0606 (anyone may connect: root on the host) is 606 <= 660, a PASS.
- 3.16 never reads the POSIX ACL: `setfacl -m u:bob:rw docker.sock` leaves the mode at 0660, so
  `stat -c %a` says 660, a PASS, while bob has the daemon.
- 1.1.2 matches the trusted-user list by substring (`printf "%s" "$dockertrustusers" | grep -q
  "$u"`): with `-t bobby`, member `bob` is found inside "bobby" and trusted, a PASS.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.controls.socket import SocketControl
from nodeguard.structs import Status
from tests.support.rules import one, policy_from, run
from tests.support.sandbox import BOB_UID, DOCKER_GID, Sandbox, require_root, require_tool, usermod_add

pytestmark = [pytest.mark.root]


@pytest.fixture
def docker_sock(sandbox: Sandbox) -> Iterator[str]:
    """A real listening unix socket where dockerd's would be, root:docker 0660."""
    require_root()
    path = sandbox.path("/run/docker.sock")  # /var/run -> /run inside the host root
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        s.listen(1)
        os.chown(path, 0, DOCKER_GID)
        os.chmod(path, 0o660)
        yield str(path)
    finally:
        s.close()


def docker_bench_mode_ok(path: str, limit: str) -> bool:
    """docker-bench's test: `[ "$(stat -c %a FILE)" -le LIMIT ]`, run by the real shell and stat."""
    proc = subprocess.run(["sh", "-c", f'[ "$(stat -c %a "$1")" -le {limit} ]', "sh", path], check=False)
    return proc.returncode == 0


def docker_bench_trusts(trusted: str, user: str) -> bool:
    """docker-bench 1.1.2: `printf "%s" "$dockertrustusers" | grep -q "$u"`."""
    proc = subprocess.run(["sh", "-c", 'printf "%s" "$1" | grep -q "$2"', "sh", trusted, user], check=False)
    return proc.returncode == 0


def test_world_accessible_0606_socket(sandbox: Sandbox, docker_sock: str) -> None:
    """0606: docker-bench passes it (606 <= 660 as decimals); nodeguard fails the o+rw bits."""
    os.chmod(docker_sock, 0o606)
    assert docker_bench_mode_ok(docker_sock, "660")  # the wrong verdict, replayed
    f = one(run(SocketControl(), sandbox), "socket-mode")
    assert f.status is Status.FAIL
    assert f.observed == "0606"
    assert "bits 0006" in f.message


def test_acl_on_a_0660_socket(sandbox: Sandbox, docker_sock: str) -> None:
    """An ACL grants bob rw on a 0660 socket: docker-bench only sees 660; nodeguard reads the ACL."""
    require_tool("setfacl")
    subprocess.run(["setfacl", "-m", f"u:{BOB_UID}:rw", docker_sock], check=True)
    # `stat -c %a` shows the ACL mask as the group bits: still 660.
    assert docker_bench_mode_ok(docker_sock, "660")
    found = run(SocketControl(), sandbox)
    assert one(found, "socket-mode").status is Status.PASS
    acl = one(found, "socket-acl")
    assert acl.status is Status.FAIL
    assert acl.cis == "3.16"
    assert acl.observed == ["user:bob:rw-"]


def test_trusted_bobby_does_not_admit_bob(sandbox: Sandbox) -> None:
    """Trusted list `bobby`, member `bob`: docker-bench trusts bob by substring; nodeguard fails him."""
    require_root()
    usermod_add(sandbox, "bob")  # the real shadow-utils, through --prefix
    assert docker_bench_trusts("bobby", "bob")  # the wrong verdict, replayed
    pol = policy_from("spec:\n  controls:\n    dockerGroup:\n      allowedMembers: [bobby]\n")
    f = one(run(DockerGroupControl(), sandbox, pol), "member-allowed", "bob")
    assert f.status is Status.FAIL
    assert f.cis == "1.1.2"
    # ...and bobby himself would pass.
    usermod_add(sandbox, "bobby")
    assert one(run(DockerGroupControl(), sandbox, pol), "member-allowed", "bobby").status is Status.PASS


@pytest.mark.parametrize(("allowed", "ok"), [(["bob"], True), (["bobby", "bo"], False)], ids=["pass", "fail"])
def test_1_1_2_trusted_users(sandbox: Sandbox, allowed: list[str], ok: bool) -> None:
    require_root()
    usermod_add(sandbox, "bob")
    pol = policy_from("spec:\n  controls:\n    dockerGroup:\n      allowedMembers: [" + ", ".join(allowed) + "]\n")
    f = one(run(DockerGroupControl(), sandbox, pol), "member-allowed", "bob")
    assert (f.cis, f.status) == ("1.1.2", Status.PASS if ok else Status.FAIL)
