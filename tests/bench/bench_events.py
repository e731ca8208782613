"""Event pipeline benchmark: throughput, added latency, spool size, RSS during an outage.

    .venv/bin/python -m tests.bench.bench_events [--quick]

1. Sustained events/s: one thread emits drift events as fast as `emit()` returns (each one
   committed to the spool before it returns) for a fixed time, with a local OTLP receiver
   (gRPC and HTTP/protobuf) draining; reported as emitted/s and delivered/s. Both spool
   durability settings are measured: FULL (the default, fsync per event) and NORMAL.
2. Added latency: one event every 20 ms; from the start of `emit()` to the receiver's decode
   of the request that carried it (same process, same monotonic clock): median and p99; and
   how long `emit()` itself blocks the caller (the engine's reconciler) for the durable commit.
3. Spool bytes per 10,000 typical drift events waiting (database + WAL, after a checkpoint).
4. RSS of a real exporting process (tests/support/events_driver.py, the pipeline of
   `nodeguard run`) while 100,000 events wait in its spool and the collector is down; the
   spool is pre-filled in bulk (`Spool.append_many`) to keep the run short.
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

from nodeguard.events.model import Event, EventName
from nodeguard.events.options import ExportOptions, OtlpProtocol
from nodeguard.events.pipeline import SPOOL_FOLDER, EventPipeline, build_pipeline
from nodeguard.events.spool import SPOOL_FILE, Spool
from tests.support.otlp_receiver import OtlpReceiver, free_port, otlp_receiver

REPO = Path(__file__).resolve().parents[2]


def drift(i: int) -> Event:
    """Shaped like the engine's drift events (event_for_finding), ~600 bytes as JSON."""
    return Event(EventName.DRIFT_DETECTED, "ERROR", f"docker.sock is 0666: every local user is root (#{i})", {
        "nodeguard.control": "socket", "nodeguard.rule": "socket-mode", "nodeguard.outcome": "detected",
        "nodeguard.mode": "enforce", "nodeguard.observed": "0666", "nodeguard.expected": "0660",
        "nodeguard.severity": "high", "nodeguard.cis": "3.16", "file.path": "/var/run/docker.sock",
        "nodeguard.subject": f"sock-{i}",
    })


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def make_pipeline(rx: OtlpReceiver, state: Path, synchronous: str) -> EventPipeline:
    opts = ExportOptions(otlp_endpoint=rx.endpoint, otlp_protocol=OtlpProtocol(rx.otel_protocol), metrics=False,
                         aggregate_seconds=0)
    pipeline = build_pipeline(opts, state)
    if synchronous != "FULL":  # what NORMAL would give, for comparison (not a user setting)
        pipeline.spool.synchronous = synchronous
        pipeline.spool._db.execute(f"PRAGMA synchronous={synchronous}")
    return pipeline


def sustained(protocol: str, synchronous: str, seconds: float) -> tuple[float, float]:
    state = Path(tempfile.mkdtemp(prefix="ng-bench-"))
    try:
        with otlp_receiver(protocol) as rx:
            pipeline = make_pipeline(rx, state, synchronous)
            try:
                n, t0 = 0, time.monotonic()
                while time.monotonic() - t0 < seconds:
                    pipeline.emit(drift(n))
                    n += 1
                emitted_in = time.monotonic() - t0
                rx.wait_for(lambda r: len(r.logs) >= n, 120)
                delivered_in = time.monotonic() - t0
            finally:
                pipeline.close()
            return n / emitted_in, len(rx.logs) / delivered_in
    finally:
        shutil.rmtree(state, ignore_errors=True)


def latency(protocol: str, trials: int) -> tuple[float, float, float, float]:
    state = Path(tempfile.mkdtemp(prefix="ng-bench-"))
    try:
        with otlp_receiver(protocol) as rx:
            pipeline = make_pipeline(rx, state, "FULL")
            started: dict[str, float] = {}
            emit_ms: list[float] = []
            try:
                for i in range(trials):
                    ev = drift(i)
                    started[ev.id] = time.monotonic()
                    pipeline.emit(ev)
                    emit_ms.append((time.monotonic() - started[ev.id]) * 1000)
                    time.sleep(0.02)
                rx.wait_for(lambda r: len(r.logs) >= trials, 60)
            finally:
                pipeline.close()
            lat = [(rec.received_at - started[rec.attributes["log.record.uid"]]) * 1000 for rec in rx.snapshot()]
            return statistics.median(lat), pct(lat, 99), statistics.median(emit_ms), pct(emit_ms, 99)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def spool_size(count: int) -> tuple[int, int]:
    state = Path(tempfile.mkdtemp(prefix="ng-bench-"))
    try:
        spool = Spool(state, ["otlp"], max_bytes=1 << 34)
        for start in range(0, count, 1000):
            spool.append_many([drift(i) for i in range(start, min(count, start + 1000))])
        payload = spool.bytes_used
        spool.close()  # checkpoints the WAL into the database
        on_disk = sum(p.stat().st_size for p in state.iterdir() if p.name.startswith(SPOOL_FILE))
        return on_disk, payload
    finally:
        shutil.rmtree(state, ignore_errors=True)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def outage_rss(waiting: int, settle: float) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(RSS, peak) of the exporting process with `waiting` events spooled, and with none; spool depth after."""
    results = []
    depth_after = 0
    for prefill in (waiting, 0):
        state = Path(tempfile.mkdtemp(prefix="ng-bench-"))
        try:
            if prefill:
                spool = Spool(state / SPOOL_FOLDER, ["otlp"], max_bytes=1 << 34)
                for start in range(0, prefill, 5000):
                    spool.append_many([drift(i) for i in range(start, min(prefill, start + 5000))])
                spool.close()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NODEGUARD_"))}
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nobody listens
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
                        "OTEL_METRICS_EXPORTER": "none", "NODEGUARD_EXPORT_RETRY_MAX_SECONDS": "1",
                        "NODEGUARD_SPOOL_MAX_BYTES": str(1 << 34), "PYTHONPATH": str(REPO)})
            proc = subprocess.Popen([sys.executable, "-m", "tests.support.events_driver", "--state-dir", str(state),
                                     "--host-root", "/", "--count", "0", "--hold"], env=env, cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                assert proc.stdout is not None
                while proc.stdout.readline().strip() not in ("DONE", ""):
                    pass  # the pipeline is built and its exporter is running
                time.sleep(settle)  # several failed delivery rounds, each reading a batch from the spool
                results.append(rss_kib(proc.pid))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            if prefill:
                spool = Spool(state / SPOOL_FOLDER, ["otlp"], max_bytes=1 << 34)
                depth_after = spool.depth("otlp")
                spool.close()
        finally:
            shutil.rmtree(state, ignore_errors=True)
    return results[0], results[1], depth_after


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the benchmark)")
    args = ap.parse_args()
    seconds = 2.0 if args.quick else 8.0
    trials = 60 if args.quick else 300

    rows: list[tuple[str, str]] = []
    for protocol in ("grpc", "http"):
        for sync in ("FULL", "NORMAL"):
            emitted, delivered = sustained(protocol, sync, seconds)
            rows.append((f"sustained, OTLP {protocol}, spool synchronous={sync}",
                         f"{emitted:,.0f} emitted/s, {delivered:,.0f} delivered/s"))
    for protocol in ("grpc", "http"):
        med, p99, emit_med, emit_p99 = latency(protocol, trials)
        rows.append((f"added latency emit -> receiver, OTLP {protocol} ({trials} events)",
                     f"median {med:.2f} ms, p99 {p99:.2f} ms"))
        rows.append((f"  of which emit() itself (durable spool commit), {protocol}",
                     f"median {emit_med:.2f} ms, p99 {emit_p99:.2f} ms"))
    on_disk, payload = spool_size(10_000)
    rows.append(("spool size, 10,000 waiting events",
                 f"{on_disk / 1e6:.2f} MB on disk ({payload / 1e6:.2f} MB payload, {on_disk / 10_000:.0f} B/event)"))
    waiting = 20_000 if args.quick else 100_000
    (rss, peak), (rss0, peak0), depth = outage_rss(waiting, 4.0 if args.quick else 8.0)
    rows.append((f"RSS, {waiting:,} events waiting, collector down",
                 f"{rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB); empty spool: {rss0 / 1024:.1f} MiB "
                 f"(peak {peak0 / 1024:.1f} MiB); still spooled after SIGTERM: {depth:,}"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  result")
    print(f"{'-' * width}  {'-' * 60}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
