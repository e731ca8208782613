"""Firewall figures per backend, all inside a network namespace this script creates and deletes.

    sudo .venv/bin/python -m tests.bench.bench_firewall [--trials 100] [--poll 0.5]

Per backend (nftables, iptables-legacy, iptables-nft):
- cold apply: nodeguard's rules absent -> in place (remove before each trial);
- idempotent re-apply: `apply` when the rules are already in place (a read, no write);
- reconcile pass: one firewall control pass (backend choice + read + evaluate), nothing to fix;
- tamper -> restored: the agent's loop (watcher -> pass -> remediate) running in the namespace,
  someone deletes the table (nftables) or flushes the chain (xtables) with the real tool; time
  from just before the tool is started to the end of the pass that put the rules back. nf_tables
  is woken by NEWGEN notifications; legacy xtables by a poll every `--poll` seconds (the agent's
  default is 3 s; each tamper lands at a random point of the period, so the expected latency is
  about half the interval plus one pass).
Prints a table of median / p99 (milliseconds); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nodeguard.audit import evaluate_control
from nodeguard.controls.base import Context
from nodeguard.controls.firewall import FirewallControl
from nodeguard.host import HostRoot
from nodeguard.netfilter.model import Desired
from nodeguard.netfilter.monitor import NftablesWatcher, PollWatcher
from nodeguard.netfilter.select import backend_for
from nodeguard.policy import parse_policy
from nodeguard.structs import Mode, Status
from tests.support.netns import in_netns, netns

BACKENDS = ("nftables", "iptables-legacy", "iptables-nft")
TAMPER = {
    "nftables": ["nft", "delete", "table", "inet", "nodeguard"],
    "iptables-legacy": ["iptables-legacy", "-F", "NODEGUARD"],
    "iptables-nft": ["iptables-nft", "-F", "NODEGUARD"],
}
POLICY = """
apiVersion: nodeguard.io/v1alpha1
kind: NodeGuardPolicy
spec:
  mode: enforce
  controls:
    firewall:
      backend: {backend}
      ports:
        - {{port: 2376, allow: [192.0.2.0/28, 198.51.100.0/25, "2001:db8:1::/64"], action: drop}}
        - {{port: 2375, allow: []}}
"""


ENFORCEABLE = {r.id for r in FirewallControl.rules if r.enforceable}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(fn: Any, n: int, before: Any = None) -> list[float]:
    out = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(backend_name: str, root: str, trials: int, poll: float) -> dict[str, list[float]]:
    """Runs inside the namespace (forked child after setns)."""
    host = HostRoot(root)
    policy = parse_policy(POLICY.format(backend=backend_name))
    desired = Desired.from_policy(policy.spec.controls.firewall)
    backend = backend_for(backend_name, host)
    backend.remove()
    res: dict[str, list[float]] = {}
    cold_n = max(20, trials // 5)
    res["cold apply"] = timed(lambda: backend.apply(desired), cold_n, before=backend.remove)
    backend.apply(desired)
    res["idempotent re-apply"] = timed(lambda: backend.apply(desired), trials)
    ctx_policy = policy.with_mode(Mode.ENFORCE)
    control = FirewallControl()

    def one_pass() -> bool:
        result = evaluate_control(control, Context(host, ctx_policy))
        failing = [f for f in result.findings if f.status is Status.FAIL and f.rule in ENFORCEABLE]
        outcomes = control.remediate_many(Context(host, ctx_policy), failing, result.observed) if failing else []
        return any(o.changed for o in outcomes)

    res["reconcile pass (in place)"] = timed(one_pass, trials)

    # The agent's loop: watcher -> queue -> pass; record when a pass changed something.
    triggers: queue.Queue[str] = queue.Queue()
    restored: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                triggers.get(timeout=0.2)
            except queue.Empty:
                continue
            while not triggers.empty():
                triggers.get_nowait()
            if one_pass():
                restored.put(time.perf_counter())

    watcher = PollWatcher(poll) if backend_name == "iptables-legacy" else NftablesWatcher()
    watcher.start(lambda _c, reason: triggers.put(reason))
    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    lat = []
    try:
        for _ in range(trials):
            if backend_name == "iptables-legacy":
                # Land anywhere in the poll period, not in phase with the pass that just ran.
                time.sleep(random.uniform(0, poll))
            t0 = time.perf_counter()
            subprocess.run(TAMPER[backend_name], check=True, capture_output=True)
            t1 = restored.get(timeout=30)
            lat.append((t1 - t0) * 1000)
            time.sleep(0.01)
            # Drain a second restore triggered by our own commit's notification, if any.
            while not restored.empty():
                restored.get_nowait()
    finally:
        watcher.stop()
        stop.set()
        worker.join(timeout=5)
        backend.remove()
    label = f" (poll {poll:.1f}s)" if backend_name == "iptables-legacy" else ""
    res[f"tamper -> restored{label}"] = lat
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (it creates a network namespace)")
    rows: list[tuple[str, str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ngbench-") as root, netns("bench") as ns:
        Path(root, "run").mkdir()
        for name in args.backends.split(","):
            res = in_netns(ns, measure, name, root, args.trials, args.poll, timeout=600)
            for what, values in res.items():
                rows.append((name, what, len(values), statistics.median(values), pct(values, 99)))
    print(f"{'backend':<16} {'measure':<34} {'n':>4} {'median ms':>10} {'p99 ms':>10}")
    for name, what, n, med, p99 in rows:
        print(f"{name:<16} {what:<34} {n:>4} {med:>10.2f} {p99:>10.2f}")


if __name__ == "__main__":
    main()
