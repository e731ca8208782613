"""The agent's heartbeat: a file under the state dir that the engine loop rewrites while it is healthy.

Kubernetes probes the pod with `nodeguard health` (an exec probe: no port is opened on the node,
which shares its network with the pod). A heartbeat older than `max_age` means the engine loop is
stuck or dead, whatever the process table says.

The engine calls `write_heartbeat(state_dir)` at least once per resync period (and whenever it is
idle); the probe's `--max-age` must be larger than that period.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nodeguard.exit_codes import ExitCode
from nodeguard.host.atomic import replace_path
from nodeguard.settings import STATE_DIR

HEARTBEAT_FILE = "heartbeat"
DEFAULT_MAX_AGE = 180.0  # seconds: three default resync periods


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str
    age: float | None = None  # seconds since the last heartbeat; None when there is none


def heartbeat_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / HEARTBEAT_FILE


def write_heartbeat(state_dir: str | os.PathLike[str], *, now: float | None = None) -> None:
    """Record that the engine is alive: a temporary file renamed over the heartbeat (never half-written).

    No fsync: a heartbeat lost in a crash only makes the probe fail sooner, which is its job.
    """
    stamp = time.time() if now is None else now
    record = json.dumps({"time": stamp, "pid": os.getpid()}) + "\n"
    replace_path(heartbeat_path(state_dir), record.encode(), mode=0o644, durable=False)


def check_heartbeat(state_dir: str | os.PathLike[str], max_age: float = DEFAULT_MAX_AGE, *,
                    now: float | None = None) -> Health:
    """Healthy when the heartbeat exists and is at most `max_age` seconds old."""
    path = heartbeat_path(state_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        stamp = float(record["time"])
    except FileNotFoundError:
        return Health(False, f"no heartbeat at {path}: the agent has not completed a pass yet")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Health(False, f"heartbeat {path} unreadable: {exc}")
    age = (time.time() if now is None else now) - stamp
    if age > max_age:
        return Health(False, f"heartbeat is {age:.0f}s old (limit {max_age:.0f}s): the engine loop is stuck", age)
    return Health(True, f"heartbeat {max(age, 0.0):.1f}s old", age)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodeguard.health --state-dir DIR --max-age S`: the exec probe, standard library only.

    The same check as `nodeguard health`, without loading the CLI and every control: the kubelet
    runs it every period on every node, so its cost is paid fleet-wide.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nodeguard.health", description=main.__doc__)
    parser.add_argument("--state-dir")  # the flag, else NODEGUARD_STATE_DIR, else the default (nodeguard.settings)
    parser.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE)
    args = parser.parse_args(argv)
    try:
        state_dir = STATE_DIR.resolve(args.state_dir)
    except ValueError as exc:
        parser.error(str(exc))
    result = check_heartbeat(state_dir, args.max_age)
    print(result.message)
    return ExitCode.OK if result.ok else ExitCode.FAILED


if __name__ == "__main__":
    raise SystemExit(main())
