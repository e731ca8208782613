"""Cost of the runtime checks on a daemon with 100 running containers, and the watcher's delay.

    .venv/bin/python -m tests.bench.bench_runtime [--containers 100] [--runs 5] [--watch-runs 5]

Needs root, dockerd and busybox-static (a real daemon on a sandbox host root, in its own network
namespace, like the tests). Prints two tables:

1. one runtime pass (observe + evaluate) — wall time and the HTTP requests sent to the daemon,
   counted by a response hook on the client's requests session;
2. from `docker run -d -v <socket>` (the CLI, as an operator would type it) to the engine trigger
   from the events watcher, and to the finding produced by the runtime pass that trigger asks for.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nodeguard.controls.base import Context
from nodeguard.controls.runtime import RuntimeControl
from nodeguard.docker_api import CallCounter
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy
from nodeguard.structs import Status
from nodeguard.watch_docker import DockerEventsWatcher
from tests.support.dockerd import import_busybox, running_dockerd
from tests.support.sandbox import make_sandbox


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} {min(values) * 1000:8.1f} {max(values) * 1000:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--watch-runs", type=int, default=5)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    sb = make_sandbox(root)
    try:
        with running_dockerd(sb) as d:
            image = import_busybox(d)
            api = d.client().api
            t = time.monotonic()

            def start(i: int) -> None:
                # No network: docker0 of the test daemon is a /26, and addresses are not what is measured.
                c = api.create_container(image, command=["sleep", "3600"], name=f"bench-{i:03d}",
                                         host_config=api.create_host_config(network_mode="none"))
                api.start(c["Id"])

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(start, range(args.containers)))
            running = len(api.containers(filters={"status": "running"}))
            print(f"started {running} running containers in {time.monotonic() - t:.1f} s "
                  f"(dockerd {d.info()['ServerVersion']})\n")

            policy = load_policy()
            control = RuntimeControl()
            walls: list[float] = []
            counters: list[CallCounter] = []
            findings = 0
            for _ in range(args.runs):
                ctx = Context(HostRoot(sb.root), policy)
                counter = CallCounter()
                t = time.monotonic()
                found = control.evaluate(control.observe(ctx, counter=counter), policy)
                walls.append(time.monotonic() - t)
                counters.append(counter)
                findings = len(found)
            print(f"runtime pass over {running} running containers ({args.runs} runs)")
            print(f"{'':32} {'median':>8} {'min':>8} {'max':>8}")
            print(f"{'wall time (ms)':32} {_ms(walls)}")
            print(f"{'HTTP requests to the daemon':32} {counters[-1].calls:8d}")
            for path, n in sorted(counters[-1].by_path.items()):
                print(f"{'  ' + path:32} {n:8d}")
            print(f"{'findings':32} {findings:8d}\n")

            # -- docker run -> trigger -> finding ------------------------------------------------
            os.symlink("../run/docker.sock", sb.path("/srv-docker.sock"))
            sock_src = str(sb.path("/srv-docker.sock"))
            triggers: queue.Queue[tuple[float, str]] = queue.Queue()
            watcher = DockerEventsWatcher(HostRoot(sb.root), policy)
            watcher.start(lambda control_name, reason: triggers.put((time.monotonic(), reason)))
            to_trigger: list[float] = []
            to_finding: list[float] = []
            try:
                if not watcher.connected.wait(20):
                    raise SystemExit(f"watcher did not connect: {watcher.last_error}")
                triggers.get(timeout=10)  # the initial resync
                for i in range(args.watch_runs):
                    name = f"sock-{i}"
                    t0 = time.monotonic()
                    proc = subprocess.Popen(["docker", "-H", d.url, "run", "-d", "--name", name, "--network", "none",
                                             "-v", f"{sock_src}:/var/run/docker.sock", image, "sleep", "3600"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    while True:
                        when, reason = triggers.get(timeout=30)
                        if name in reason:
                            break
                    to_trigger.append(when - t0)
                    found = control.evaluate(control.observe(Context(HostRoot(sb.root), policy)), policy)
                    if not any(f.rule == "docker-socket-mount" and f.subject == name and f.status is Status.FAIL
                               for f in found):
                        raise SystemExit(f"{name} was not reported")
                    to_finding.append(time.monotonic() - t0)
                    proc.wait(timeout=60)
                    while not triggers.empty():  # the start event of the same container
                        triggers.get_nowait()
            finally:
                watcher.stop()
            print(f"docker run -v <socket> -> finding, through the events watcher ({args.watch_runs} runs)")
            print(f"{'':32} {'median':>8} {'min':>8} {'max':>8}")
            print(f"{'to trigger (create event) (ms)':32} {_ms(to_trigger)}")
            print(f"{'to finding (+ one pass) (ms)':32} {_ms(to_finding)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
