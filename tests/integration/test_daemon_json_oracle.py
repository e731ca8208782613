"""daemon.json as dockerd reads it, with a real dockerd 20.10 as the oracle.

Each dockerd runs in a network namespace of its own (tests/support/dockerd.py); what it listens on is
read there with `ss`. Three starts in all (each costs seconds): one file full of what Python's json
refuses and Go's accepts, the same file after nodeguard's enforce pass, and a file dockerd refuses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nodeguard.controls.daemon_config import DaemonConfigControl, DaemonConfigObservation, hosts_of
from nodeguard.structs import Status
from tests.support.dockerd import running_dockerd
from tests.support.rules import context, policy_from
from tests.support.sandbox import Sandbox

pytestmark = [pytest.mark.dockerd, pytest.mark.root]

CTL = DaemonConfigControl()
ENFORCE = policy_from("spec: {mode: enforce}")
DEEP = b"[" * 1500 + b"]" * 1500


def odd_file(socket: Path) -> bytes:
    """Every oddity of issue 17 in one file dockerd starts with: a Latin-1 byte in a label, a
    1500-deep array under `runtimes`, a 5,000-digit number in range, `hosts` twice (the last wins)
    and text after the object."""
    return (b'{"hosts": ["unix:///nowhere.sock"],\n'
            b' "labels": ["caf\xe9=1"],\n'
            b' "runtimes": {"odd": {"path": "runc", "deep": ' + DEEP + b', "n": 0.' + b"0" * 4998 + b'1}},\n'
            b' "hosts": ["unix://' + str(socket).encode() + b'", "tcp://0.0.0.0:2375"]\n'
            b'} and then some text dockerd never reads\n')


def tcp_ports(netns: str) -> set[int]:
    out = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", "ss", "-ltnH"], capture_output=True,
                         text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def nodeguard_view(sb: Sandbox) -> tuple[DaemonConfigObservation, dict[str, Status]]:
    ctx = context(sb, ENFORCE)
    obs = CTL.observe(ctx)
    return obs, {f.rule: f.status for f in CTL.evaluate(obs, ENFORCE)}


def test_dockerd_and_nodeguard_read_the_same_file_and_enforce_patches_it(sandbox: Sandbox) -> None:
    daemon_json = sandbox.path("/etc/docker/daemon.json")
    daemon_json.write_bytes(odd_file(sandbox.path("/run/docker.sock")))
    with running_dockerd(sandbox, write_config=False, socket_flag=False) as d:
        assert d.netns is not None
        listening = tcp_ports(d.netns)
        labels = d.info()["Labels"]
    assert 2375 in listening, "dockerd did not open the plaintext port: the oracle proves nothing"
    assert labels == ["caf\ufffd=1"]
    obs, status = nodeguard_view(sandbox)
    assert obs.error is None and obs.config is not None
    assert obs.config["labels"] == labels
    # nodeguard's TCP listeners are dockerd's.
    assert {e.port for e in hosts_of(obs.config) if e.scheme == "tcp"} == listening
    assert status["valid-json"] is Status.PASS
    assert status["plaintext-2375"] is Status.FAIL and status["tcp-host-tls"] is Status.FAIL

    # Enforce: the admin's file is patched (hosts only), never replaced by a last good copy.
    ctx = context(sandbox, ENFORCE)
    failing = [f for f in CTL.evaluate(obs, ENFORCE) if f.status is Status.FAIL
               and f.rule in ("plaintext-2375", "tcp-host-tls")]
    outcomes = CTL.remediate_many(ctx, failing, obs)
    assert all(o.changed and o.ok for o in outcomes), outcomes
    after = daemon_json.read_bytes()
    assert b'"labels": ["caf\xe9=1"]' in after and DEEP in after  # untouched, byte for byte
    assert b"2375" not in after
    with running_dockerd(sandbox, write_config=False, socket_flag=False) as d:
        assert d.netns is not None
        assert tcp_ports(d.netns) == set()
        assert d.info()["Labels"] == labels
    _obs, status = nodeguard_view(sandbox)
    assert status["plaintext-2375"] is Status.PASS and status["tcp-host-tls"] is Status.PASS


def test_a_number_dockerd_refuses_is_refused_by_nodeguard_without_an_exception(sandbox: Sandbox) -> None:
    daemon_json = sandbox.path("/etc/docker/daemon.json")
    socket = sandbox.path("/run/docker.sock")
    daemon_json.write_bytes(b'{"hosts": ["unix://' + str(socket).encode() + b'", "tcp://0.0.0.0:2375"], '
                            b'"runtimes": {"odd": {"path": "runc", "n": 1' + b"0" * 4999 + b'}}}')
    with pytest.raises(RuntimeError, match="into Go value of type float64"), \
            running_dockerd(sandbox, write_config=False, socket_flag=False):
        pass
    obs, status = nodeguard_view(sandbox)
    assert status["valid-json"] is Status.FAIL
    assert obs.error is not None and "cannot unmarshal number" in obs.error
    json.dumps(obs.error)
