"""Real-time scheduling for the two threads on the socket's revert path: the inotify reader and the
socket's lane.

Measured (tests/bench/bench_agent.py, kernel 6.18, EEVDF): at normal priority a socket revert took
~1.5 ms in most trials and 5-6 ms in streaks of 10-40 trials. Traced inside the agent, the 5 ms
lay between the inotify event and the woken thread running (event at 0.15 ms, lane running at
4.7 ms): under EEVDF a woken thread does not always preempt the running task before that task's
slice ends, and a thread that has just used CPU in a burst (a revert) is the one that waits.
SCHED_FIFO priority 1, the lowest real-time priority, runs it at once. Both threads do little per
event (a stat, an ACL read, a chmod; the account files are parsed again only when they changed),
the folders they watch are system folders (/etc, /run, the daemon's) that only root writes on a
sound host, and the lane holds the
priority only from its wake-up to its revert: the rest of that pass (verify, outcome events) runs at normal priority
(`Lane.revert_done`), so the host's own tasks get the CPU back as soon as the socket is safe. The
kernel's real-time throttling (sched_rt_runtime_us) leaves other tasks their share even under an
event flood. The heavy lanes (a 20,000-member group, the firewall, the Docker API) stay at normal
priority.

It needs CAP_SYS_NICE (kept by the agent, given by the chart; nodeguard/privileges.py says why that
adds nothing to what the agent already holds). Without it the two threads run at normal priority
and the agent says so once.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

RT_PRIORITY = 1
_refused: list[str] = []
_lock = threading.Lock()


def make_realtime(what: str, tid: int = 0) -> bool:
    """SCHED_FIFO priority 1 for thread `tid` (0: the calling thread). Its children start at normal
    priority (SCHED_RESET_ON_FORK). False, logged once per agent, when the kernel refuses."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(RT_PRIORITY))
    except OSError as exc:
        with _lock:
            first = not _refused
            _refused.append(what)
        if first:
            log.info("%s runs at normal priority: real-time priority %d refused (%s); a busy CPU can delay "
                     "a socket revert by a scheduler slice (~4 ms)", what, RT_PRIORITY, exc.strerror or exc)
        return False
    log.debug("%s runs at real-time priority %d", what, RT_PRIORITY)
    return True


def to_normal_priority() -> bool:
    """The calling thread back to SCHED_OTHER (always permitted); True when it was done."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
    except OSError:
        return False
    return True


def is_realtime(tid: int = 0) -> bool:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
