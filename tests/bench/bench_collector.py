"""The agent against hostile OTLP collectors: SIGTERM time, peak RSS, exports per minute.

    sudo .venv/bin/python -m tests.bench.bench_collector [--trials 3] [--minute 60] [--quick]

1. SIGTERM time and peak RSS: `nodeguard run --mode observe` in a network namespace of its own,
   its collector (tests/support/otlp_receiver.py, a separate process) beside it in that namespace,
   answering in one hostile way: hang, trickle (200, `Content-Length: 100 MB`, then 1 byte every
   2 s), flood (200 with a 1.5 GiB body generated as it is sent), close mid-body, 429/500/503 with
   `Retry-After: 30`, partial_success; over gRPC: hang, UNAVAILABLE, a 16 MiB response. Defaults
   everywhere (10 s request deadline), metrics every second so both signals meet the collector.
   Once the agent has made its first requests, SIGTERM; the time is from the signal to the
   process's exit. Peak RSS is the agent's VmHWM just before the signal. The floor of both: the
   same agent with a good collector, in the same run.
2. Exports per minute against a trickling collector: the pipeline of `nodeguard run` (default
   deadline and back-off) with events waiting, for `--minute` seconds; beside it the bound the
   deadline alone sets (60 / deadline) and the same pipeline against a good collector.

Prints a table; asserts nothing. The machine may be shared with other work: see the floors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodeguard.events.model import EventName, lifecycle_event
from nodeguard.events.options import ExportOptions
from nodeguard.events.otlp import DEFAULT_TIMEOUT
from nodeguard.events.pipeline import build_pipeline
from tests.support.agent import running_agent
from tests.support.netns import netns, ns_process, wait_listening
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.sandbox import make_sandbox

CASES = [("http", "ok"), ("http", "hang"), ("http", "trickle"), ("http", "flood"), ("http", "close"),
         ("http", "429"), ("http", "500"), ("http", "partial"), ("grpc", "ok"), ("grpc", "hang"), ("grpc", "503"),
         ("grpc", "flood")]


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def attempts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def one_sigterm(protocol: str, mode: str, settle: float) -> tuple[float, float]:
    """(seconds from SIGTERM to exit, peak RSS MiB) of one agent run against one collector."""
    work = Path(tempfile.mkdtemp(prefix="ng-bc-", dir="/tmp"))
    port = 4317 if protocol == "grpc" else 4318
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NODEGUARD_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if protocol == "grpc" else "http/protobuf",
                "OTEL_METRIC_EXPORT_INTERVAL": "1000"})
    seen = work / "collector.jsonl"
    try:
        sandbox = make_sandbox(work / "root")
        with netns("bench") as ns:
            argv = [sys.executable, "-m", "tests.support.otlp_receiver", "--protocol", protocol, "--port", str(port),
                    "--mode", mode, "--retry-after", "30", "--out", str(seen)]
            with ns_process(ns, argv):
                wait_listening(ns, port)
                with running_agent(sandbox.root, work / "state", "--mode", "observe", env=env, netns=ns) as agent:
                    deadline = time.monotonic() + 30
                    while attempts(seen) < 1 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(settle)  # a few more requests (a flood is read, refused, read again)
                    peak = vm_hwm_mib(agent.proc.pid)
                    t0 = time.monotonic()
                    agent.proc.send_signal(signal.SIGTERM)
                    try:
                        agent.proc.wait(60)
                    except subprocess.TimeoutExpired:
                        agent.proc.kill()
                        agent.proc.wait(10)
                    return time.monotonic() - t0, peak
    finally:
        shutil.rmtree(work, ignore_errors=True)


def exports_per_minute(mode: str, seconds: float) -> float:
    """Requests a collector in `mode` gets from the default pipeline in `seconds`, per minute."""
    work = Path(tempfile.mkdtemp(prefix="ng-bc-", dir="/tmp"))
    rx = OtlpReceiver("http").start()
    rx.mode = mode
    try:
        opts = ExportOptions(otlp_endpoint=rx.endpoint, metrics=False, aggregate_seconds=0)
        pipeline = build_pipeline(opts, work / "state")
        try:
            t0 = time.monotonic()
            # A steady trickle of events (one per second): against a good collector, each is one request.
            while time.monotonic() - t0 < seconds:
                pipeline.emit(lifecycle_event(EventName.AGENT_STARTED, "bench"))
                time.sleep(1.0)
            count = len(rx.attempts)
        finally:
            pipeline.close()
        return count * 60 / seconds
    finally:
        rx.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--minute", type=float, default=60.0, help="seconds of the exports-per-minute run")
    ap.add_argument("--quick", action="store_true", help="one trial, 20 s runs (smoke test of the benchmark)")
    args = ap.parse_args()
    trials, minute = (1, 20.0) if args.quick else (args.trials, args.minute)

    rows: list[tuple[str, str]] = []
    for protocol, mode in CASES:
        runs = [one_sigterm(protocol, mode, settle=3.0) for _ in range(trials)]
        times, peaks = [r[0] for r in runs], [r[1] for r in runs]
        label = "good collector (floor)" if mode == "ok" else f"{mode} collector"
        rows.append((f"SIGTERM -> exit, OTLP {protocol}, {label}",
                     f"median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
                     f"peak RSS max {max(peaks):.0f} MiB ({trials} runs)"))
    good = exports_per_minute("ok", minute)
    trickle = exports_per_minute("trickle", minute)
    rows.append((f"requests/min, good collector, 1 event/s ({minute:.0f} s)", f"{good:.1f}"))
    rows.append((f"requests/min, trickling collector ({minute:.0f} s)",
                 f"{trickle:.1f} (bound from the {DEFAULT_TIMEOUT:g} s deadline alone: {60 / DEFAULT_TIMEOUT:.1f})"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 60}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
