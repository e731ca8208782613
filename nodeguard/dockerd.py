"""The running dockerd: which process it is, and the flags it was started with.

A setting given as a flag never shows in daemon.json, and dockerd refuses to start when the same
directive is in both; an audit that reads only the file misses `-H tcp://0.0.0.0:2375`. The
pidfile (inside the host root) names the process; /proc is the agent's own, which in the pod is
the host's (hostPID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nodeguard.host import HostRoot

# Flags whose values accumulate (given several times, or a list key in daemon.json).
LIST_FLAGS = {
    "host", "insecure-registry", "registry-mirror", "label", "dns", "dns-opt", "dns-search",
    "add-runtime", "authorization-plugin", "default-ulimit", "log-opt", "storage-opt", "exec-opt",
    "default-address-pool", "node-generic-resource", "allow-nondistributable-artifacts",
}
SHORT_FLAGS = {"H": "host", "G": "group", "D": "debug", "l": "log-level", "p": "pidfile", "g": "data-root",
               "b": "bridge", "s": "storage-driver", "e": "exec-driver"}
# dockerd's boolean flags: they take no separate value (only `--flag=false`).
BOOL_FLAGS = {
    "debug", "tls", "tlsverify", "icc", "iptables", "ip6tables", "ipv6", "ip-forward", "ip-masq",
    "live-restore", "userland-proxy", "no-new-privileges", "experimental", "selinux-enabled",
    "raw-logs", "init", "rootless", "validate", "help", "version",
}
# Flag name -> daemon.json key where they differ (the rest share their name).
FLAG_TO_KEY = {
    "host": "hosts", "insecure-registry": "insecure-registries", "registry-mirror": "registry-mirrors",
    "label": "labels", "authorization-plugin": "authorization-plugins", "default-ulimit": "default-ulimits",
    "log-opt": "log-opts", "storage-opt": "storage-opts", "exec-opt": "exec-opts",
    "add-runtime": "runtimes", "dns-opt": "dns-opts", "graph": "data-root",
}


@dataclass
class DaemonProcess:
    pid: int
    argv: list[str]
    found_by: str  # "pidfile" or "scan"
    flags: dict[str, list[str]] = field(default_factory=dict)

    def config_values(self) -> dict[str, object]:
        """The flags as daemon.json would spell them (lists for list keys, bools for booleans)."""
        out: dict[str, object] = {}
        for flag, values in self.flags.items():
            key = FLAG_TO_KEY.get(flag, flag)
            if flag in LIST_FLAGS:
                out[key] = list(values)
            elif flag in BOOL_FLAGS:
                out[key] = values[-1].lower() not in ("false", "0")
            else:
                out[key] = values[-1]
        return out


def parse_flags(argv: list[str]) -> dict[str, list[str]]:
    """dockerd's command line -> {long flag name: [values]}. Unknown flags are kept as they are."""
    flags: dict[str, list[str]] = {}
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        body = arg.lstrip("-")
        name, sep, value = body.partition("=")
        if not arg.startswith("--"):
            # -H tcp://..., -Htcp://..., -D
            short, rest = name[:1], body[1:]
            name = SHORT_FLAGS.get(short, short)
            if rest.startswith("="):
                sep, value = "=", rest[1:]
            elif rest:
                sep, value = "=", rest
        if not sep:
            if name in BOOL_FLAGS:
                value = "true"
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                value = ""
        flags.setdefault(name, []).append(value)
    return flags


def dockerd_argv(proc: Path, pid: int) -> list[str] | None:
    """The command line of `pid` when it runs dockerd, else None (gone, unreadable, or another
    program: a pid recycled since it was looked at included). The one "is this dockerd" check."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    argv = [a.decode("utf-8", errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
    return argv if os.path.basename(argv[0]) == "dockerd" else None


def find_daemon(host: HostRoot, pid_file: str, proc: Path = Path("/proc")) -> DaemonProcess | None:
    """The dockerd named by the host's pidfile; else the only dockerd /proc shows on a real root."""
    try:
        text = host.read_text(pid_file, limit=64).strip()
        pid = int(text)
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        argv = dockerd_argv(proc, pid)
        if argv:
            return DaemonProcess(pid, argv, "pidfile", parse_flags(argv))
    # A scan of /proc sees this machine's processes; that is the host only when the root is `/`
    # or the agent runs with the host's pid namespace in a pod (root `/host`). In a sandbox
    # root it would find someone else's daemon, so it is left to the pidfile there.
    if host.root != Path("/") and not str(host.root).startswith("/host"):
        return None
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for entry in entries:
        if entry.isdigit():
            argv = dockerd_argv(proc, int(entry))
            if argv:
                found.append(DaemonProcess(int(entry), argv, "scan", parse_flags(argv)))
    return found[0] if len(found) == 1 else None
