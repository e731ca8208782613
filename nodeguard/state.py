"""What the agent keeps across restarts, under --state-dir.

- `findings.json`: the last status of every finding, so a drift that happened while the agent was
  down (or being upgraded) is reported at start as what it was, not silently adopted.
- `lastgood/`: the last valid copy of files the agent may have to restore (daemon.json).
- `quarantine/`: every file the agent overwrote, as it was before, so enforcing never loses an
  admin's edit.
Every write is atomic (HostRoot.write_atomic), so a SIGKILL leaves the old file or the new one.

Nothing here is opened through a link or waits on a special file: a `findings.json` that is a
FIFO, a device, a directory or a symlink, or a `lastgood/`/`quarantine/` that is not a real folder,
is moved aside (`<name>.not-a-file-<time>`), reported (`problems`, logged and put on the agent's
`started` event) and replaced by a fresh one: never a hang in open(), never a crash.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeguard.host import HostRoot
from nodeguard.structs import JSONValue

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_FINDINGS_BYTES = 256 * 1024 * 1024  # a state file beyond this is not ours
# Quarantined copies beyond this many per file are pruned oldest first: bounded disk use even when
# a config-management tool fights the agent all day.
QUARANTINE_KEEP = 50


@dataclass(slots=True)  # one per finding: 100,000 of them for a 100,000-member group
class KnownFinding:
    status: str
    observed: JSONValue
    since: float


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.problems: list[str] = []
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("lastgood", "quarantine"):
            self._ensure_folder(sub)
        self._io = HostRoot(self.dir)

    def _set_aside(self, name: str, what: str) -> None:
        aside = f"{name}.not-a-{what}-{int(time.time() * 1000)}"
        os.rename(self.dir / name, self.dir / aside)
        problem = f"{self.dir / name} was not a {what}; moved aside as {aside}"
        log.error("state dir: %s", problem)
        self.problems.append(problem)

    def _ensure_folder(self, sub: str) -> None:
        try:
            st = os.lstat(self.dir / sub)
        except FileNotFoundError:
            os.mkdir(self.dir / sub, 0o700)
            return
        if not stat.S_ISDIR(st.st_mode):  # a symlink planted in its place included
            self._set_aside(sub, "folder")
            os.mkdir(self.dir / sub, 0o700)

    def _read_regular(self, name: str, limit: int) -> bytes:
        """A regular file of the state dir, never through a link, never blocking on a FIFO."""
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink
                raise IsADirectoryError(errno.EINVAL, "a symlink") from None
            raise
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IsADirectoryError(errno.EINVAL, "not a regular file")
            chunks = []
            left = limit + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            if len(data) > limit:
                raise ValueError(f"larger than {limit} bytes")
            return data
        finally:
            os.close(fd)

    # -- findings ----------------------------------------------------------------------------

    def load_findings(self) -> dict[str, KnownFinding] | None:
        """None when the agent never ran here (no baseline), else the last known statuses."""
        try:
            raw = self._read_regular("findings.json", MAX_FINDINGS_BYTES)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            # A FIFO, a device, a directory or a symlink: moved aside, so the next save works.
            self._set_aside("findings.json", "file")
            return None
        except (OSError, ValueError) as exc:
            log.error("state dir: cannot read findings.json (%s): no baseline", exc)
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            # A corrupt state file is no baseline; it is kept aside for a human.
            self.quarantine("findings.json", raw)
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
        # Entry by entry, not one big dict of dicts first: 100,000 findings stay a few MB.
        dump = json.JSONEncoder(default=str).encode
        parts = [f'{{"version": {FORMAT_VERSION}, "saved": {time.time()}, "findings": {{']
        parts.append(", ".join(f'{dump(k)}: {{"status": {dump(v.status)}, "observed": {dump(v.observed)}, '
                               f'"since": {v.since}}}' for k, v in sorted(known.items())))
        parts.append("}}")
        self._io.write_atomic("/findings.json", "".join(parts).encode(), default_mode=0o600)

    # -- files kept aside --------------------------------------------------------------------

    def save_last_good(self, name: str, data: bytes) -> None:
        path = f"/lastgood/{name}"
        if self._same_content(f"lastgood/{name}", data):
            return
        self._io.write_atomic(path, data, default_mode=0o600)

    def _same_content(self, name: str, data: bytes) -> bool:
        """Whether the state dir's regular file `name` holds exactly `data` (HostRoot.holds: a MiB at a
        time, so the agent never holds a second copy of a 50 MB daemon.json to learn it is unchanged)."""
        try:
            return self._io.holds(f"/{name}", data, follow=False)
        except OSError:
            return False  # absent or unreadable: written anew (write_atomic replaces it)

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
