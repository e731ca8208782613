"""What the agent keeps across restarts, under --state-dir.

- `findings.json`: the last status of every finding, so a drift that happened while the agent was
  down (or being upgraded) is reported at start as what it was, not silently adopted.
- `lastgood/`: the last valid copy of files the agent may have to restore (daemon.json).
- `quarantine/`: every file the agent overwrote, as it was before, so enforcing never loses an
  admin's edit.
Every write is atomic (HostRoot.write_atomic), so a SIGKILL leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nodeguard.host import HostRoot
from nodeguard.structs import JSONValue

FORMAT_VERSION = 1
# Quarantined copies beyond this many per file are pruned oldest first: bounded disk use even when
# a config-management tool fights the agent all day.
QUARANTINE_KEEP = 50


@dataclass
class KnownFinding:
    status: str
    observed: JSONValue
    since: float


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("lastgood", "quarantine"):
            (self.dir / sub).mkdir(exist_ok=True, mode=0o700)
        self._io = HostRoot(self.dir)

    # -- findings ----------------------------------------------------------------------------

    def load_findings(self) -> dict[str, KnownFinding] | None:
        """None when the agent never ran here (no baseline), else the last known statuses."""
        try:
            data = json.loads(self._io.read_bytes("/findings.json"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A corrupt state file is no baseline; it is kept aside for a human.
            self.quarantine("findings.json", (self.dir / "findings.json").read_bytes())
            return None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            return None
        out = {}
        for key, value in (data.get("findings") or {}).items():
            try:
                out[key] = KnownFinding(str(value["status"]), value.get("observed"), float(value["since"]))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def save_findings(self, known: dict[str, KnownFinding]) -> None:
        payload = {"version": FORMAT_VERSION, "saved": time.time(),
                   "findings": {k: asdict(v) for k, v in sorted(known.items())}}
        self._io.write_atomic("/findings.json", json.dumps(payload, default=str).encode(), default_mode=0o600)

    # -- files kept aside --------------------------------------------------------------------

    def save_last_good(self, name: str, data: bytes) -> None:
        path = f"/lastgood/{name}"
        try:
            if self._io.read_bytes(path) == data:
                return
        except FileNotFoundError:
            pass
        self._io.write_atomic(path, data, default_mode=0o600)

    def last_good(self, name: str) -> bytes | None:
        try:
            return self._io.read_bytes(f"/lastgood/{name}")
        except FileNotFoundError:
            return None

    def quarantine(self, name: str, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()[:12]
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        fname = f"{name}.{stamp}.{digest}"
        self._io.write_atomic(f"/quarantine/{fname}", data, default_mode=0o600)
        self._prune(name)
        return self.dir / "quarantine" / fname

    def _prune(self, name: str) -> None:
        folder = self.dir / "quarantine"
        copies = sorted((p for p in folder.iterdir() if p.name.startswith(name + ".")),
                        key=lambda p: p.stat().st_mtime)
        for old in copies[:-QUARANTINE_KEEP]:
            old.unlink(missing_ok=True)

    def write_json(self, name: str, value: Any) -> None:
        self._io.write_atomic(f"/{name}", json.dumps(value).encode(), default_mode=0o600)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
