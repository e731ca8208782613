"""Cost of one in-root walk per path: openat2 (RESOLVE_IN_ROOT) vs the userspace walker.

    .venv/bin/python -m tests.bench.bench_walker [--loops 2000] [--runs 15]

On a sandbox host root (tests/support/sandbox.py), for a few host paths, the time of one
`walker.open(root_fd, path)` + close, of one whole `HostRoot.stat(path)` (which also opens the
root and fstats) and of one `HostRoot.resolve(path)` (the folder walked, the last name looked at
by HostRoot, the name read back from /proc/self/fd), on each walker. The floor is measured in the same run: a plain
`os.open(<root>/<path>, O_PATH)` + close, the kernel's own walk with no in-root guarantee. Each
figure is the median over `--runs` runs of the mean over `--loops` calls, in microseconds. The
machine is shared: figures under load are noisy, read them as ratios to the floor.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nodeguard.host import HostRoot
from nodeguard.host import walk as host_walk
from tests.support.sandbox import make_sandbox

# host path -> what it exercises
PATHS = {
    "/etc/docker/daemon.json": "3 names, no symlink",
    "/var/run/docker.sock": "an absolute symlink (/var/run -> /run)",
    "/a/b/c/d/e/f/g/h/file": "9 names",
    "/l0": "a chain of 10 symlinks",
}


def build(root: Path) -> None:
    sb = make_sandbox(root)
    sb.write("/etc/docker/daemon.json", "{}\n")
    sb.write("/run/docker.sock", "")
    sb.write("/a/b/c/d/e/f/g/h/file", "x")
    for i in range(10):
        os.symlink(f"l{i + 1}" if i < 9 else "/etc/docker/daemon.json", sb.path(f"/l{i}"))


def floor(real: str) -> None:
    os.close(os.open(real, os.O_PATH | os.O_CLOEXEC))


def walk(walker: host_walk.Walker, root_fd: int, path: str) -> None:
    os.close(walker.open(root_fd, path, follow_last=True))


def per_call_us(fns: list[Callable[[], object]], loops: int, runs: int) -> list[float]:
    """Median over `runs` of the mean µs per call of each function; the functions take turns within
    each run, so that a burst of load on the shared machine hits every column alike."""
    means: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            means[i].append((time.perf_counter_ns() - t0) / loops / 1000)
    return [statistics.median(m) for m in means]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ng-walk-", dir="/tmp"))
    try:
        build(root)
        walkers: dict[str, host_walk.Walker] = {"userspace": host_walk.UserspaceWalker()}
        if host_walk.openat2_available():
            walkers["openat2"] = host_walk.Openat2Walker()
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        print(f"kernel {os.uname().release}; openat2 available: {host_walk.openat2_available()}; "
              f"{args.loops} calls x {args.runs} runs; microseconds per call (median of the runs' means)")
        cols = ["floor os.open", *[f"{n} open" for n in walkers], *[f"{n} HostRoot.stat" for n in walkers],
                *[f"{n} HostRoot.resolve" for n in walkers]]
        print(f"{'path':28} {'':40} " + " ".join(f"{c:>22}" for c in cols))
        for path, what in PATHS.items():
            # The floor walks the already-resolved name: the kernel's walk with no in-root guarantee.
            real = str(HostRoot(root).resolve(path))
            fns: list[Callable[[], object]] = [functools.partial(floor, real)]
            fns += [functools.partial(walk, w, root_fd, path) for w in walkers.values()]
            fns += [functools.partial(HostRoot(root, walker=w).stat, path) for w in walkers.values()]
            fns += [functools.partial(HostRoot(root, walker=w).resolve, path) for w in walkers.values()]
            row = per_call_us(fns, args.loops, args.runs)
            print(f"{path:28} {what:40} " + " ".join(f"{v:>22.2f}" for v in row))
        os.close(root_fd)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
