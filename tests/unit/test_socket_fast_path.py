"""The socket control's shortcuts on its lane's path (one walk for stat + ACL, account files looked
up by lstat): a change of what they stand for is seen on the very next look."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.controls.socket import SocketControl
from nodeguard.structs import Status
from tests.support.rules import one, run
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root

# Every test here chowns a real socket (the fixture needs root).
pytestmark = pytest.mark.root


@pytest.fixture
def sock(sandbox: Sandbox) -> Iterator[Path]:
    require_root()
    path = sandbox.path("/run/docker.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        os.chown(path, 0, DOCKER_GID)
        path.chmod(0o660)
        yield path
    finally:
        s.close()


def test_a_renumbered_docker_group_is_seen_on_the_next_look(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()  # one instance across looks, as on the agent's lane
    assert one(run(ctl, sandbox), "socket-owner").status is Status.PASS
    group = sandbox.path("/etc/group")
    group.write_text(group.read_text().replace(f"docker:x:{DOCKER_GID}:", "docker:x:4242:"))
    f = one(run(ctl, sandbox), "socket-owner")
    assert f.status is Status.FAIL and f.observed == f"root:{DOCKER_GID}"


def test_account_files_behind_a_symlink_are_read_as_before(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()
    group = sandbox.path("/etc/group")
    real = sandbox.path("/etc/group.real")
    real.write_text(group.read_text())
    group.unlink()
    group.symlink_to("group.real")
    assert one(run(ctl, sandbox), "socket-owner").status is Status.PASS
    real.write_text(real.read_text().replace(f"docker:x:{DOCKER_GID}:", "docker:x:4242:"))
    assert one(run(ctl, sandbox), "socket-owner").status is Status.FAIL


def test_a_socket_behind_a_final_symlink_is_judged_by_its_target(sandbox: Sandbox, sock: Path) -> None:
    ctl = SocketControl()
    sandbox.path("/run/real.sock").unlink(missing_ok=True)
    os.rename(sock, sandbox.path("/run/real.sock"))
    sock.symlink_to("real.sock")
    try:
        found = run(ctl, sandbox)
        assert one(found, "socket-mode").status is Status.PASS
        assert one(found, "socket-owner").observed == "root:docker"
        sandbox.path("/run/real.sock").chmod(0o666)
        assert one(run(ctl, sandbox), "socket-mode").status is Status.FAIL
    finally:
        sock.unlink()
        os.rename(sandbox.path("/run/real.sock"), sock)
