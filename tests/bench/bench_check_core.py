"""Wall time and peak RSS of `nodeguard check` on a sandbox host root served by a real dockerd.

    .venv/bin/python -m tests.bench.bench_check_core [--runs 5] [--containers 10]

Needs root, dockerd and busybox-static (a real daemon on a sandbox host root, in its own network
namespace, like the tests). Every run is a fresh `python -m nodeguard check` subprocess, started
inside the daemon's network namespace (so the firewall and listener controls read the daemon's
network, not this machine's) by a small spawner process (see Spawner) and reaped with wait4(),
whose rusage gives that child's peak RSS. The commands run round-robin; the table gives the
median, min and max of `--runs` runs per command line, and each run's wall time over its round's
floor. Two floors are measured in the same run: `python -c pass` (the interpreter alone) and
`nodeguard version` (the CLI's own imports); the pod's probe (`python -m nodeguard.health`) is timed
beside them. A second table splits one audit pass by control (in one process, after the imports, a
fresh Context per pass as the agent makes). docker-bench-security is not run: it is no Debian, PyPI
or npm package here.

The children run without PYTHONDONTWRITEBYTECODE: the warm-up run writes nodeguard's .pyc files
and every timed run reads them, as an installed package's would be (pip compiles them). With it
set, every run would compile nodeguard's ~40 modules from source (~170 ms of CPU each time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# Run inside the daemon's network namespace: per-control wall time of `runs` audit passes, as JSON.
PER_CONTROL = """
import json, sys, time
t0 = time.perf_counter()
from nodeguard.audit import evaluate_control
from nodeguard.controls import ALL_CONTROLS, Context, all_controls  # ALL_CONTROLS: every control's module
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy
imports = time.perf_counter() - t0
policy = load_policy()
times = {}
for _ in range(int(sys.argv[2])):
    ctx = Context(HostRoot(sys.argv[1]), policy)
    for control in all_controls():
        t = time.perf_counter()
        evaluate_control(control, ctx)
        times.setdefault(control.name, []).append(time.perf_counter() - t)
print(json.dumps({"imports": imports, "controls": times}))
"""


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system: less sensitive than wall time to other load on the machine
    maxrss_mib: float
    exit_code: int


class Spawner:
    """Starts every timed command from a process forked before this benchmark imported anything big.

    The kernel carries the exec'ing process's RSS high-water mark into the new program's ru_maxrss:
    started from this benchmark (~30 MiB once the sandbox support is imported), no command could
    show a peak below that. The spawner is forked at ~10 MiB, so the floor row shows what a bare
    interpreter really takes and `check` its own peak (its forked reader included: wait4's rusage
    covers the descendants it reaped)."""

    def __init__(self) -> None:
        req_r, self._requests = os.pipe()
        self._answers, ans_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._requests)
            os.close(self._answers)
            try:
                self._serve(req_r, ans_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(ans_w)
        self._out = os.fdopen(self._requests, "w", buffering=1)
        self._in = os.fdopen(self._answers, "r")

    @staticmethod
    def _serve(requests: int, answers: int) -> None:
        os.chdir(REPO)
        devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
        with os.fdopen(requests) as lines, os.fdopen(answers, "w", buffering=1) as out:
            for line in lines:
                argv = json.loads(line)
                t = time.perf_counter()
                pid = os.posix_spawnp(argv[0], argv, ENV, file_actions=devnull)
                # wait4 reaps this very child and returns its own rusage (ru_maxrss in KiB on Linux).
                _, status, usage = os.wait4(pid, 0)
                out.write(json.dumps([time.perf_counter() - t, usage.ru_utime + usage.ru_stime,
                                      usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)]) + "\n")

    def run(self, argv: list[str]) -> Run:
        self._out.write(json.dumps(argv) + "\n")
        wall, cpu, rss, code = json.loads(self._in.readline())
        return Run(wall, cpu, rss, code)

    def close(self) -> None:
        self._out.close()
        self._in.close()
        os.waitpid(self.pid, 0)


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--containers", type=int, default=10, help="created containers the runtime checks list")
    args = ap.parse_args()

    spawner = Spawner()  # before the sandbox support below is imported
    from tests.bench.audit_host import audit_host

    with audit_host(args.containers) as (sb, d):
        in_netns = ["nsenter", f"--net=/var/run/netns/{d.netns}"]
        base = [*in_netns, sys.executable, "-m", "nodeguard"]
        host = ["--host-root", str(sb.root)]
        state = sb.root / "state"
        state.mkdir(mode=0o700)
        cases = {
            "python -c pass (floor)": [*in_netns, sys.executable, "-c", "pass"],
            "nodeguard version": [*base, "version"],
            "python -m nodeguard.health": [*in_netns, sys.executable, "-m", "nodeguard.health", "--state-dir",
                                           str(state)],
            "check --format json": [*base, "check", *host, "--format", "json"],
            "check --format sarif": [*base, "check", *host, "--format", "sarif"],
            "check --format junit": [*base, "check", *host, "--format", "junit"],
            "check (table)": [*base, "check", *host],
            "check --only daemon-config": [*base, "check", *host, "--only", "daemon-config", "--format", "json"],
            "check --only daemon-files": [*base, "check", *host, "--only", "daemon-files", "--format", "json"],
            "check --only socket": [*base, "check", *host, "--only", "socket", "--format", "json"],
            "check --only docker-group": [*base, "check", *host, "--only", "docker-group", "--format", "json"],
        }
        # What the full audit saw (proof the numbers are of a real, failing audit); it also warms
        # the page cache and the .pyc files.
        out = subprocess.run(cases["check --format json"], capture_output=True, text=True, cwd=REPO, check=False,
                             env=ENV)
        summary = json.loads(out.stdout)["summary"]
        # Round-robin, one run of each command per round: this machine's speed drifts by up to 2x
        # within minutes (other guests on its host), and each command must see the same drift. The
        # "x floor" column is the median over rounds of a run's wall time over its round's floor.
        results: dict[str, list[Run]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                results[name].append(spawner.run(argv))
        spawner.close()
        split = json.loads(subprocess.run([*in_netns, sys.executable, "-c", PER_CONTROL, str(sb.root),
                                           str(args.runs)], capture_output=True, text=True, cwd=REPO,
                                          check=True, env=ENV).stdout)

    print(f"nodeguard check on a sandbox host root with a real dockerd "
          f"({args.containers} containers, median/min/max of {args.runs} runs)")
    print(f"full audit: {summary['total']} checks, {summary['fail']} fail, {summary['pass']} pass, "
          f"{summary['skip']} skip")
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print()
    head = f"{'median':>8} {'min':>8} {'max':>8}"
    print(f"{'command':<28} {'exit':>4} | {'wall ms':^26} | {'x floor':>7} | {'CPU ms (user+sys)':^26} | "
          f"{'peak RSS MiB':^26}")
    print(f"{'':<28} {'':>4} | {head} | {'median':>7} | {head} | {head}")
    print("-" * 130)
    floors = results["python -c pass (floor)"]
    for name, runs in results.items():
        codes = sorted({r.exit_code for r in runs})
        ratio = statistics.median(r.wall_s / f.wall_s for r, f in zip(runs, floors, strict=True))
        print(f"{name:<28} {','.join(map(str, codes)):>4} | {stats([r.wall_s * 1000 for r in runs])} | "
              f"{ratio:7.1f} | {stats([r.cpu_s * 1000 for r in runs])} | {stats([r.maxrss_mib for r in runs])}")
    print()
    print(f"one audit pass by control, wall ms (median/min/max of {args.runs} passes in one process; "
          f"imports before them: {split['imports'] * 1000:.0f} ms)")
    print(f"{'control':<27} | {'median':>8} {'min':>8} {'max':>8}")
    print("-" * 57)
    for name, values in split["controls"].items():
        print(f"{name:<27} | {stats([v * 1000 for v in values])}")


if __name__ == "__main__":
    main()
