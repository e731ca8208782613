"""runtime/daemon-unresponsive: a socket that accepts and never answers is a finding, bounded in time."""

from __future__ import annotations

import time

import pytest

from nodeguard.controls.base import Context
from nodeguard.controls.runtime import RuntimeControl
from nodeguard.host import HostRoot
from nodeguard.policy import parse_policy
from nodeguard.structs import Status
from tests.support.hung_daemon import hung_socket
from tests.support.sandbox import Sandbox

POLICY = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
          "spec:\n  controls:\n    runtime:\n      timeoutSeconds: 0.5\n")


@pytest.mark.root
def test_a_hung_daemon_is_reported_within_the_timeout(sandbox: Sandbox) -> None:
    policy = parse_policy(POLICY)
    with hung_socket(sandbox.path("/run/docker.sock")) as held:
        ctx = Context(HostRoot(sandbox.root), policy)
        control = RuntimeControl()
        started = time.monotonic()
        obs = control.observe(ctx)
        took = time.monotonic() - started
        assert held, "the client never connected: the test would not show a hang"
    assert obs.unresponsive
    assert took < 5, f"the API call was not bounded by the policy's timeout ({took:.1f}s)"
    found = {f.rule: f for f in control.evaluate(obs, policy)}
    assert found["daemon-unresponsive"].status is Status.FAIL
    assert "did not answer within 0.5s" in found["daemon-unresponsive"].message
    assert {f.status for r, f in found.items() if r != "daemon-unresponsive"} == {Status.SKIP}


def test_a_missing_daemon_is_not_a_hung_one(sandbox: Sandbox) -> None:
    policy = parse_policy(POLICY)
    control = RuntimeControl()
    obs = control.observe(Context(HostRoot(sandbox.root), policy))
    assert not obs.unresponsive
    assert {f.status for f in control.evaluate(obs, policy)} == {Status.SKIP}
