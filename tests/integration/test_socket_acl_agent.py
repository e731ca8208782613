"""Issue 19's scenario with the real agent: `allowedAcl` survives enforcement, only 4242's entry goes.

`nodeguard run` in enforce mode on a sandbox host with a real listening docker.sock; a real
`setfacl -m u:4242:rw` is the drift. The oracle for the result is `setfacl -x u:4242` on a twin
socket carrying the same ACL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.agent import is_event, running_agent
from tests.support.sandbox import BOB_UID, DOCKER_GID, Sandbox, require_root, require_tool


def _socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    os.chown(path, 0, DOCKER_GID)
    path.chmod(0o660)
    return s


def _getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-n", "--omit-header", str(path)], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.root
def test_enforce_keeps_bobs_allowed_entry_and_removes_only_the_forbidden_one(sandbox: Sandbox, tmp_path: Path) -> None:
    require_root()
    require_tool("setfacl")
    require_tool("getfacl")
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"
                      "  controls:\n    socket:\n      allowedAcl: ['user:bob:rw-']\n")
    sock_path, twin_path = sandbox.path("/run/docker.sock"), tmp_path / "twin.sock"
    sock, twin = _socket(sock_path), _socket(twin_path)
    try:
        for p in (sock_path, twin_path):
            subprocess.run(["setfacl", "-m", f"u:{BOB_UID}:rw-", str(p)], check=True)
        state = tmp_path / "state"
        with running_agent(sandbox.root, state, "--policy", str(policy)) as agent:
            deadline = time.monotonic() + 20
            while not (state / "findings.json").exists():
                assert time.monotonic() < deadline, "no first pass"
                time.sleep(0.02)
            assert "user:1001:rw-" in _getfacl(sock_path)  # allowed: the first pass left it alone
            mark = agent.mark()
            for p in (sock_path, twin_path):
                subprocess.run(["setfacl", "-m", "u:4242:rw", str(p)], check=True)
            ev = agent.wait_for(is_event("nodeguard.drift.reverted", "socket-acl"), after=mark, timeout=20)
            subprocess.run(["setfacl", "-x", "u:4242", str(twin_path)], check=True)
            assert ev["attributes"]["nodeguard.removed"] == ["user:4242:rw-"]
            assert _getfacl(sock_path) == _getfacl(twin_path)
            assert "user:1001:rw-" in _getfacl(sock_path) and "4242" not in _getfacl(sock_path)
            # Nothing else was reported as reverted on the socket: bob's entry never went.
            reverted = [e for e in agent.events()[mark:] if e["event.name"] == "nodeguard.drift.reverted"
                        and e["attributes"].get("nodeguard.control") == "socket"]
            assert len(reverted) == 1, reverted
    finally:
        sock.close()
        twin.close()
