"""What an audit record's numbers mean on this host: names from the host's passwd, the container
from the process's cgroup (read while the process still exists), and the event attributes.

Read only, inside the host root and the given /proc; a missing or hostile file gives fewer
attributes, never an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nodeguard.attribution.match import Actor
from nodeguard.host import HostRoot
from nodeguard.host.accounts import parse_passwd
from nodeguard.structs import JSONValue

PASSWD_LIMIT = 8 * 1024 * 1024
CGROUP_LIMIT = 64 * 1024
# A container id is 64 hex digits in every runtime's cgroup naming: /docker/ID,
# docker-ID.scope, cri-containerd-ID.scope, crio-ID.scope, libpod-ID.scope.
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")


def user_names(host: HostRoot) -> dict[int, str]:
    try:
        text = host.read_text("/etc/passwd", limit=PASSWD_LIMIT)
    except (OSError, UnicodeDecodeError):
        return {}
    out: dict[int, str] = {}
    for name, entry in parse_passwd(text).items():
        out.setdefault(entry.uid, name)
    return out


def container_id_from_cgroup(text: str) -> str | None:
    """The container a process runs in, from /proc/PID/cgroup (v1 or v2); None on the host."""
    for line in text.splitlines()[:256]:
        path = line.split(":", 2)[-1]
        m = _CONTAINER_ID.search(path)
        if m:
            return m.group(1)
    return None


def started_ns(proc: Path, pid: int) -> int | None:
    """When `pid` started, in wall-clock nanoseconds (boot time + its start in clock ticks)."""
    try:
        stat_text = (proc / str(pid) / "stat").read_text()[:4096]
        btime = next(int(line.split()[1]) for line in (proc / "stat").read_text()[:65536].splitlines()
                     if line.startswith("btime "))
        ticks = int(stat_text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return btime * 1_000_000_000 + ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def container_id(proc: Path, pid: int, event_ns: int) -> str | None:
    """The container of `pid`, if it still runs and is still the process the record names.

    A short-lived chmod is usually gone by now. A pid reused since by another process started
    after the record; one that only exec'd another program (a shell that chmods, then sleeps)
    started before it and is still the actor. btime has a one-second grain: allow it.
    """
    start = started_ns(proc, pid)
    if start is None or start > event_ns + 1_000_000_000:
        return None
    try:
        with (proc / str(pid) / "cgroup").open() as fh:
            return container_id_from_cgroup(fh.read(CGROUP_LIMIT))
    except (OSError, UnicodeDecodeError):
        return None


def actor_attributes(actor: Actor, names: dict[int, str], proc: Path) -> dict[str, JSONValue]:
    """The attributes an attributed event carries (OpenTelemetry semantic names where they exist)."""
    attrs: dict[str, JSONValue] = {"nodeguard.actor.source": "audit", "nodeguard.actor.audit_event": actor.event_id}
    if actor.pid is not None:
        attrs["process.pid"] = actor.pid
    if actor.ppid is not None:
        attrs["process.parent_pid"] = actor.ppid
    if actor.exe:
        attrs["process.executable.path"] = actor.exe
    if actor.comm:
        attrs["process.executable.name"] = actor.comm
    if actor.command_line:
        attrs["process.command_line"] = actor.command_line
    if actor.uid is not None:
        attrs["user.id"] = actor.uid
        if actor.uid in names:
            attrs["user.name"] = names[actor.uid]
    if actor.auid is not None:
        attrs["nodeguard.actor.login_uid"] = actor.auid
        login = names.get(actor.auid) or (actor.enriched_auid_name if actor.enriched_auid_name not in
                                          (None, "unset", "?") else None)
        if login:
            attrs["nodeguard.actor.login_name"] = login
    if actor.keys:
        attrs["nodeguard.actor.audit_key"] = actor.keys[0] if len(actor.keys) == 1 else list(actor.keys)
    if actor.syscall:
        attrs["nodeguard.actor.syscall"] = actor.syscall
    # The process, or its parent when it has exited (a shell in a container that ran chmod):
    # a child starts in its parent's cgroup.
    for pid in (actor.pid, actor.ppid):
        cid = container_id(proc, pid, actor.time_ns) if pid is not None and pid > 1 else None
        if cid:
            attrs["container.id"] = cid
            break
    return attrs


def describe(attrs: dict[str, JSONValue]) -> str:
    """One line for the event body: who did it, as a person would say it."""
    who = [f"pid {attrs['process.pid']}" if "process.pid" in attrs else "a process"]
    if "process.executable.path" in attrs:
        who.append(f"({attrs['process.executable.path']})")
    if "user.id" in attrs:
        who.append(f"uid {attrs['user.id']}" + (f" {attrs['user.name']}" if "user.name" in attrs else ""))
    if "nodeguard.actor.login_uid" in attrs:
        login = attrs.get("nodeguard.actor.login_name", attrs["nodeguard.actor.login_uid"])
        who.append(f"logged in as {login}")
    if "container.id" in attrs:
        who.append(f"in container {str(attrs['container.id'])[:12]}")
    return " ".join(who)
