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

    sudo .venv/bin/python -m tests.bench.bench_firewall --competing [--trials 20]

Competing writers (issue 18): a node namespace with a real listener on [::]:2375, a client in a
denied namespace (198.51.100.2, 2001:db8:2::2) connecting every 10 ms (50 ms connect timeout),
the agent's loop (tests.support.fwpass watch) in the node namespace, and a writer using the real
tools there. Per trial: how long 2375 stayed reachable from the denied namespace after the write
(the start of the last connection that got in, minus the moment just before the writer started),
and when the agent's pass restored the rules. Floors measured in the same run: the writer
command alone (the earliest a restore could follow) and the probe's period.
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
from nodeguard.netfilter.monitor import LEGACY_POLL_SECONDS, NftablesWatcher, PollWatcher
from nodeguard.netfilter.select import backend_for
from nodeguard.policy import parse_policy
from nodeguard.structs import Mode, Status
from tests.support.netns import in_netns, netns

# "nftables": the table owned by this process (flags owner, persist; Linux 6.9+), so a tamper is
# refused by the kernel; "nftables-unowned": the way for older kernels, tamper -> restored.
BACKENDS = ("nftables", "nftables-unowned", "iptables-legacy", "iptables-nft")
TAMPER = {
    "nftables": ["nft", "delete", "table", "inet", "nodeguard"],
    "nftables-unowned": ["nft", "delete", "table", "inet", "nodeguard"],
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
    label = backend_name
    owned = backend_name == "nftables"
    if backend_name == "nftables-unowned":
        os.environ["NODEGUARD_NFT_OWN_TABLE"] = "0"  # this forked child only
        backend_name = "nftables"
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
    if owned:
        # Held by this process: the same tamper is refused by the kernel; nothing to restore.
        res["tamper refused (nft exits 1)"] = timed(
            lambda: subprocess.run(TAMPER[label], check=False, capture_output=True), max(10, trials // 5))
        assert backend.in_place(desired), "an owned table changed under a refused tamper"
        backend.remove()
        return res

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
    tamper = TAMPER[label]
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
            subprocess.run(tamper, check=True, capture_output=True)
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
    ap.add_argument("--competing", action="store_true", help="competing writers against the agent's loop instead")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (it creates a network namespace)")
    if args.competing:
        print(f"{'competing writer':<48} {'measure':<36} {'n':>4} {'median ms':>10} {'p99 ms':>10}")
        for name, what, n, med, p99 in competing(args.trials):
            print(f"{name:<48} {what:<36} {n:>4} {med:>10.1f} {p99:>10.1f}")
        print("(probe: a connection every 10 ms, 50 ms timeout; machine shared with other jobs)")
        return
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


# -- competing writers -------------------------------------------------------------------------

SQUAT = ("delete table inet nodeguard; add table inet nodeguard { flags owner; }; "
         "add chain inet nodeguard input { type filter hook input priority -10; policy accept; }\n")
WRITERS: dict[str, tuple[str, bool, list[list[str]]]] = {
    # name: (policy backend, nodeguard owns its nf_tables table, commands)
    f"unparseable rule, iptables-legacy (poll {LEGACY_POLL_SECONDS:g} s)": ("iptables-legacy", False, [
        ["iptables-legacy", "-I", "NODEGUARD", "1", "-s", "198.0.0.0/255.0.0.1", "-j", "ACCEPT"],
        ["ip6tables-legacy", "-I", "NODEGUARD", "1", "!", "-s", "2001:db8:1::/64", "-j", "ACCEPT"]]),
    "unparseable rule, iptables-nft": ("iptables-nft", False, [
        ["iptables-nft", "-I", "NODEGUARD", "1", "!", "-s", "10.0.0.0/8", "-j", "ACCEPT"],
        ["ip6tables-nft", "-I", "NODEGUARD", "1", "!", "-s", "2001:db8:1::/64", "-j", "ACCEPT"]]),
    "rule iptables-nft cannot show (by nft)": ("iptables-nft", False, [
        ["nft", "insert rule ip filter NODEGUARD meta l4proto tcp th dport 2375 ct state new accept; "
                "insert rule ip6 filter NODEGUARD meta l4proto tcp th dport 2375 ct state new accept"]]),
    "unparseable rule, nftables (not owned)": ("nftables", False, [
        ["nft", "insert rule inet nodeguard input ip saddr & 255.0.0.1 == 198.0.0.0 accept; "
                "insert rule inet nodeguard input ip6 saddr != 2001:db8:1::/64 accept"]]),
    "unparseable rule, nftables (owned: refused)": ("nftables", True, [
        ["nft", "insert rule inet nodeguard input ip saddr & 255.0.0.1 == 198.0.0.0 accept; "
                "insert rule inet nodeguard input ip6 saddr != 2001:db8:1::/64 accept"]]),
    "auto: legacy chain planted + table deleted": ("auto", False, [
        ["iptables-legacy", "-N", "NODEGUARD"], ["nft", "delete", "table", "inet", "nodeguard"]]),
    "auto: then the legacy chain flushed": ("auto", False, [["iptables-legacy", "-F", "NODEGUARD"]]),
}


def _watch(node: str, root: Path, policy: Path, own: bool) -> tuple[subprocess.Popen[str], queue.Queue[Any]]:
    import json
    import sys

    from tests.support.netns import REPO, nsenter

    env = {**os.environ, "NODEGUARD_NFT_OWN_TABLE": "1" if own else "0"}
    proc = subprocess.Popen([*nsenter(node), sys.executable, "-m", "tests.support.fwpass", "watch",
                             "--host-root", str(root), "--policy", str(policy),
                             "--poll", str(LEGACY_POLL_SECONDS)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    lines.get(timeout=60)  # ready
    return proc, lines


def _until_changed(lines: queue.Queue[Any], timeout: float) -> float | None:
    deadline = time.time() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.time()))
        except queue.Empty:
            return None
        if line.get("changed"):
            return float(line["t"])


def competing(trials: int) -> list[tuple[str, str, int, float, float]]:
    import json

    from tests.support import fwpass
    from tests.support.netns import in_netns, ns_process, ns_run, nsenter, reach_monitor, topology, wait_listening

    rows: list[tuple[str, str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ngfight-") as tmp, topology() as topo, \
            ns_process(topo.node, ["python3", "-m", "http.server", "2375", "--bind", "::", "--directory", tmp]):
        root = Path(tmp)
        (root / "run").mkdir()
        wait_listening(topo.node, 2375)
        targets = [(topo.node_from_denied_v4, 2375), (topo.node_from_denied_v6, 2375)]

        def policy(backend: str) -> Path:
            path = root / f"{backend}.json"
            path.write_text(json.dumps({
                "apiVersion": "nodeguard.io/v1alpha1", "kind": "NodeGuardPolicy",
                "spec": {"controls": {"firewall": {"backend": backend, "ports": [
                    {"port": 2375, "allow": [], "action": "drop"}]}}}}))
            return path

        def clean() -> None:
            in_netns(topo.node, fwpass.remove_all, str(root))
            ns_run(topo.node, ["iptables-legacy", "-X", "NODEGUARD"], check=False)

        for name, (backend, own, commands) in WRITERS.items():
            if name.startswith("auto: then"):
                continue
            opened: list[float] = []
            restored: list[float] = []
            flush_open: list[float] = []
            floor: list[float] = []
            clean()
            proc, lines = _watch(topo.node, root, policy(backend), own)
            try:
                with reach_monitor(topo.denied, targets) as result:
                    marks = []
                    for _ in range(trials):
                        time.sleep(0.3 + random.uniform(0, 0.5))
                        t0 = time.time()
                        for command in commands:
                            ns_run(topo.node, command, check=False)
                        t_written = time.time()
                        t_back = _until_changed(lines, 1.5 if own else 30)
                        flush = None
                        if name.startswith("auto:"):
                            time.sleep(0.2)
                            flush = time.time()
                            ns_run(topo.node, WRITERS["auto: then the legacy chain flushed"][2][0])
                            ns_run(topo.node, ["iptables-legacy", "-X", "NODEGUARD"], check=False)
                        marks.append((t0, t_written, t_back, flush))
                        time.sleep(0.3)
                    end = time.time()
                reach = result[0]
                for i, (t0, t_written, t_back, flush) in enumerate(marks):
                    stop = marks[i + 1][0] if i + 1 < len(marks) else end
                    hits = [t for t, _ in reach.successes(t0) if t < (flush or stop)]
                    opened.append((max(hits) - t0) * 1000 if hits else 0.0)
                    floor.append((t_written - t0) * 1000)
                    if t_back is not None:
                        restored.append((t_back - t0) * 1000)
                    if flush is not None:
                        after = [t for t, _ in reach.successes(flush) if t < stop]
                        flush_open.append((max(after) - flush) * 1000 if after else 0.0)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
                clean()
            rows.append((name, "2375 reachable after the write", len(opened), statistics.median(opened),
                         pct(opened, 99)))
            if restored:
                rows.append((name, "write -> rules restored", len(restored), statistics.median(restored),
                             pct(restored, 99)))
            else:
                rows.append((name, "restores needed (none: refused)", 0, 0.0, 0.0))
            if flush_open:
                rows.append((name, "2375 reachable after legacy flush", len(flush_open),
                             statistics.median(flush_open), pct(flush_open, 99)))
            rows.append((name, "floor: the writer command alone", len(floor), statistics.median(floor),
                         pct(floor, 99)))

        # The owner squatter: `nft -i` takes the table while no agent runs; the agent starts, names
        # it; the squatter leaves; how long 2375 stays open after the kernel dropped the table.
        for own in (True, False):
            after_exit: list[float] = []
            back: list[float] = []
            for _ in range(max(3, trials // 4)):
                clean()
                in_netns(topo.node, fwpass.apply_policy, str(root), str(policy("nftables")))
                squatter = subprocess.Popen([*nsenter(topo.node), "nft", "-i"], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
                assert squatter.stdin is not None
                squatter.stdin.write(SQUAT)
                squatter.stdin.flush()
                time.sleep(0.3)
                proc, lines = _watch(topo.node, root, policy("nftables"), own)
                try:
                    with reach_monitor(topo.denied, targets) as result:
                        time.sleep(0.3 + random.uniform(0, 0.3))
                        t_exit = time.time()
                        squatter.stdin.write("quit\n")
                        squatter.stdin.close()
                        squatter.wait(timeout=10)
                        t_back = _until_changed(lines, 30)
                        time.sleep(0.5)
                    after_exit.append(result[0].open_after(t_exit) * 1000)
                    if t_back is not None:
                        back.append((t_back - t_exit) * 1000)
                finally:
                    if squatter.poll() is None:
                        squatter.kill()
                    proc.terminate()
                    proc.wait(timeout=10)
            label = "owner squatter exits (" + ("agent owns its table" if own else "not owned") + ")"
            rows.append((label, "2375 reachable after the exit", len(after_exit), statistics.median(after_exit),
                         pct(after_exit, 99)))
            if back:
                rows.append((label, "exit -> rules restored", len(back), statistics.median(back), pct(back, 99)))
        clean()
    return rows


if __name__ == "__main__":
    main()
