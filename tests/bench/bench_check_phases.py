"""Where a one-shot `check` spends its time below the command line, phase by phase.

    .venv/bin/python -m tests.bench.bench_check_phases [--runs 15] [--containers 10] [--only socket]

Needs root, dockerd and busybox-static: the sandbox host root and daemon of bench_check_core.
Every run is a fresh interpreter in the daemon's network namespace that does what `nodeguard
check --format json` does under its CLI, one phase after the other, and reports each phase's wall
and CPU time: forking the Docker API reader, importing msgspec, importing the policy module (the
models, msgspec Structs), load_policy() of the embedded default, importing the audit, the report
and every control, the audit pass, the JSON rendering. The Docker SDK is imported, and the daemon
read, by the forked reader `check` starts first (nodeguard.api_prefetch), on the other CPU: its
time shows only where the audit pass waits for its answer, and its CPU is not in this table.
The table gives the median and the minimum of `--runs` runs, beside the same-run floor (`python -c
pass`); the minimum is the steadier figure on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tests.bench.audit_host import audit_host

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# One run: argv[1] the host root, argv[2:] the --only controls. Prints {phase: [wall_s, cpu_s]}.
PHASES = """
import os, sys, time
out, last = {}, (time.perf_counter(), time.process_time())
def done(name):
    global last
    now = (time.perf_counter(), time.process_time())
    out[name] = [now[0] - last[0], now[1] - last[1]]
    last = now
only = sys.argv[2:] or None
reader = None
if only is None or "runtime" in only:
    from nodeguard.api_prefetch import ForkedDaemonReader
    reader = ForkedDaemonReader()  # as `check` does first: the child imports the Docker SDK meanwhile
done("fork the Docker API reader")
import msgspec
done("import msgspec")
from nodeguard.policy import load_policy
from nodeguard.host import HostRoot
done("import nodeguard.policy (models)")
policy = load_policy()
host = HostRoot(sys.argv[1])
if reader is not None:
    reader.request_for(host, policy)  # as `check` does once the policy is in: the daemon is read meanwhile
done("load_policy(), ask the reader")
import nodeguard.audit, nodeguard.report
from nodeguard.controls import all_controls
from nodeguard.events.resource import host_name, machine_id
all_controls(only)
done("import audit, report, controls")
nodeguard.audit.docker_engine_evidence(host, policy)
report = nodeguard.audit.run_audit(host, policy, only=only, daemon_reader=reader)
done("audit pass, reader's answer")
text = "".join(nodeguard.report.iter_json(report, nodeguard.report.RunInfo(str(host.root), host_name(host.root)), {}))
machine_id(host.root)
done("render JSON")
import json
print(json.dumps(out))
"""


def _floor(argv: list[str]) -> float:
    """CPU seconds (user+sys) of one child: wait4 gives that child's own rusage."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--containers", type=int, default=10, help="created containers the runtime checks list")
    ap.add_argument("--only", action="append", default=[], help="controls to run (default: every control)")
    args = ap.parse_args()

    runs: list[dict[str, list[float]]] = []
    floor: list[float] = []
    with audit_host(args.containers) as (sb, d):
        in_netns = ["nsenter", f"--net=/var/run/netns/{d.netns}"]
        child = [*in_netns, sys.executable, "-c", PHASES, str(sb.root), *args.only]
        subprocess.run(child, capture_output=True, cwd=REPO, env=ENV, check=True)  # warm-up: .pyc, page cache
        for _ in range(args.runs):
            proc = subprocess.run(child, capture_output=True, text=True, cwd=REPO, env=ENV, check=True)
            runs.append(json.loads(proc.stdout))
            floor.append(_floor([*in_netns, sys.executable, "-c", "pass"]))

    what = f"--only {' --only '.join(args.only)}" if args.only else "every control"
    print(f"check --format json below the CLI, {what}, {args.containers} containers: "
          f"median/min of {args.runs} fresh processes")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    print(f"{'phase':<36} | {'wall ms':^17} | {'CPU ms':^17}")
    print(f"{'':<36} | {'median':>8} {'min':>8} | {'median':>8} {'min':>8}")
    print("-" * 78)
    for name in runs[0]:
        wall = [r[name][0] * 1000 for r in runs]
        cpu = [r[name][1] * 1000 for r in runs]
        print(f"{name:<36} | {statistics.median(wall):8.1f} {min(wall):8.1f} | "
              f"{statistics.median(cpu):8.1f} {min(cpu):8.1f}")
    totals = [sum(v[0] for v in r.values()) * 1000 for r in runs]
    cpu_totals = [sum(v[1] for v in r.values()) * 1000 for r in runs]
    print("-" * 78)
    print(f"{'total below the CLI':<36} | {statistics.median(totals):8.1f} {min(totals):8.1f} | "
          f"{statistics.median(cpu_totals):8.1f} {min(cpu_totals):8.1f}")
    print(f"{'floor: python -c pass':<36} | {'':>17} | {statistics.median(floor) * 1000:8.1f} "
          f"{min(floor) * 1000:8.1f}")


if __name__ == "__main__":
    main()
