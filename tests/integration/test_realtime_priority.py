"""The socket's revert path at real-time priority (nodeguard/priority.py), in the real agent.

Threads are counted by their scheduling policy as the kernel reports it (sched_getscheduler on each
/proc/<pid>/task entry): Python does not name its threads for the kernel.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from nodeguard.priority import is_realtime, make_realtime, to_normal_priority
from tests.support.agent import is_event, running_agent
from tests.support.hung_daemon import socket_file
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root

pytestmark = [pytest.mark.root]


def fifo_threads(pid: int) -> int:
    count = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            count += is_realtime(int(tid))
        except ProcessLookupError:  # a thread that just ended
            continue
    return count


def test_a_thread_goes_realtime_and_back() -> None:
    require_root()
    seen: list[bool] = []

    def body() -> None:
        seen.append(make_realtime("a test thread"))
        seen.append(is_realtime())
        seen.append(to_normal_priority())
        seen.append(is_realtime())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [True, True, True, False]
    assert not is_realtime()  # only that thread was ever changed


def test_the_inotify_reader_and_the_socket_lane_run_realtime_and_nothing_else(sandbox: Sandbox,
                                                                             tmp_path: Path) -> None:
    require_root()
    with socket_file(sandbox.path("/run/docker.sock"), DOCKER_GID) as sock_path:
        state = tmp_path / "state"
        with running_agent(sandbox.root, state, "--mode", "enforce") as agent:
            deadline = time.monotonic() + 10
            while fifo_threads(agent.proc.pid) != 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fifo_threads(agent.proc.pid) == 2
            # The main thread (the agent's pid itself) is not one of them.
            assert not is_realtime(agent.proc.pid)
            mark = agent.mark()
            sock_path.chmod(0o666)
            agent.wait_for(is_event("nodeguard.drift.reverted", "socket-mode"), after=mark)
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
            # The lane went back to normal priority after its revert and up again before waiting.
            deadline = time.monotonic() + 5
            while fifo_threads(agent.proc.pid) != 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fifo_threads(agent.proc.pid) == 2
