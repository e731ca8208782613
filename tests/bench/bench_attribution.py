"""What attribution costs the socket revert (target: nothing), and how soon and how often the actor follows.

    sudo .venv/bin/python -m tests.bench.bench_attribution [--trials 100]

Two `nodeguard run --mode enforce` agents run side by side on two sandbox host roots, one with
`spec.agent.attribution.enabled: false`, one with it on, and a real auditd (our own
`auditd -n -c DIR`, or the machine's) with a rule on the second sandbox's socket. Trials alternate
between them, so both see the same machine load: each `chmod 0666` of the socket is timed, from the
instant before it, to a bare inotify reader's wake-up (the floor), drift.detected, drift.reverted,
and (attribution on) drift.attributed. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.bench_agent import EventTail, InotifyBaseline, pct
from tests.support.auditd import running_auditd
from tests.support.sandbox import DOCKER_GID, Sandbox, make_sandbox

POLICY = """apiVersion: nodeguard.io/v1alpha1
kind: NodeGuardPolicy
spec:
  agent:
    flapping: {{threshold: 1000000}}
    attribution: {{enabled: {enabled}, waitMs: 500, maxPerFindingPerMinute: 1000000}}
"""


def wait(tail: EventTail, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail.poll()
        for e in reversed(tail.events):
            if pred(e):
                return e
        time.sleep(0.0005)
    raise TimeoutError


class Side:
    def __init__(self, root: Path, name: str, attribution: bool) -> None:
        self.name = name
        self.sb: Sandbox = make_sandbox(root / name / "host")
        self.state = root / name / "state"
        self.events = root / name / "events.jsonl"
        self.sock = self.sb.path("/run/docker.sock")
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(self.sock))
        os.chown(self.sock, 0, DOCKER_GID)
        self.sock.chmod(0o660)
        self.policy = root / name / "policy.yaml"
        self.policy.write_text(POLICY.format(enabled=str(attribution).lower()))
        self.netns = f"ngba-{os.urandom(3).hex()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = EventTail(self.events)
        self.rows: dict[str, list[float]] = {"floor": [], "detected": [], "reverted": [], "attributed": []}
        self.drifts = 0
        self.with_actor = 0

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-m", "nodeguard", "run",
             "--host-root", str(self.sb.root), "--state-dir", str(self.state), "--events-file", str(self.events),
             "--mode", "enforce", "--policy", str(self.policy), "--log-level", "warning", "--aggregate-seconds", "0"],
            stderr=(self.state.parent / "agent.stderr").open("wb"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.srv.close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)


def trial(side: Side, baseline: InotifyBaseline, attributed: bool) -> None:
    t0 = time.time_ns()
    side.sock.chmod(0o666)
    floor = baseline.first_after(t0, "docker.sock")
    rule = "socket-mode"
    det = wait(side.tail, lambda e: e["event.name"] == "nodeguard.drift.detected"
               and e["attributes"].get("nodeguard.rule") == rule and e["time_unix_nano"] >= t0)
    rev = wait(side.tail, lambda e: e["event.name"] == "nodeguard.drift.reverted"
               and e["attributes"].get("nodeguard.rule") == rule and e["time_unix_nano"] >= t0)
    side.rows["floor"].append((floor - t0) / 1e6)
    side.rows["detected"].append((det["time_unix_nano"] - t0) / 1e6)
    side.rows["reverted"].append((rev["time_unix_nano"] - t0) / 1e6)
    if attributed:
        for drift in (det, rev):
            att = wait(side.tail, lambda e, i=drift["event.id"]: e["event.name"] == "nodeguard.drift.attributed"
                       and e["attributes"].get("nodeguard.attributed.event_id") == i)
            side.drifts += 1
            if att["attributes"].get("nodeguard.actor.source") == "audit" and \
                    att["attributes"].get("process.pid") == os.getpid():
                side.with_actor += 1
            if drift is det:
                side.rows["attributed"].append((att["time_unix_nano"] - t0) / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (auditd, network namespaces, chown)")
    root = Path(tempfile.mkdtemp(prefix="ngba-", dir="/tmp"))
    off, on = Side(root, "off", False), Side(root, "on", True)
    try:
        with running_auditd(on.sb, root / "auditd") as auditd:
            auditd.watch(on.sock)
            for side in (off, on):
                side.start()
            for side in (off, on):
                while not (side.state / "findings.json").exists():
                    time.sleep(0.05)
            time.sleep(1.5)  # the start-up pass, its follow-ups and their attributions settle
            baseline = InotifyBaseline([off.sb.path("/run"), on.sb.path("/run")])
            try:
                for i in range(args.trials):
                    for side in ((off, on) if i % 2 == 0 else (on, off)):
                        trial(side, baseline, side is on)
                        time.sleep(0.05)  # spaced: latency, not a fight, is measured
            finally:
                baseline.close()
            own = auditd.own
    finally:
        for side in (off, on):
            side.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nattribution benchmark: {args.trials} socket chmods per agent, trials alternated, enforce mode, "
          f"{os.cpu_count()} cores, {'our own auditd' if own else 'the machine auditd'}\n")
    print(f"{'agent':16} {'measure':22} {'median ms':>10} {'p95 ms':>10} {'p99 ms':>10} {'max ms':>10}")
    for side in (off, on):
        for what, label in (("floor", "inotify wake (floor)"), ("detected", "change->detected"),
                            ("reverted", "change->reverted"), ("attributed", "change->attributed")):
            vals = side.rows[what]
            if vals:
                print(f"attribution {side.name:4} {label:22} {statistics.median(vals):10.2f} {pct(vals, 95):10.2f} "
                      f"{pct(vals, 99):10.2f} {max(vals):10.2f}")
    d_med = statistics.median(on.rows["reverted"]) - statistics.median(off.rows["reverted"])
    d_p95 = pct(on.rows["reverted"], 95) - pct(off.rows["reverted"], 95)
    d_p99 = pct(on.rows["reverted"], 99) - pct(off.rows["reverted"], 99)
    print(f"\nrevert latency, attribution on minus off: median {d_med:+.2f} ms, p95 {d_p95:+.2f} ms, "
          f"p99 {d_p99:+.2f} ms")
    share = 100 * on.with_actor / on.drifts if on.drifts else 0.0
    print(f"drift events (detected + reverted) whose attribution names the chmod's pid: "
          f"{on.with_actor}/{on.drifts} ({share:.1f} %)")


if __name__ == "__main__":
    main()
