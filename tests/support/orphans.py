"""Run a command and see what it leaves behind: every process it started, reaped or not."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

# A subreaper adopts the orphans of everything below it: a child that `cmd` left running, or
# exited without reaping, becomes the subreaper's child and is listed here.
_SUBREAPER = r"""
import ctypes, glob, json, os, subprocess, sys, time
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
started = time.monotonic()
proc = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)
took = time.monotonic() - started
children = []
for path in glob.glob("/proc/self/task/*/children"):
    with open(path) as f:
        children += [int(pid) for pid in f.read().split()]
for pid in children:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            print(pid, f.read().replace(b"\0", b" ").decode(errors="replace"), file=sys.stderr)
    except OSError:
        pass
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "took": took,
                  "left": children}))
"""


@dataclass
class Reaped:
    returncode: int
    stdout: str
    stderr: str
    took: float  # seconds from start to exit
    left: list[int]  # pids of the processes `argv` left behind (running or unreaped)


def run_and_count_orphans(argv: list[str], timeout: float = 60) -> Reaped:
    out = subprocess.run([sys.executable, "-c", _SUBREAPER, json.dumps(argv)], capture_output=True, text=True,
                         timeout=timeout, check=True)
    doc = json.loads(out.stdout)
    return Reaped(doc["rc"], doc["stdout"], doc["stderr"], doc["took"], doc["left"])
