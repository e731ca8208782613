"""No write can be redirected: every change HostRoot and shadow.py make, against a hostile host root.

For each path that changes something (write_atomic, chmod, chown, removexattr, the group/gshadow
edit and its locks) we plant a symlink pointing outside the root, a hard link to a file outside
the root, a FIFO or a folder where the target should be, or swap a parent folder for a symlink
*between the check and the change* (injected deterministically: the swap fires on the N-th file
system call the operation makes, for every N). A canary tree outside the root, shaped like the
host's /etc, is snapshotted before and after: it must not change by a single bit, owner or xattr.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeguard.host import HardLinked, HostRoot, NotRegularFile
from nodeguard.host import walk as host_walk
from nodeguard.host.atomic import temp_name
from nodeguard.host.shadow import lckpwdf, remove_group_member
from tests.support.sandbox import Sandbox, require_root
from tests.support.walkers import WALKER_NAMES, use_walker

CANARY_UID = 4242
XATTR = "user.nodeguard-canary"
Snapshot = dict[str, tuple[int, int, int, bytes | str | None, tuple[tuple[str, bytes], ...]]]


def snapshot(root: Path) -> Snapshot:
    """Mode, owner, content (or link target) and user xattrs of every entry under `root`.

    Not the link count: planting a hard link raises it, and a rename over the planted name lowers it.
    """
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            content: bytes | str | None = None
            xattrs: tuple[tuple[str, bytes], ...] = ()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                if stat.S_ISREG(st.st_mode):
                    content = p.read_bytes()
                xattrs = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p) if n.startswith("user.")))
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content, xattrs)
    return out


@dataclass
class Scene:
    sandbox: Sandbox
    host: HostRoot
    canary: Path  # outside the root, shaped like the root's /etc

    def snap(self) -> Snapshot:
        return snapshot(self.canary)


def _canary_file(p: Path, text: str, mode: int = 0o664) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    os.setxattr(p, XATTR, b"keep")
    if os.geteuid() == 0:
        os.chown(p, CANARY_UID, CANARY_UID)


@pytest.fixture(autouse=True, params=WALKER_NAMES)
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both walkers: openat2 (RESOLVE_IN_ROOT) and the userspace fallback."""
    return use_walker(request.param, monkeypatch)


@pytest.fixture
def scene(sandbox: Sandbox, tmp_path: Path) -> Iterator[Scene]:
    canary = tmp_path / "canary-etc"
    # The same names as the root's /etc, so that any redirected write lands on a real file.
    _canary_file(canary / "docker/daemon.json", '{"canary": true}\n')
    _canary_file(canary / "group", "docker:x:990:mallory\n")
    _canary_file(canary / "gshadow", "docker:!::mallory\n")
    _canary_file(canary / ".pwd.lock", "")
    pid = os.getpid()
    _canary_file(canary / f"group.{pid}", "canary lock tmp\n")
    _canary_file(canary / f"gshadow.{pid}", "canary lock tmp\n")
    sandbox.write("/etc/docker/daemon.json", '{"icc": true}\n', 0o666)
    os.setxattr(sandbox.path("/etc/docker/daemon.json"), XATTR, b"inside")
    sandbox.write("/etc/group", sandbox.read("/etc/group").replace("docker:x:990:", "docker:x:990:mallory"))
    sandbox.write("/etc/gshadow", sandbox.read("/etc/gshadow").replace("docker:!::", "docker:!::mallory"), 0o640)
    yield Scene(sandbox, HostRoot(sandbox.root), canary)


# -- the operations that change something -------------------------------------------------------

DAEMON_JSON = "/etc/docker/daemon.json"


def op_write(h: HostRoot) -> None:
    h.write_atomic(DAEMON_JSON, b'{"icc": false}\n')


def op_write_expect(h: HostRoot) -> None:
    h.write_atomic(DAEMON_JSON, b'{"icc": false}\n', expect=h.lstat(DAEMON_JSON))


def op_chmod(h: HostRoot) -> None:
    h.chmod(DAEMON_JSON, 0o600)


def op_chown(h: HostRoot) -> None:
    h.chown(DAEMON_JSON, 0, 0)


def op_removexattr(h: HostRoot) -> None:
    h.removexattr(DAEMON_JSON, XATTR)


def op_remove_member(h: HostRoot) -> None:
    remove_group_member(h, "docker", "mallory")


def op_lckpwdf(h: HostRoot) -> None:
    with lckpwdf(h, timeout=0.2):
        pass


OPS: dict[str, Callable[[HostRoot], None]] = {
    "write_atomic": op_write,
    "write_atomic-expect": op_write_expect,
    "chmod": op_chmod,
    "chown": op_chown,
    "removexattr": op_removexattr,
    "remove_group_member": op_remove_member,
    "lckpwdf": op_lckpwdf,
}
# Where each operation acts (the file that stands in the root's /etc for each).
TARGETS = {
    "write_atomic": "docker/daemon.json", "write_atomic-expect": "docker/daemon.json", "chmod": "docker/daemon.json",
    "chown": "docker/daemon.json", "removexattr": "docker/daemon.json", "remove_group_member": "group",
    "lckpwdf": ".pwd.lock",
}


def run_op(name: str, h: HostRoot) -> OSError | None:
    """Run one operation with a deadline: a refused change is an OSError, a hang is a failure."""
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(OPS[name], h)
        exc = fut.exception(timeout=10)
    assert exc is None or isinstance(exc, OSError), f"{name} raised {exc!r}, not a clear OSError"
    return exc


# -- planted objects -----------------------------------------------------------------------------


def plant_symlink_outside(sc: Scene, rel: str) -> None:
    p = sc.sandbox.path(f"/etc/{rel}")
    p.unlink(missing_ok=True)
    os.symlink(str(sc.canary / rel), p)


def plant_relative_symlink_outside(sc: Scene, rel: str) -> None:
    p = sc.sandbox.path(f"/etc/{rel}")
    p.unlink(missing_ok=True)
    os.symlink("../" * 20 + str(sc.canary / rel).lstrip("/"), p)


def plant_hardlink_outside(sc: Scene, rel: str) -> None:
    p = sc.sandbox.path(f"/etc/{rel}")
    p.unlink(missing_ok=True)
    os.link(sc.canary / rel, p)


def plant_fifo(sc: Scene, rel: str) -> None:
    p = sc.sandbox.path(f"/etc/{rel}")
    p.unlink(missing_ok=True)
    os.mkfifo(p)


def plant_folder(sc: Scene, rel: str) -> None:
    p = sc.sandbox.path(f"/etc/{rel}")
    p.unlink(missing_ok=True)
    p.mkdir()


def plant_parent_symlink(sc: Scene, rel: str) -> None:
    """The target's folder (/etc/docker, or /etc itself) replaced by a symlink to the canary."""
    folder = "docker" if rel.startswith("docker/") else ""
    if folder:
        real = sc.sandbox.path("/etc/docker")
        real.rename(real.with_name("docker.moved"))
        os.symlink(str(sc.canary / "docker"), real)
    else:
        swap_etc(sc)


def swap_etc(sc: Scene) -> None:
    etc = sc.sandbox.path("/etc")
    etc.rename(etc.with_name("etc.moved"))
    os.symlink(str(sc.canary), etc)


PLANTS = {
    "symlink-outside": plant_symlink_outside,
    "relative-symlink-outside": plant_relative_symlink_outside,
    "hardlink-outside": plant_hardlink_outside,
    "fifo": plant_fifo,
    "folder": plant_folder,
    "parent-symlink": plant_parent_symlink,
}


@pytest.mark.root
@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("op", sorted(OPS))
def test_planted_object_never_redirects_a_change(scene: Scene, op: str, plant: str) -> None:
    require_root()  # chown, and canary files owned by another uid
    before = scene.snap()
    PLANTS[plant](scene, TARGETS[op])
    exc = run_op(op, scene.host)
    assert scene.snap() == before, f"{op} with a planted {plant} changed a file outside the root ({exc!r})"


@pytest.mark.root
def test_hardlinked_target_is_refused_for_metadata_changes(scene: Scene) -> None:
    require_root()
    plant_hardlink_outside(scene, "docker/daemon.json")
    for op in (op_chmod, op_chown, op_removexattr):
        with pytest.raises(HardLinked):
            op(scene.host)
    # A rename-based write replaces the name only: the other name keeps its bytes.
    op_write(scene.host)
    assert scene.sandbox.read(DAEMON_JSON) == '{"icc": false}\n'
    assert (scene.canary / "docker/daemon.json").read_text() == '{"canary": true}\n'


@pytest.mark.root
def test_symlink_and_fifo_targets_are_refused_not_followed(scene: Scene) -> None:
    plant_symlink_outside(scene, "docker/daemon.json")
    for op in (op_write, op_chmod, op_chown, op_removexattr):
        with pytest.raises(NotRegularFile):
            op(scene.host)
    plant_fifo(scene, ".pwd.lock")
    exc = run_op("lckpwdf", scene.host)
    assert isinstance(exc, NotRegularFile) and exc.kind == "fifo"


@pytest.mark.root
def test_lock_tmp_file_hardlinked_outside_is_not_truncated(scene: Scene) -> None:
    require_root()
    # shadow-utils' lock protocol writes <file>.<pid> first: a hard link planted under that name
    # must not carry the write (or an O_TRUNC) to the file it shares an inode with.
    before = scene.snap()
    os.link(scene.canary / f"group.{os.getpid()}", scene.sandbox.path(f"/etc/group.{os.getpid()}"))
    os.link(scene.canary / f"gshadow.{os.getpid()}", scene.sandbox.path(f"/etc/gshadow.{os.getpid()}"))
    assert remove_group_member(scene.host, "docker", "mallory") == ["/etc/group", "/etc/gshadow"]
    assert "mallory" not in scene.sandbox.read("/etc/group")
    assert scene.snap() == before


@pytest.mark.root
def test_device_node_is_never_opened(scene: Scene) -> None:
    require_root()
    # /dev/null's numbers: harmless here, but a planted /dev/watchdog would arm a reboot on open().
    p = scene.sandbox.path(DAEMON_JSON)
    p.unlink()
    os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(NotRegularFile) as exc_info:
        scene.host.read_bytes(DAEMON_JSON)
    assert exc_info.value.kind == "char"
    with pytest.raises(NotRegularFile):
        op_write(scene.host)


# -- a parent folder swapped between the check and the change ----------------------------------

# The file system calls HostRoot and shadow.py make: the swap fires just before the N-th of them.
_SWAP_POINTS = ("open", "stat", "lstat", "readlink", "chmod", "chown", "removexattr", "rename", "link", "unlink",
                "fstat", "fsync", "write", "getxattr")


class SwapOnCall:
    """Wraps the os functions in nodeguard.host / nodeguard.host.shadow; calls `swap` before the N-th call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int, swap: Callable[[], None]) -> None:
        self.n = n
        self.calls = 0
        self.swapped = False
        self.swap = swap
        for fname in _SWAP_POINTS:
            original = getattr(os, fname)
            monkeypatch.setattr(os, fname, self._wrap(original))

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Only calls made by the code under test count, not the swap's own file operations.
            if not self.swapped and _called_from_nodeguard():
                self.calls += 1
                if self.calls == self.n:
                    self.swapped = True
                    self.swap()
            return fn(*args, **kwargs)

        return wrapper


def _called_from_nodeguard() -> bool:
    import sys

    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", "").startswith("nodeguard.")


def _swap_parent(sc: Scene) -> Callable[[], None]:
    def swap() -> None:
        # /etc itself becomes a symlink to the canary: a path string resolved after this point
        # by the kernel would land outside the root.
        etc = sc.sandbox.path("/etc")
        os.rename(etc, etc.with_name("etc.moved"))
        os.symlink(str(sc.canary), etc)

    return swap


def _count_calls(sc_factory: Callable[[], Scene], op: str, monkeypatch: pytest.MonkeyPatch) -> int:
    sc = sc_factory()
    counter = SwapOnCall(monkeypatch, 10**9, lambda: None)
    run_op(op, sc.host)
    monkeypatch.undo()
    return counter.calls


@pytest.mark.root
@pytest.mark.parametrize("op", sorted(OPS))
def test_parent_swapped_between_check_and_change(sandbox: Sandbox, tmp_path: Path, op: str,
                                                  monkeypatch: pytest.MonkeyPatch, walker: str) -> None:
    require_root()
    scenes: list[Scene] = []

    def fresh() -> Scene:
        n = len(scenes)
        root = tmp_path / f"root{n}"
        root.mkdir()
        from tests.support.sandbox import make_sandbox

        sb = make_sandbox(root)
        canary = tmp_path / f"canary{n}"
        for rel, text in (("docker/daemon.json", '{"canary": true}\n'), ("group", "docker:x:990:mallory\n"),
                          ("gshadow", "docker:!::mallory\n"), (".pwd.lock", "")):
            _canary_file(canary / rel, text)
        sb.write(DAEMON_JSON, '{"icc": true}\n', 0o666)
        os.setxattr(sb.path(DAEMON_JSON), XATTR, b"inside")
        sb.write("/etc/group", sb.read("/etc/group").replace("docker:x:990:", "docker:x:990:mallory"))
        sb.write("/etc/gshadow", sb.read("/etc/gshadow").replace("docker:!::", "docker:!::mallory"), 0o640)
        # The walker named explicitly: monkeypatch.undo() below also undoes the autouse fixture's choice.
        sc = Scene(sb, HostRoot(root, walker=host_walk.WALKERS[walker]()), canary)
        scenes.append(sc)
        return sc

    total = _count_calls(fresh, op, monkeypatch)
    assert total > 0
    for n in range(1, total + 1):
        sc = fresh()
        before = sc.snap()
        swapper = SwapOnCall(monkeypatch, n, _swap_parent(sc))
        exc = run_op(op, sc.host)
        monkeypatch.undo()
        assert swapper.swapped
        assert sc.snap() == before, f"{op}: /etc swapped before call {n}/{total} redirected a change ({exc!r})"


@pytest.mark.root
def test_racing_thread_never_redirects_a_change(scene: Scene) -> None:
    require_root()
    before = scene.snap()
    etc = scene.sandbox.path("/etc")
    moved = etc.with_name("etc.moved")
    stop = threading.Event()

    def flip() -> None:
        # Swap /etc between the real folder and a symlink to the canary, as fast as it goes.
        while not stop.is_set():
            os.rename(etc, moved)
            os.symlink(str(scene.canary), etc)
            os.unlink(etc)
            os.rename(moved, etc)

    racer = threading.Thread(target=flip)
    racer.start()
    outcomes: dict[str, int] = {}
    try:
        for _ in range(150):
            for name in ("write_atomic", "chmod", "chown", "removexattr"):
                try:
                    OPS[name](scene.host)
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except OSError as exc:
                    key = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                    outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.set()
        racer.join()
    assert scene.snap() == before, f"a racing swap redirected a change; outcomes {outcomes}"
    # Successful changes landed inside the root (the success path itself is covered elsewhere).
    assert sum(outcomes.values()) == 600


# -- the agent's own state dir -------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_state_dir_writes_never_follow_planted_links(tmp_path: Path, plant: str) -> None:
    from nodeguard.state import StateStore

    require_root()
    canary = tmp_path / "canary"
    for rel in ("findings.json", "daemon.json", "lastgood/daemon.json", "heartbeat.json"):
        _canary_file(canary / rel, "canary\n")
    before = snapshot(canary)
    state = tmp_path / "state"
    store = StateStore(state)

    def put(name: str, target: Path) -> None:
        p = state / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if plant == "symlink":
            os.symlink(target, p)
        else:
            os.link(target, p)

    put("findings.json", canary / "findings.json")
    put("lastgood/daemon.json", canary / "daemon.json")
    for op in (lambda: store.save_findings({}), lambda: store.save_last_good("daemon.json", b"{}\n"),
               lambda: store.quarantine("daemon.json", b"{}\n")):
        with contextlib.suppress(OSError):  # a refusal is fine; a redirected write is not
            op()
    # The whole lastgood folder swapped for a symlink out of the state dir.
    (state / "lastgood/daemon.json").unlink()
    (state / "lastgood").rmdir()
    os.symlink(canary / "lastgood", state / "lastgood")
    with pytest.raises(OSError):
        store.save_last_good("daemon.json", b"{}\n")
    assert snapshot(canary) == before


@pytest.mark.root
def test_heartbeat_never_follows_a_planted_link(tmp_path: Path) -> None:
    from nodeguard import health

    canary = tmp_path / "canary"
    _canary_file(canary / "target", "canary\n")
    before = snapshot(canary)
    state = tmp_path / "state"
    state.mkdir()
    # The temporary name is predictable (one per process): whoever can write the state dir can plant it.
    os.symlink(canary / "target", state / temp_name(health.HEARTBEAT_FILE))
    with contextlib.suppress(OSError):
        health.write_heartbeat(state)
    assert snapshot(canary) == before


@pytest.mark.root
def test_the_old_kube_open_drifts_file_is_removed_never_followed(tmp_path: Path) -> None:
    # The sink no longer writes a file of its own (findings.json is the record); the name an older
    # version wrote is removed at start. A link planted there goes, not what it points to.
    from nodeguard.events import kube

    canary = tmp_path / "canary"
    _canary_file(canary / "target", "canary\n")
    before = snapshot(canary)
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(canary / "target", state / kube.OLD_OPEN_DRIFTS_FILE)
    assert kube.kube_sink_from_env({}, state_dir=state) is None
    assert not os.path.lexists(state / kube.OLD_OPEN_DRIFTS_FILE)
    assert snapshot(canary) == before
