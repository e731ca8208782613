"""Least privilege: capabilities really dropped (the kernel says EPERM), unsafe inputs refused.

Capabilities are dropped for good, so every drop runs in a subprocess of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nodeguard.privileges import (
    AGENT_CAPABILITIES,
    CAPABILITY_NAMES,
    UnsafePath,
    check_not_writable_by_others,
    current_capabilities,
    drop_capabilities,
)
from tests.support.sandbox import require_root

REPO = Path(__file__).resolve().parents[2]


def run_dropped(keep: set[str] | frozenset[str], body: str, before: str = "") -> dict[str, object]:
    """Drop to `keep` in a fresh interpreter, run `body` (which fills `out`), return `out`.

    `before` runs ahead of the drop, with every capability (e.g. to enter a fresh namespace).
    """
    script = before + textwrap.dedent("""
        import errno, json, os, socket, sys
        from nodeguard.privileges import current_capabilities, drop_capabilities
        out = {}
        def attempt(name, fn):
            try:
                fn()
                out[name] = "ok"
            except OSError as exc:
                out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        after = drop_capabilities(json.loads(sys.argv[1]))
        out["after"] = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(after).items()}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(sorted(keep))], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_agent_set_names_real_capabilities() -> None:
    assert set(CAPABILITY_NAMES) >= AGENT_CAPABILITIES
    # What the threat model promises never to keep.
    assert not AGENT_CAPABILITIES & {"SYS_ADMIN", "SYS_PTRACE", "DAC_OVERRIDE", "SYS_MODULE", "SETUID", "SETPCAP"}


@pytest.mark.root
def test_drop_leaves_exactly_the_kept_set_and_no_new_privs() -> None:
    require_root()
    had = current_capabilities().permitted
    out = run_dropped(AGENT_CAPABILITIES, "")
    after = out["after"]
    assert isinstance(after, dict)
    want = sorted(AGENT_CAPABILITIES & had)
    assert after["effective"] == want
    assert after["permitted"] == want
    assert set(after["bounding"]) <= AGENT_CAPABILITIES
    assert after["inheritable"] == [] and after["ambient"] == []
    assert after["no_new_privs"] is True


@pytest.mark.root
@pytest.mark.parametrize(("cap", "operation"), [
    # chown to another uid: CAP_CHOWN.
    ("CHOWN", "attempt('op', lambda: os.chown(sys.argv[2], 1234, 1234))"),
    # chmod a file someone else owns: CAP_FOWNER.
    ("FOWNER", "attempt('op', lambda: os.chmod(sys.argv[3], 0o600))"),
    # read a mode-0000 file (RHEL's /etc/gshadow): CAP_DAC_READ_SEARCH.
    ("DAC_READ_SEARCH", "attempt('op', lambda: open(sys.argv[4], 'rb').close())"),
    # libiptc's raw socket: CAP_NET_RAW.
    ("NET_RAW", "attempt('op', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close())"),
    # real-time priority for the socket's revert path: CAP_SYS_NICE (RLIMIT_RTPRIO is 0).
    ("SYS_NICE", "attempt('op', lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))"),
])
def test_each_kept_capability_is_what_makes_its_operation_work(tmp_path: Path, cap: str, operation: str) -> None:
    require_root()
    mine = tmp_path / "mine"
    mine.write_text("x")
    theirs = tmp_path / "theirs"
    theirs.write_text("x")
    os.chown(theirs, 1234, 1234)
    locked = tmp_path / "locked"
    locked.write_text("x")
    locked.chmod(0)
    tmp_path.chmod(0o755)
    args = [str(mine), str(theirs), str(locked)]

    def run(keep: frozenset[str]) -> object:
        body = f"sys.argv[2:] = {args!r}\n{operation}\n"
        return run_dropped(keep, body)["op"]

    assert run(AGENT_CAPABILITIES) == "ok"
    assert run(AGENT_CAPABILITIES - {cap}) in ("EPERM", "EACCES")


@pytest.mark.root
def test_net_admin_is_kept_and_sys_admin_is_not() -> None:
    require_root()
    # In a network namespace of its own (made before the drop, never the machine's own network),
    # bringing `lo` up is a CAP_NET_ADMIN operation, as netfilter changes are.
    body = """
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def unshare_net():
    if libc.unshare(0x40000000):  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare")
def link_up():
    r = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if r.returncode:
        raise OSError(errno.EPERM, r.stderr)
attempt("unshare_net", unshare_net)
attempt("link_up", link_up)
"""
    prefix = "import ctypes\nif ctypes.CDLL(None).unshare(0x40000000): raise SystemExit('unshare')\n"
    with_net_admin = run_dropped(AGENT_CAPABILITIES, body, before=prefix)
    without = run_dropped(AGENT_CAPABILITIES - {"NET_ADMIN"}, body, before=prefix)
    assert with_net_admin["link_up"] == "ok"
    assert without["link_up"] == "EPERM"
    # Without SYS_ADMIN the agent cannot make (or enter) another namespace: it acts where it runs.
    assert with_net_admin["unshare_net"] == "EPERM"


@pytest.mark.root
def test_dropped_process_cannot_read_another_root_process_namespaces() -> None:
    require_root()
    # The documented consequence of not keeping SYS_PTRACE: /proc/1/ns/* is out of reach after the
    # drop, so checks that need it (the engine's "same netns as pid 1?") must run before.
    out = run_dropped(AGENT_CAPABILITIES, "attempt('ns', lambda: os.stat('/proc/1/ns/net'))\n"
                                          "attempt('cmdline', lambda: open('/proc/1/cmdline','rb').read())\n")
    assert out["ns"] == "EACCES"
    assert out["cmdline"] == "ok"  # what dockerd.py reads to find the daemon's flags


@pytest.mark.root
def test_exec_after_drop_regains_nothing() -> None:
    require_root()
    body = """
import subprocess
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
out["child"] = {line.split(":")[0]: line.split()[1] for line in status.splitlines()
                if line.startswith(("CapBnd", "CapEff", "CapPrm", "CapAmb", "NoNewPrivs"))}
"""
    out = run_dropped({"CHOWN"}, body)
    child = out["child"]
    assert isinstance(child, dict)
    assert int(child["CapBnd"], 16) == 1 << CAPABILITY_NAMES.index("CHOWN")
    assert int(child["CapEff"], 16) & ~(1 << CAPABILITY_NAMES.index("CHOWN")) == 0
    assert int(child["CapAmb"], 16) == 0
    assert child["NoNewPrivs"] == "1"


def test_drop_refuses_once_threads_run() -> None:
    # In a subprocess too: if the refusal were broken, this must not strip pytest's own capabilities.
    script = textwrap.dedent("""
        import threading, errno
        from nodeguard.privileges import drop_capabilities, current_capabilities
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            drop_capabilities({"CHOWN"})
            print("dropped")
        except OSError as exc:
            print(errno.errorcode[exc.errno], len(current_capabilities().bounding))
        finally:
            stop.set()
            t.join()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    status, bounding = out.stdout.split()
    assert status == "EBUSY"
    assert int(bounding) == len(current_capabilities().bounding)  # nothing was dropped


def test_unknown_capability_name_is_refused_before_anything_is_dropped() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        drop_capabilities({"CHOWN", "CAP_NOPE"})


# -- inputs writable by others -------------------------------------------------------------------


@pytest.fixture
def safe_dir(tmp_path: Path) -> Path:
    # pytest's tmp_path sits under /tmp (root-owned, sticky) in a root-owned 0700 folder: safe.
    d = tmp_path / "conf"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


@pytest.mark.root
def test_root_owned_policy_is_accepted(safe_dir: Path) -> None:
    require_root()
    p = safe_dir / "policy.yaml"
    p.write_text("{}")
    p.chmod(0o644)
    check_not_writable_by_others(p)
    check_not_writable_by_others(safe_dir)


@pytest.mark.root
@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_world_writable_policy_is_refused(safe_dir: Path, mode: int) -> None:
    require_root()
    p = safe_dir / "policy.yaml"
    p.write_text("{}")
    p.chmod(mode)
    with pytest.raises(UnsafePath, match="writable"):
        check_not_writable_by_others(p)


@pytest.mark.root
def test_policy_owned_by_a_user_is_refused(safe_dir: Path) -> None:
    require_root()
    p = safe_dir / "policy.yaml"
    p.write_text("{}")
    os.chown(p, 1000, 0)
    with pytest.raises(UnsafePath, match="uid 1000"):
        check_not_writable_by_others(p)


@pytest.mark.root
@pytest.mark.parametrize("how", ["world-writable", "user-owned", "sticky-but-user-owned-child"])
def test_writable_parent_folder_is_refused(safe_dir: Path, how: str) -> None:
    require_root()
    sub = safe_dir / "sub"
    sub.mkdir()
    p = sub / "policy.yaml"
    p.write_text("{}")
    if how == "world-writable":
        sub.chmod(0o777)
    elif how == "user-owned":
        os.chown(sub, 1000, 1000)
    else:
        sub.chmod(0o1777)
        os.chown(p, 1000, 0)
    with pytest.raises(UnsafePath):
        check_not_writable_by_others(p)


@pytest.mark.root
def test_sticky_root_folder_above_root_owned_entries_is_accepted(safe_dir: Path) -> None:
    require_root()
    sub = safe_dir / "tmp-like"
    sub.mkdir()
    sub.chmod(0o1777)
    inner = sub / "nodeguard"
    inner.mkdir(mode=0o755)
    p = inner / "policy.yaml"
    p.write_text("{}")
    check_not_writable_by_others(p)


@pytest.mark.root
def test_symlink_through_an_unsafe_folder_is_refused(safe_dir: Path) -> None:
    require_root()
    real = safe_dir / "real.yaml"
    real.write_text("{}")
    unsafe = safe_dir / "drop"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    link = unsafe / "policy.yaml"
    link.symlink_to(real)
    # The target is fine, but whoever can write `drop/` can point the link elsewhere.
    with pytest.raises(UnsafePath, match="drop"):
        check_not_writable_by_others(link)


@pytest.mark.root
def test_read_only_mount_is_accepted_whatever_its_modes(safe_dir: Path) -> None:
    require_root()
    # A ConfigMap volume: world-writable modes, but mounted read-only; nobody can change it.
    vol = safe_dir / "configmap"
    vol.mkdir()
    (vol / "policy.yaml").write_text("{}")
    vol.chmod(0o777)
    (vol / "policy.yaml").chmod(0o666)
    with pytest.raises(UnsafePath):
        check_not_writable_by_others(vol / "policy.yaml")
    subprocess.run(["mount", "--bind", str(vol), str(vol)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(vol)], check=True)
        check_not_writable_by_others(vol / "policy.yaml")
    finally:
        subprocess.run(["umount", str(vol)], check=True)


def test_missing_path_is_refused(safe_dir: Path) -> None:
    with pytest.raises(UnsafePath, match="does not exist"):
        check_not_writable_by_others(safe_dir / "nope.yaml")
