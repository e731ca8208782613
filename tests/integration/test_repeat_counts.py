"""A drift's repeats, counted inside its aggregation window, survive a SIGKILL of the real agent once
the pass that counted them is committed: the next start sends the summary the killed run owed.

(Their write is the pass's commit, not the repeat itself: it used to stand between the drift and
its revert. README "Rate".)
"""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

import pytest

from tests.support.agent import is_event, running_agent
from tests.support.hung_daemon import socket_file
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root

pytestmark = [pytest.mark.root]

ENFORCE = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"
           "  agent:\n    flapping: {threshold: 1000000}\n")


def test_counted_repeats_survive_a_sigkill_and_are_sent_at_the_next_start(sandbox: Sandbox,
                                                                           tmp_path: Path) -> None:
    require_root()
    policy = tmp_path / "p.yaml"
    policy.write_text(ENFORCE)
    state = tmp_path / "state"
    with socket_file(sandbox.path("/run/docker.sock"), DOCKER_GID) as sock_path:
        with running_agent(sandbox.root, state, "--policy", str(policy)) as agent:
            for _ in range(4):  # one event out, three repeats counted (not sent: watched on the host)
                sock_path.chmod(0o666)
                deadline = time.monotonic() + 10
                while stat.S_IMODE(sock_path.stat().st_mode) != 0o660:
                    assert time.monotonic() < deadline, "not reverted"
                    time.sleep(0.005)
                time.sleep(0.05)  # the revert's own inotify echo looked at, so the next chmod is a new drift
            # Another value is another drift, sent at once: once it is in the events file, its pass
            # and every earlier one are committed (the exporters are woken by the commit).
            mark = agent.mark()
            sock_path.chmod(0o606)
            agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode", **{"nodeguard.observed": "0606"}),
                           after=mark)
            sent = [e for e in agent.events() if e["event.name"] == "nodeguard.drift.detected"
                    and e["attributes"].get("nodeguard.observed") == "0666"]
            assert len(sent) == 1  # the repeats were counted, not sent
            assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        with running_agent(sandbox.root, state, "--policy", str(policy)) as agent:
            summary = agent.wait_for(lambda e: e["event.name"] == "nodeguard.drift.detected"
                                     and e["attributes"].get("nodeguard.observed") == "0666"
                                     and "nodeguard.aggregate.count" in e["attributes"])
            assert summary["attributes"]["nodeguard.aggregate.count"] == 3
