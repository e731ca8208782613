"""A tiny agent stand-in for the event pipeline's crash tests: emits numbered drift events through
`build_pipeline` (configured from the environment, as `nodeguard run` is) and prints each event's
id once `emit()` has returned, i.e. once the event is durable. SIGTERM closes the pipeline cleanly.

    python -m tests.support.events_driver --state-dir DIR --host-root DIR --count N --tag T [--hold]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from nodeguard.events.model import Event, EventName
from nodeguard.events.options import ExportOptions
from nodeguard.events.pipeline import build_pipeline


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--host-root", type=Path, required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--hold", action="store_true", help="after emitting, wait for SIGTERM")
    args = ap.parse_args()

    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    pipeline = build_pipeline(ExportOptions.from_env(host_root=args.host_root), args.state_dir)
    try:
        for i in range(args.count):
            if stop.is_set():
                break
            event = Event(EventName.DRIFT_DETECTED, "ERROR", f"{args.tag}: socket mode drift #{i}", {
                "nodeguard.control": "socket", "nodeguard.rule": "socket-mode", "nodeguard.outcome": "detected",
                "nodeguard.mode": "observe", "nodeguard.observed": f"06{i:02d}", "nodeguard.expected": "0660",
                "nodeguard.subject": f"{args.tag}-{i}", "file.path": "/var/run/docker.sock",
            })
            pipeline.emit(event)
            sys.stdout.write(f"EMITTED {event.id}\n")
            sys.stdout.flush()
        sys.stdout.write("DONE\n")
        sys.stdout.flush()
        if args.hold:
            stop.wait()
    finally:
        pipeline.close()
    sys.stdout.write("CLOSED\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
