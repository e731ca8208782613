"""What deploying nodeguard costs a node: the probe, the cluster view, the chart, optionally the image.

    .venv/bin/python -m tests.bench.bench_deploy [--probes 20] [--trials 200] [--image]

- probe CPU: one exec probe as the kubelet runs it, `python -m nodeguard.health` (what the chart
  uses) beside `nodeguard health` (the CLI); user+sys CPU of the child from its rusage. The
  kubelet runs liveness and readiness every period on every node.
- KubeSink.emit: the time the engine's thread spends handing one event to the cluster view
  (10,000 events while the worker talks to the API), and the time from a drift to the Node
  condition PATCH arriving at a local API server (the stand-in of tests/support/kube_api.py).
- chart: one in-process render and one lint with Helm v4's engine (helm-python-sdk).
- /metrics: one scrape of the agent's Prometheus endpoint (`--metrics-bind-address`) over loopback
  HTTP with 200 open drifts in the gauge, beside the floor: the same prometheus_client server
  serving an empty registry, in the same run.
- --image (root, dockerd, ~2-3 min): the image test's offline `docker build` and the image size.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nodeguard.events.model import Event, EventName
from nodeguard.health import write_heartbeat


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _row(name: str, values: list[float], unit: str) -> None:
    print(f"| {name} | {len(values)} | {statistics.median(values):.3f} {unit} | {_pct(values, 99):.3f} {unit} |")


def probe_cpu(runs: int) -> None:
    state = tempfile.mkdtemp(prefix="ngbench-")
    write_heartbeat(state)
    venv_bin = Path(sys.executable).parent
    commands = {
        "probe `python -m nodeguard.health` CPU": [sys.executable, "-m", "nodeguard.health", "--state-dir", state],
        "CLI `nodeguard health` CPU": [str(venv_bin / "nodeguard"), "health", "--state-dir", state],
    }
    for name, argv in commands.items():
        cpu: list[float] = []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(argv, check=True, capture_output=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
        _row(name, cpu, "ms")
    os.unlink(Path(state) / "heartbeat")
    os.rmdir(state)


def kube_sink(trials: int) -> None:
    from kubernetes import client

    from nodeguard.events.kube import KubeSink
    from tests.support.kube_api import NODE, FakeApi, node_object, serving

    api = FakeApi(node_object())
    api.gate.set()
    with serving(api) as server:
        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
        sink = KubeSink(client.CoreV1Api(client.ApiClient(cfg)), NODE, queue_size=1000)
        sink.flush()
        emit_us: list[float] = []
        for i in range(10_000):
            event = Event(EventName.DRIFT_DETECTED, "ERROR", "x",
                          {"nodeguard.control": "docker-group", "nodeguard.rule": "member-allowed",
                           "nodeguard.subject": f"u{i % 50}"})
            t0 = time.perf_counter()
            sink.emit(event)
            emit_us.append((time.perf_counter() - t0) * 1e6)
        sink.flush(timeout=120)
        _row("KubeSink.emit (engine thread)", emit_us, "µs")
        print(f"|   events dropped at queue size 1000 while the API answered | {sink.dropped} | | |")

        latency_ms: list[float] = []
        for i in range(trials):
            name = EventName.DRIFT_DETECTED if i % 2 == 0 else EventName.DRIFT_RESOLVED
            with api.lock:
                seen = len(api.requests)
            arrived = threading.Event()

            def watch(start: int = seen, done: threading.Event = arrived) -> None:
                while not done.is_set():
                    with api.lock:
                        if any(m == "PATCH" and p.endswith("/status") for m, p, _, _ in api.requests[start:]):
                            done.set()
                            return
                    time.sleep(0.0002)

            watcher = threading.Thread(target=watch)
            watcher.start()
            t0 = time.perf_counter()
            sink.emit(Event(name, "ERROR", "x", {"nodeguard.control": "socket", "nodeguard.rule": "socket-mode"}))
            arrived.wait(10)
            latency_ms.append((time.perf_counter() - t0) * 1000)
            watcher.join()
        sink.close()
        _row("drift -> Node condition PATCH received", latency_ms, "ms")


def chart(runs: int) -> None:
    import helm_python as helm

    from tests.support.chart import CHART, render

    render_ms, lint_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        render()
        render_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        helm.lint(CHART, strict=True)
        lint_ms.append((time.perf_counter() - t0) * 1000)
    _row("helm render (in-process)", render_ms, "ms")
    _row("helm lint --strict (in-process)", lint_ms, "ms")


def metrics_scrape(runs: int) -> None:
    import urllib.request

    from prometheus_client import CollectorRegistry, start_http_server

    from nodeguard.events import metrics as metrics_mod
    from nodeguard.events.otlp import make_resource
    from nodeguard.events.prometheus import BindAddress, PrometheusEndpoint

    endpoint = PrometheusEndpoint(BindAddress("127.0.0.1", 0))  # port 0: the kernel picks (bench only)
    m = metrics_mod.install(metrics_mod.make_provider(make_resource({"service.name": "nodeguard"}),
                                                      [endpoint.reader]))
    drifts = [("docker-group", "member-allowed", "high")] * 150 + [("socket", "socket-mode", "critical")] * 50
    metrics_mod.set_open_drifts_source(lambda: drifts)
    for i in range(1000):
        m.record_reconcile(("socket", "docker-group", "daemon-config")[i % 3], 0.001 * (i % 50))
    endpoint.start()
    floor_server, _thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        for name, port in (("/metrics floor: empty registry", floor_server.server_address[1]),
                           ("/metrics scrape: 200 open drifts", endpoint.port)):
            took: list[float] = []
            for _ in range(runs):
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    r.read()
                took.append((time.perf_counter() - t0) * 1000)
            _row(name, took, "ms")
    finally:
        floor_server.shutdown()
        floor_server.server_close()
        endpoint.close()
        metrics_mod.set_open_drifts_source(None)
        metrics_mod.uninstall(m)
        m.shutdown(1.0)


def image() -> None:
    import shutil

    from tests.integration.test_image import BASE_TAG, IMAGE_TAG, docker_build
    from tests.support.dockerd import running_dockerd
    from tests.support.image import build_context, build_python_rootfs, build_wheelhouse, tar_rootfs
    from tests.support.sandbox import make_sandbox

    work = Path(tempfile.mkdtemp(prefix="ngimg-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        tar = tar_rootfs(build_python_rootfs(work / "rootfs"), work / "rootfs.tar")
        build_wheelhouse(work / "wheelhouse")
        context = build_context(work / "context", work / "wheelhouse")
        prep = time.perf_counter() - t0
        (work / "sb").mkdir()
        with running_dockerd(make_sandbox(work / "sb")) as d:
            d.cli("import", str(tar), BASE_TAG)
            t0 = time.perf_counter()
            build = docker_build(d, context)
            took = time.perf_counter() - t0
            assert build.returncode == 0, build.stderr[-2000:]
            size = int(d.cli("image", "inspect", "--format", "{{.Size}}", IMAGE_TAG).stdout)
            base = int(d.cli("image", "inspect", "--format", "{{.Size}}", BASE_TAG).stdout)
        print(f"| base rootfs + wheelhouse + context | 1 | {prep:.1f} s | |")
        print(f"| docker build (offline, PIP_COMPILE=0) | 1 | {took:.1f} s | |")
        print(f"| image size (base {base / 2**20:.0f} MiB) | 1 | {size / 2**20:.0f} MiB | |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--image", action="store_true", help="also build the image (root, dockerd)")
    args = parser.parse_args()
    print("| what | n | median | p99 |")
    print("|---|---|---|---|")
    probe_cpu(args.probes)
    kube_sink(args.trials)
    chart(10)
    metrics_scrape(args.probes * 5)
    if args.image:
        image()


if __name__ == "__main__":
    main()
