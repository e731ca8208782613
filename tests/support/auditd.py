"""A real auditd for the attribution tests, logging under a sandbox host root; every change undone.

The kernel's audit state is machine-wide: one audit daemon at a time, one rule list, one enabled
flag. So: start our own `auditd -n -c DIR` only when no audit daemon is registered (else read
what the machine's own auditd writes, through a read-only bind mount of its log folder into the
sandbox); add rules only under a key of our own and remove them by that key; put the enabled
flag back as it was; stop only the auditd we started, by its pid. All of it in `finally`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sandbox import Sandbox, require, require_root, require_tool

AUDITD_CONF = """local_events = yes
write_logs = yes
log_file = {log}
log_format = {fmt}
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = {max_mb}
num_logs = 5
max_log_file_action = ROTATE
space_left = 2
space_left_action = IGNORE
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
plugin_dir = {plugins}
end_of_event_timeout = 2
"""
SANDBOX_LOG = "/var/log/audit/audit.log"


def audit_status() -> dict[str, str]:
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True, timeout=10).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def auditctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["auditctl", *args], capture_output=True, text=True, check=False, timeout=10)


@dataclass
class Auditd:
    sandbox: Sandbox
    log: Path  # the real file auditd writes
    pid: int
    own: bool  # started by us (else the machine's own auditd)
    keys: list[str] = field(default_factory=list)

    def watch(self, real_path: Path, perms: str = "wa") -> str:
        """`auditctl -w PATH -p wa -k nodeguard-test-XXXX`; also written into the sandbox's rules.d,
        as an admin would (that is where the agent reads which paths are covered)."""
        key = f"nodeguard-test-{os.urandom(4).hex()}"
        proc = auditctl("-w", str(real_path), "-p", perms, "-k", key)
        assert proc.returncode == 0, proc.stderr
        self.keys.append(key)
        rules = self.sandbox.path("/etc/audit/rules.d/nodeguard-test.rules")
        rules.parent.mkdir(parents=True, exist_ok=True)
        host_path = "/" + str(real_path.relative_to(self.sandbox.root))
        with rules.open("a") as fh:
            fh.write(f"-w {host_path} -p {perms} -k {key}\n")
        return key

    def unwatch_all(self) -> None:
        for key in self.keys:
            auditctl("-D", "-k", key)
        self.keys.clear()

    def wait_for_key(self, key: str, timeout: float = 10.0) -> None:
        """Until auditd has written a record with `key` (it writes a few ms after the syscall)."""
        deadline = time.monotonic() + timeout
        needle = f'key="{key}"'.encode()
        while time.monotonic() < deadline:
            if self.log.exists() and needle in self.log.read_bytes()[-4 * 1024 * 1024:]:
                return
            time.sleep(0.01)
        raise AssertionError(f"auditd wrote no record keyed {key} in {timeout}s")


def as_login(uid: int, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """A child that sets its audit login uid (as pam_loginuid does at login), then execs `argv`:
    its pid is the pid of the program that makes the change."""
    script = f'echo {uid} > /proc/self/loginuid && exec "$@"'
    return subprocess.Popen(["sh", "-c", script, "sh", *argv], **kwargs)  # type: ignore[call-overload,no-any-return]


@contextmanager
def running_auditd(sandbox: Sandbox, work: Path, fmt: str = "ENRICHED", max_mb: int = 8) -> Iterator[Auditd]:
    require_root()
    auditd = require_tool("auditd")
    require_tool("auditctl")
    status = audit_status()
    was_enabled = status.get("enabled", "0")
    require(was_enabled != "2", "the kernel's audit rules are locked (auditctl -e 2): no test rule can be added")
    registered = int(status.get("pid", "0") or 0)
    log_dir = sandbox.path("/var/log/audit")
    log_dir.mkdir(parents=True, exist_ok=True)
    sandbox.write("/etc/audit/auditd.conf", f"log_file = {SANDBOX_LOG}\nlog_format = {fmt}\n", 0o640)
    proc: subprocess.Popen[bytes] | None = None
    mounted = False
    handle: Auditd | None = None
    try:
        if registered:
            # The machine's own auditd: read its log where it writes it, mounted read-only.
            conf = Path("/etc/audit/auditd.conf").read_text() if Path("/etc/audit/auditd.conf").exists() else ""
            m = re.search(r"^\s*log_file\s*=\s*(\S+)", conf, re.M)
            real_log = Path(m.group(1) if m else "/var/log/audit/audit.log")
            require(real_log.parent.is_dir(), f"an auditd (pid {registered}) runs but its log folder is unknown")
            subprocess.run(["mount", "--bind", "-o", "ro", str(real_log.parent), str(log_dir)], check=True)
            mounted = True
            sandbox.write("/etc/audit/auditd.conf", f"log_file = /var/log/audit/{real_log.name}\n", 0o640)
            handle = Auditd(sandbox, log_dir / real_log.name, registered, own=False)
        else:
            conf_dir = work / "auditd-conf"
            plugins = conf_dir / "plugins.d"
            plugins.mkdir(parents=True, exist_ok=True)
            (conf_dir / "auditd.conf").write_text(AUDITD_CONF.format(
                log=log_dir / "audit.log", fmt=fmt, plugins=plugins, max_mb=max_mb))
            (conf_dir / "auditd.conf").chmod(0o600)
            err = (work / "auditd.stderr").open("wb")
            proc = subprocess.Popen([auditd, "-n", "-c", str(conf_dir)], stdout=err, stderr=err)
            err.close()
            deadline = time.monotonic() + 15
            while audit_status().get("pid") != str(proc.pid):
                assert proc.poll() is None, (work / "auditd.stderr").read_text()
                assert time.monotonic() < deadline, "auditd never registered with the kernel"
                time.sleep(0.05)
            handle = Auditd(sandbox, log_dir / "audit.log", proc.pid, own=True)
        yield handle
    finally:
        if handle is not None:
            handle.unwatch_all()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if mounted:
            subprocess.run(["umount", str(log_dir)], check=False)
        auditctl("-e", was_enabled)
        shutil.rmtree(work / "auditd-conf", ignore_errors=True)


def chmod_record(serial: int, time_ns: int, path: str, pid: int = 4242, auid: int = 1000, key: str = "k",
                 enriched: bool = True) -> str:
    """The four lines auditd writes for a `chmod 666 PATH` (what the real one wrote, fields trimmed)."""
    sec, ms = divmod(time_ns // 1_000_000, 1000)
    head = f"msg=audit({sec}.{ms:03d}:{serial}):"
    extra = '\x1dARCH=x86_64 SYSCALL=fchmodat AUID="alice" UID="root"' if enriched else ""
    title = f"chmod\x00666\x00{path}".encode().hex().upper()
    return (f"type=SYSCALL {head} arch=c000003e syscall=268 success=yes exit=0 a0=ffffff9c a1=1 a2=1b6 a3=0 "
            f"items=1 ppid=1 pid={pid} auid={auid} uid=0 gid=0 euid=0 tty=(none) ses=3 comm=\"chmod\" "
            f"exe=\"/usr/bin/chmod\" key=\"{key}\"{extra}\n"
            f"type=CWD {head} cwd=\"/\"\n"
            f"type=PATH {head} item=0 name=\"{path}\" inode=12 dev=fe:00 mode=0140660 nametype=NORMAL\n"
            f"type=PROCTITLE {head} proctitle={title}\n")
