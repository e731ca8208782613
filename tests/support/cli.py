"""Running the real `nodeguard` command line in a subprocess, as a user or a tool would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_nodeguard(*args: str, timeout: float = 60, columns: int = 200,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m nodeguard ARGS`; the caller's NODEGUARD_* settings are left out unless given in `env`."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NODEGUARD_") or k.startswith("NODEGUARD_TESTS")}
    # A colourless terminal of a known width: assertions read plain text, not escape codes.
    full.update({"COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb", **(env or {})})
    return subprocess.run([sys.executable, "-m", "nodeguard", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=full)


def check_json(host_root: Path | str, *args: str) -> tuple[int, dict[str, Any]]:
    """`nodeguard check --format json` on a host root: (exit code, parsed report)."""
    proc = run_nodeguard("check", "--host-root", str(host_root), "--format", "json", *args)
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report
