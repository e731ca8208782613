"""Inside a test namespace: one firewall reconcile pass, or a live loop driven by the watchers.

    python -m tests.support.fwpass pass  --host-root R [--policy P] --mode observe|enforce
    python -m tests.support.fwpass watch --host-root R [--policy P] [--poll SECONDS]

This is the agent's contract for one control (observe -> evaluate -> remediate the failing,
enforceable findings in enforce mode; a watcher's trigger means "run a pass"), run as a
subprocess under `nsenter` so that the netfilter it touches is the namespace's. `watch` prints
one JSON line per pass: {"t": wall time, "reason", "changed", "outcomes"}.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any

from nodeguard.audit import evaluate_control, run_audit
from nodeguard.controls.base import Context
from nodeguard.controls.firewall import FirewallControl
from nodeguard.host import HostRoot
from nodeguard.netfilter.model import Desired
from nodeguard.netfilter.monitor import firewall_watchers, watchers_for
from nodeguard.netfilter.select import backend_for, select_backend
from nodeguard.policy import load_policy
from nodeguard.structs import Mode, Status

# "evaluate" (a control that crashed) is not a rule of the control: never remediated.
ENFORCEABLE = {r.id for r in FirewallControl.rules if r.enforceable}


def one_pass(ctx: Context, control: FirewallControl) -> dict[str, Any]:
    result = evaluate_control(control, ctx)
    failing = [f for f in result.findings
               if f.status is Status.FAIL and f.mode is Mode.ENFORCE and f.rule in ENFORCEABLE]
    outcomes = control.remediate_many(ctx, failing, result.observed) if failing else []
    return {"findings": [f.to_json() for f in result.findings],
            "outcomes": [{"rule": f.rule, "subject": f.subject, "changed": o.changed, "ok": o.ok, "message": o.message}
                         for f, o in zip(failing, outcomes, strict=True)]}


def run_pass(host_root: str, policy_path: str | None, mode: str) -> dict[str, Any]:
    """One pass of the firewall control in this process's namespace (call it through in_netns)."""
    policy = load_policy(policy_path).with_mode(Mode(mode))
    return one_pass(Context(HostRoot(host_root), policy), FirewallControl())


def audit(host_root: str, policy_path: str | None, only: tuple[str, ...]) -> list[dict[str, Any]]:
    """What `nodeguard check --format json --only ...` reports, as its findings."""
    report = run_audit(HostRoot(host_root), load_policy(policy_path), only=only)
    return [f.to_json() for f in report.findings]


def apply_policy(host_root: str, policy_path: str | None) -> bool:
    """What `nodeguard firewall apply` does: True when something was written."""
    fw = load_policy(policy_path).spec.controls.firewall
    selection = select_backend(fw.backend, HostRoot(host_root))
    assert selection.backend is not None, selection.reason
    return selection.backend.apply(Desired.from_policy(fw))


def watcher_kinds(host_root: str, policy_path: str | None) -> list[str]:
    """What `nodeguard run` would start for the firewall here (the agent's factory, as it calls it)."""
    return [type(w).__name__ for w in watchers_for(HostRoot(host_root), load_policy(policy_path))]


def own_commits_are_quiet(host_root: str, policy_path: str) -> dict[str, list[str]]:
    """The nf_tables watcher beside an iptables-nft write of ours, then beside someone else's."""
    import subprocess

    fw = load_policy(policy_path).spec.controls.firewall
    backend = backend_for("iptables-nft", HostRoot(host_root))
    watcher = firewall_watchers(backend, hold=False)[0]
    seen: queue.Queue[str] = queue.Queue()
    watcher.start(lambda _control, reason: seen.put(reason))
    try:
        backend.remove()
        backend.apply(Desired.from_policy(fw))
        time.sleep(0.5)
        ours = [seen.get_nowait() for _ in range(seen.qsize())]
        subprocess.run(["iptables-nft", "-F", "NODEGUARD"], check=True, capture_output=True)
        time.sleep(0.5)
        theirs = [seen.get_nowait() for _ in range(seen.qsize())]
    finally:
        watcher.stop()
        backend.remove()
    return {"ours": ours, "theirs": theirs}


def remove_all(host_root: str) -> dict[str, bool]:
    """`nodeguard firewall remove`: every backend's copy of nodeguard's rules, and only those."""
    host = HostRoot(host_root)
    return {name: backend_for(name, host).remove() for name in ("nftables", "iptables-nft", "iptables-legacy")}


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    return {"changed": any(o["changed"] for o in out["outcomes"]),
            "failing": sorted({f["rule"] for f in out["findings"] if f["status"] == "fail"}),
            "findings": [f for f in out["findings"] if f["status"] == "fail"],
            "outcomes": out["outcomes"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["pass", "watch"])
    ap.add_argument("--host-root", type=Path, required=True)
    ap.add_argument("--policy", type=Path)
    ap.add_argument("--mode", choices=["observe", "enforce"], default="enforce")
    ap.add_argument("--poll", type=float, default=3.0)
    args = ap.parse_args()
    policy = load_policy(args.policy).with_mode(Mode(args.mode))
    host = HostRoot(args.host_root)

    def new_pass() -> Context:
        # As the agent does: a Context is one pass (netfilter is dumped once per Context).
        return Context(host, policy)

    control = FirewallControl()
    if args.command == "pass":
        sys.stdout.write(json.dumps(one_pass(new_pass(), control)) + "\n")
        return
    triggers: queue.Queue[str] = queue.Queue()
    signal.signal(signal.SIGTERM, lambda *_: triggers.put("__stop__"))
    # As the agent does: the watchers (and with them the table's holding) before the first pass.
    backend = control.observe(new_pass()).selection.backend
    assert backend is not None
    watcher = firewall_watchers(backend, args.poll, hold=args.mode == "enforce")[0]
    watcher.start(lambda _control, reason: triggers.put(reason))
    first = one_pass(new_pass(), control)
    print(json.dumps({"t": time.time(), "reason": "start", "ready": True, "backend": backend.name,
                      **_summary(first)}), flush=True)
    try:
        while True:
            reason = triggers.get()
            if reason == "__stop__":
                break
            # Coalesce what arrived meanwhile: one pass answers them all (level-triggered).
            while not triggers.empty():
                if triggers.get_nowait() == "__stop__":
                    return
            out = one_pass(new_pass(), control)
            print(json.dumps({"t": time.time(), "reason": reason, **_summary(out)}), flush=True)
    finally:
        watcher.stop()


if __name__ == "__main__":
    main()
