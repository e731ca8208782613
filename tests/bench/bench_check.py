"""`nodeguard check` with full CIS sections 1-3 coverage: wall time, peak RSS, and the id counts.

    .venv/bin/python -m tests.bench.bench_check [--runs 5]

Needs root and dockerd (a real daemon on a sandbox host root, in its own network namespace, as
the tests start it). The sandbox looks like a Docker host: binaries where Debian puts them, units
with drop-ins, a certs.d with registries, audit rules (a stock-sized rules.d plus Docker's
watches). Every run is a fresh `python -m nodeguard check --format json` subprocess reaped with
wait4(), whose rusage is that child's own peak RSS. Prints the median/min/max of `--runs` runs per
command line, then the CIS ids checked / enforceable / not checked (from the code's rules) and
what the last audit said per section (skip = not applicable on this host).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeguard import cis
from tests.support.dockerd import running_dockerd
from tests.support.sandbox import Sandbox, make_sandbox

REPO = Path(__file__).resolve().parents[2]
BINARIES = {"/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/bin/containerd-shim", "/usr/bin/containerd-shim-runc-v1",
            "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"}


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    exit_code: int
    stdout: str


def run_once(argv: list[str]) -> Run:
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, cwd=REPO)
        # wait4 reaps this very child and returns its own rusage (ru_maxrss in KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode, text)


def populate(sb: Sandbox) -> None:
    for b in BINARIES:
        sb.write(b, "#!/bin/sh\n", 0o755)
    sb.write("/lib/systemd/system/docker.service", "[Service]\nExecStart=/usr/sbin/dockerd -H fd://\n")
    sb.write("/lib/systemd/system/docker.socket", "[Socket]\nListenStream=/run/docker.sock\n")
    sb.write("/etc/systemd/system/docker.service.d/10-proxy.conf", "[Service]\nEnvironment=HTTP_PROXY=x\n")
    sb.write("/etc/default/docker", "DOCKER_OPTS=\n")
    for n in range(5):
        sb.write(f"/etc/docker/certs.d/registry{n}.example:5000/ca.crt", "pem\n", 0o444)
        sb.write(f"/etc/docker/certs.d/registry{n}.example:5000/client.key", "key\n", 0o400)
    # A stock-sized rules.d (the CIS audit rules of a hardened host run to a few hundred lines).
    stock = "\n".join(f"-a always,exit -F arch=b64 -S openat -F dir=/srv/app{n} -F perm=wa -k app"
                      for n in range(300))
    sb.write("/etc/audit/rules.d/10-base-config.rules", "-D\n-b 8192\n-f 1\n")
    sb.write("/etc/audit/rules.d/30-stig.rules", stock + "\n")
    docker = [f"-w {b} -p wa -k docker" for b in sorted(BINARIES)]
    docker += [f"-w {p} -p wa -k docker" for p in ("/run/containerd", "/var/lib/docker", "/etc/docker",
                                                    "/lib/systemd/system/docker.service",
                                                    "/lib/systemd/system/docker.socket", "/etc/default/docker")]
    sb.write("/etc/audit/rules.d/40-docker.rules", "\n".join(docker) + "\n")


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    rows = cis.coverage()
    checked = [r for r in rows if r.checked]
    enforced = [r for r in rows if r.enforced]
    not_checked = [r for r in rows if not r.checked]

    root = Path(tempfile.mkdtemp(prefix="ngb-", dir="/tmp"))
    results: dict[str, list[Run]] = {}
    last: dict[str, Any] = {}
    try:
        sb = make_sandbox(root)
        populate(sb)
        cfg = {"icc": False, "live-restore": True, "no-new-privileges": True, "userland-proxy": False,
               "log-opts": {"max-size": "10m", "max-file": "3"}}
        with running_dockerd(sb, cfg, extra_args=["--default-ulimit", "nofile=1024:2048"]):
            base = [sys.executable, "-m", "nodeguard", "check", "--host-root", str(sb.root), "--format", "json"]
            commands = {
                "python -c pass (floor)": [sys.executable, "-c", "pass"],
                "nodeguard version": [sys.executable, "-m", "nodeguard", "version"],
                "check (every control)": base,
                "check --only host-audit --only host-layout": [*base, "--only", "host-audit", "--only",
                                                               "host-layout"],
                "check --only daemon-config --only daemon-files": [*base, "--only", "daemon-config", "--only",
                                                                   "daemon-files"],
            }
            for name, argv in commands.items():
                results[name] = [run_once(argv) for _ in range(args.runs)]
            last = json.loads(results["check (every control)"][-1].stdout)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"nodeguard check on a sandbox with a real dockerd, {args.runs} runs each (median / min / max)")
    print(f"{'command':48} {'wall s':>26} {'cpu s':>26} {'peak RSS MiB':>26}")
    for name, runs in results.items():
        print(f"{name:48} {stats([r.wall_s for r in runs])} {stats([r.cpu_s for r in runs])} "
              f"{stats([r.maxrss_mib for r in runs])}")
    print()
    print(f"{cis.BENCHMARK} sections 1-3: {len(rows)} ids; checked {len(checked)}, enforceable {len(enforced)}, "
          f"report-only {len(checked) - len(enforced)}, not checked {len(not_checked)}")
    for r in not_checked:
        print(f"  not checked {r.item.id}: {r.item.why_not}")
    print()
    print("this audit, per section (CIS ids): pass / fail / skip (not applicable here) / not checked")
    for section in cis.SECTIONS:
        c = last.get("cis", {}).get(section, {})
        print(f"  section {section}: {c.get('pass')} / {c.get('fail')} / {c.get('skip')} / {c.get('not_checked')}")
        skipped = [i for i, v in c.get("ids", {}).items() if v == "skip"]
        if skipped:
            print(f"    skipped: {', '.join(skipped)}")
    print(f"findings in the last run: {last.get('summary')}")


if __name__ == "__main__":
    main()
