"""Least privilege: the capabilities the agent keeps, dropping the rest, and refusing unsafe inputs.

Root in a DaemonSet pod is every capability the runtime grants; the agent needs a handful. Once
started (policy loaded, host root opened, before any thread exists) `nodeguard run` calls
`drop_capabilities(AGENT_CAPABILITIES)`: the bounding set loses everything else (no exec can
regain it), permitted/effective become the kept set, inheritable and ambient are cleared, and
PR_SET_NO_NEW_PRIVS makes every setuid/file-capability exec powerless. A bug in a parser, or a
hostile file the agent reads, then holds a process that can chown/chmod files and edit netfilter,
not one that can load kernel modules, mount, ptrace or reboot.

Written with ctypes (prctl, capset): the Python bindings for libcap need a C build and are not
maintained; the five system calls below are stable kernel ABI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# What the running agent keeps, and why each (README "Threat model" repeats this):
#  CHOWN            revert the owner of docker.sock, daemon.json, TLS files; keep root:shadow on the
#                   rewritten /etc/gshadow (fchown of the new file to the old file's owner).
#  FOWNER           chmod / strip the ACL of a file the agent's uid does not own (a daemon.json or a
#                   socket chowned to a user is exactly the drift to revert).
#  DAC_READ_SEARCH  read files whose mode denies even their owner: /etc/gshadow is 0000 on RHEL-family
#                   hosts. Read-only bypass; DAC_OVERRIDE (write anywhere) is *not* kept: every file
#                   the agent writes lives in a root-owned folder it can write as the owner.
#  NET_ADMIN        netfilter: the firewall control's chain (nf_tables netlink, xtables setsockopt).
#  NET_RAW          python-iptables (libiptc) talks to the legacy xtables through a raw socket.
#  SYS_NICE         SCHED_FIFO 1 for the inotify reader and the socket's lane (nodeguard/priority.py):
#                   under CPU contention a socket revert otherwise waits out a scheduler slice (p99
#                   ~6 ms instead of ~2). It also lets the agent re-prioritise other processes, which
#                   adds nothing to what CHOWN and FOWNER on the host's /etc already are (root).
# Not kept, and why:
#  KILL             SIGHUP to dockerd: same uid (root) needs no capability.
#  SYS_ADMIN        setns/mount: the pod runs with hostNetwork and mounts come from the pod spec.
#  SYS_PTRACE       reading another process's /proc/<pid>/{ns,fd,environ}; dockerd's cmdline needs
#                   none. (So a check of /proc/1/ns/net made *after* the drop gets EPERM: do such
#                   checks before dropping.)
#  DAC_OVERRIDE, SETUID, SETGID, SETPCAP, SYS_MODULE, MKNOD, ...: nothing the agent does.
AGENT_CAPABILITIES: frozenset[str] = frozenset({"CHOWN", "FOWNER", "DAC_READ_SEARCH", "NET_ADMIN", "NET_RAW",
                                                         "SYS_NICE"})

# linux/capability.h, in bit order.
CAPABILITY_NAMES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
_NUMBER = {name: i for i, name in enumerate(CAPABILITY_NAMES)}

# linux/prctl.h
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(OSError):
    """The capabilities could not be dropped as asked."""


class UnsafePath(PermissionError):
    """A policy file or host root that a non-root user could change under the agent."""


@dataclass(frozen=True)
class CapabilitySets:
    effective: frozenset[str]
    permitted: frozenset[str]
    inheritable: frozenset[str]
    bounding: frozenset[str]
    ambient: frozenset[str]
    no_new_privs: bool


def cap_name(number: int) -> str:
    return CAPABILITY_NAMES[number] if number < len(CAPABILITY_NAMES) else f"CAP_{number}"


def _normalise(name: str) -> str:
    n = name.upper().removeprefix("CAP_")
    if n not in _NUMBER:
        raise ValueError(f"unknown capability {name!r}")
    return n


def _names(mask: int) -> frozenset[str]:
    return frozenset(cap_name(i) for i in range(64) if mask >> i & 1)


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return len(CAPABILITY_NAMES) - 1


def current_capabilities(status: Path = Path("/proc/self/status")) -> CapabilitySets:
    """The calling thread's capability sets as the kernel reports them."""
    fields: dict[str, str] = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()

    def mask(key: str) -> frozenset[str]:
        return _names(int(fields.get(key, "0"), 16))

    return CapabilitySets(
        effective=mask("CapEff"), permitted=mask("CapPrm"), inheritable=mask("CapInh"), bounding=mask("CapBnd"),
        ambient=mask("CapAmb"), no_new_privs=fields.get("NoNewPrivs", "0") == "1")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg2: int = 0) -> int:
    rc: int = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                         ctypes.c_ulong(0))
    if rc < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"prctl({option}, {arg2}): {os.strerror(err)}")
    return rc


def _threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 1


def drop_capabilities(keep: Iterable[str]) -> CapabilitySets:
    """Keep only `keep` (names such as "CHOWN" or "CAP_CHOWN"), for good; returns the sets after.

    Capabilities are per thread: call this before any thread starts (exporters, watchers), or the
    other threads keep everything. A kept capability the process does not have is not invented;
    compare the result with what you asked for. Idempotent.
    """
    wanted = {_normalise(n) for n in keep}
    if _threads() > 1:
        raise PrivilegeError(errno.EBUSY, "drop_capabilities must run before any other thread starts: "
                                          "capabilities are per thread")
    libc = _libc()
    # 1. The bounding set: the ceiling for every later exec. Needs CAP_SETPCAP, so it goes first.
    for number in range(_last_cap() + 1):
        if cap_name(number) in wanted:
            continue
        if _prctl(libc, PR_CAPBSET_READ, number) == 1:
            _prctl(libc, PR_CAPBSET_DROP, number)
    # 2. Ambient: capabilities that would survive an exec of an unprivileged binary.
    try:
        _prctl(libc, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except PrivilegeError as exc:
        if exc.errno != errno.EINVAL:  # kernels before 4.3 have no ambient set
            raise
    # 3. Effective/permitted/inheritable: permitted can only shrink, so keep what we have of `wanted`.
    have = current_capabilities().permitted
    kept = 0
    for name in wanted & have:
        kept |= 1 << _NUMBER[name]
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (kept >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")
    # 4. No exec can ever gain privileges again (setuid bits and file capabilities are ignored).
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    return current_capabilities()


# -- inputs that must not be writable by anyone but root ---------------------------------------

_ST_RDONLY = 1  # os.ST_RDONLY


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & _ST_RDONLY)
    except OSError:
        return False


def _why_unsafe(path: Path, st: os.stat_result, child: os.stat_result | None) -> str | None:
    """Why a non-root user could change `path` (a file, or a folder on the way to one)."""
    if _read_only_mount(path):
        return None  # a read-only mount (a ConfigMap volume) cannot be changed through this path
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}, not root"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        # A sticky, root-owned folder (/tmp) lets others create entries but not replace a root-owned
        # one: safe for a child that root owns.
        if stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and child is not None and child.st_uid == 0:
            return None
        who = "group" if mode & 0o020 and not mode & 0o002 else "everyone"
        return f"{path} is writable by {who} (mode {mode:04o})"
    return None


def _chain(path: Path) -> list[Path]:
    """`path` and every folder above it, innermost first."""
    out = [path]
    while out[-1].parent != out[-1]:
        out.append(out[-1].parent)
    return out


def check_not_writable_by_others(path: str | os.PathLike[str]) -> None:
    """Refuse a policy file or host root that anyone but root could change or replace.

    Checked along the name as given (a symlink sits in a folder that could be swapped) and along
    the real path it resolves to: every component must be root-owned and not group/other-writable,
    except a root-owned sticky folder above a root-owned entry (as /tmp) and anything on a
    read-only mount. Raises UnsafePath naming the first offender.
    """
    given = Path(os.path.abspath(path))
    real = Path(os.path.realpath(given))
    for chain in (_chain(real), _chain(given)):
        child: os.stat_result | None = None
        for p in chain:
            try:
                st = os.lstat(p) if p != real else os.stat(p)
            except FileNotFoundError:
                raise UnsafePath(errno.ENOENT, f"{p} does not exist") from None
            if stat.S_ISLNK(st.st_mode):
                # A symlink's own mode means nothing; its folder (next in the chain) decides.
                child = st
                continue
            why = _why_unsafe(p, st, child)
            if why:
                raise UnsafePath(errno.EPERM, f"refusing {given}: {why}; a non-root user could change what "
                                              "nodeguard enforces")
            child = st
