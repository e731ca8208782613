"""`nodeguard run` as a real subprocess, with its JSON-lines events read back as they come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.sandbox import require_root

Event = dict[str, Any]


def read_events(path: Path) -> list[Event]:
    if not path.exists():
        return []
    text = path.read_text()
    # A batch bigger than the exporter's buffer reaches the file in several write()s: a last line
    # without its newline is still being written. Read as a log shipper does: complete lines only
    # (a half line anywhere else would still raise).
    complete = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    events_file: Path
    stderr_file: Path
    _seen: int = 0
    consumed: list[Event] = field(default_factory=list)

    def events(self) -> list[Event]:
        return read_events(self.events_file)

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 15.0, after: int = 0) -> Event:
        """The first event (from index `after` on) matching `pred`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events()[after:]:
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        names = [(e["event.name"], e["attributes"].get("nodeguard.rule")) for e in self.events()[after:]]
        raise AssertionError(f"no matching event in {timeout}s; got {names}\nstderr:\n{self.stderr()[-3000:]}")

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""

    def mark(self) -> int:
        return len(self.events())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return self.proc.returncode


def is_event(name: str, rule: str | None = None, **attrs: Any) -> Callable[[Event], bool]:
    def pred(e: Event) -> bool:
        if e["event.name"] != name:
            return False
        a = e["attributes"]
        if rule is not None and a.get("nodeguard.rule") != rule:
            return False
        return all(a.get(k if "." in k else f"nodeguard.{k}") == v for k, v in attrs.items())
    return pred


@contextmanager
def running_agent(host_root: Path, state_dir: Path, *args: str, events_file: Path | None = None,
                  env: dict[str, str] | None = None, netns: str | None = None) -> Iterator[AgentProcess]:
    """The agent always runs inside a network namespace: its firewall control may only ever touch a
    test namespace's netfilter, never this machine's. Without `netns`, a fresh one is made for it."""
    require_root()
    events = events_file or state_dir.parent / f"{state_dir.name}.events.jsonl"
    stderr_file = events.with_suffix(".stderr")
    own_netns = None
    if netns is None:
        own_netns = netns = f"nga-{os.urandom(4).hex()}"
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
    cmd = ["nsenter", f"--net=/var/run/netns/{netns}",
           sys.executable, "-m", "nodeguard", "run", "--host-root", str(host_root), "--state-dir", str(state_dir),
           "--events-file", str(events), *args]
    earlier = len(read_events(events))
    try:
        with stderr_file.open("ab") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})})
        agent = AgentProcess(proc, events, stderr_file)
        try:
            # Only this process's start counts: a test that restarts the agent on the same state dir
            # shares its events file, and the earlier agent.started would let the test go on (and
            # SIGTERM it) before this agent has its signal handlers.
            agent.wait_for(lambda e: e["event.name"] == "nodeguard.agent.started", timeout=30, after=earlier)
            yield agent
        finally:
            agent.stop()
    finally:
        if own_netns is not None:
            subprocess.run(["ip", "netns", "del", own_netns], check=False, capture_output=True)
