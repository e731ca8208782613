"""HostRoot: every host path resolved inside the root, reads bounded, writes atomic and symlink-proof."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodeguard.host import FileChanged, FileTooLarge, HostPathError, HostRoot, NotRegularFile
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root
from tests.support.walkers import WALKER_NAMES, use_walker


@pytest.fixture(autouse=True, params=WALKER_NAMES)
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both walkers: openat2 (RESOLVE_IN_ROOT) and the userspace fallback."""
    return use_walker(request.param, monkeypatch)


@pytest.fixture
def host(sandbox: Sandbox) -> HostRoot:
    return HostRoot(sandbox.root)


# -- resolution ------------------------------------------------------------------------------------


def test_absolute_symlink_stays_inside_the_root(sandbox: Sandbox, host: HostRoot) -> None:
    # The sandbox has /var/run -> /run, as most distributions do.
    assert os.readlink(sandbox.path("/var/run")) == "/run"
    assert host.resolve("/var/run/docker.sock") == sandbox.root / "run/docker.sock"
    assert host.resolve("/var/run") == sandbox.root / "run"
    assert host.resolve("/var/run", follow_last=False) == sandbox.root / "var/run"


@pytest.mark.parametrize("path", ["/../../../etc/passwd", "/etc/../../../../etc/passwd",
                                  "/etc/docker/../../../etc/passwd", "../etc/passwd"])
def test_dotdot_cannot_climb_out(host: HostRoot, sandbox: Sandbox, path: str) -> None:
    assert host.resolve(path) == sandbox.root / "etc/passwd"


def test_relative_symlink_cannot_climb_out(sandbox: Sandbox, host: HostRoot) -> None:
    os.symlink("../../../../../../../../etc/passwd", sandbox.path("/etc/docker/daemon.json"))
    assert host.resolve("/etc/docker/daemon.json") == sandbox.root / "etc/passwd"
    os.symlink("/", sandbox.path("/etc/docker/up"))
    assert host.resolve("/etc/docker/up/../..") == sandbox.root


def test_missing_components_name_where_the_file_would_be(sandbox: Sandbox, host: HostRoot) -> None:
    assert host.resolve("/nope/deeper/../file") == sandbox.root / "nope/file"
    assert host.resolve("/var/run/nope/x") == sandbox.root / "run/nope/x"


@pytest.mark.parametrize("links", [{"a": "a"}, {"a": "b", "b": "a"}, {"a": "/etc/docker/b", "b": "./a"}])
def test_symlink_loops_raise(sandbox: Sandbox, host: HostRoot, links: dict[str, str]) -> None:
    for name, target in links.items():
        os.symlink(target, sandbox.path(f"/etc/docker/{name}"))
    with pytest.raises(HostPathError):
        host.resolve("/etc/docker/a")
    with pytest.raises(HostPathError):
        host.read_bytes("/etc/docker/a")


def test_a_file_in_the_middle_of_a_path_raises(host: HostRoot) -> None:
    with pytest.raises(HostPathError):
        host.resolve("/etc/passwd/x")


def test_host_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(HostPathError):
        HostRoot(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(HostPathError):
        HostRoot(tmp_path / "f")


def test_from_daemon_path(sandbox: Sandbox, host: HostRoot) -> None:
    inside = str(sandbox.root / "etc/docker/daemon.json")
    # A sandboxed daemon names paths under the root: taken as they are, not prefixed twice.
    assert host.from_daemon_path(inside) == "/etc/docker/daemon.json"
    assert host.from_daemon_path(str(sandbox.root)) == "/"
    # A host-namespace path stays a host path.
    assert host.from_daemon_path("/etc/docker/ca.pem") == "/etc/docker/ca.pem"
    # A sibling folder that merely shares the prefix is not "under the root".
    assert host.from_daemon_path(str(sandbox.root) + "-other/ca.pem") == str(sandbox.root) + "-other/ca.pem"
    assert HostRoot("/").from_daemon_path(inside) == inside


def test_host_path_of(sandbox: Sandbox, host: HostRoot) -> None:
    assert host.host_path_of(sandbox.root / "run/docker.sock") == "/run/docker.sock"
    assert host.host_path_of(sandbox.root) == "/"


# -- reading ---------------------------------------------------------------------------------------


def test_read_bytes_refuses_a_fifo_without_hanging(sandbox: Sandbox, host: HostRoot) -> None:
    os.mkfifo(sandbox.path("/etc/docker/daemon.json"))
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(host.read_bytes, "/etc/docker/daemon.json")
        try:
            exc = fut.exception(timeout=5)
        finally:
            if not fut.done():  # unblock a hung reader so the test fails instead of hanging
                fd = os.open(sandbox.path("/etc/docker/daemon.json"), os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
    assert isinstance(exc, NotRegularFile)
    assert exc.kind == "fifo"


def test_read_bytes_refuses_a_folder(host: HostRoot) -> None:
    with pytest.raises(NotRegularFile):
        host.read_bytes("/etc/docker")


def test_read_bytes_refuses_a_file_above_the_limit(sandbox: Sandbox, host: HostRoot) -> None:
    sandbox.write("/etc/docker/daemon.json", "x" * 1001)
    with pytest.raises(FileTooLarge) as exc_info:
        host.read_bytes("/etc/docker/daemon.json", limit=1000)
    assert exc_info.value.size == 1001
    assert host.read_bytes("/etc/docker/daemon.json", limit=1001) == b"x" * 1001


def test_symlink_pointing_outside_is_resolved_inside(sandbox: Sandbox, host: HostRoot, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text('{"outside": true}')
    os.symlink(str(outside), sandbox.path("/etc/docker/daemon.json"))
    # The same path inside the root does not exist: nothing is read, certainly not the outside file.
    with pytest.raises(FileNotFoundError):
        host.read_bytes("/etc/docker/daemon.json")
    # Where it does exist inside the root, that is what is read.
    sandbox.write(str(outside), '{"inside": true}')
    assert host.read_bytes("/etc/docker/daemon.json") == b'{"inside": true}'
    # follow=False refuses the symlink itself.
    with pytest.raises(OSError):
        host.read_bytes("/etc/docker/daemon.json", follow=False)


def test_stat_and_lstat(sandbox: Sandbox, host: HostRoot) -> None:
    sandbox.write("/run/docker.pid", "1\n", 0o640)
    st = host.stat("/var/run/docker.pid")
    assert st is not None
    assert (st.kind, st.mode_octal, st.host_path) == ("file", "0640", "/var/run/docker.pid")
    link = host.lstat("/var/run")
    assert link is not None and link.kind == "symlink"
    assert host.stat("/nope") is None
    assert host.listdir("/var/run") == ["docker.pid"]
    assert host.listdir("/nope") == []


# -- writing ---------------------------------------------------------------------------------------


@pytest.mark.root
def test_write_atomic_keeps_owner_and_mode_and_leaves_no_temp_file(sandbox: Sandbox, host: HostRoot) -> None:
    require_root()
    p = sandbox.write("/etc/docker/daemon.json", '{"old": 1}\n', 0o640)
    os.chown(p, 1000, DOCKER_GID)
    before = p.stat()
    host.write_atomic("/etc/docker/daemon.json", b'{"new": 2}\n', expect=host.lstat("/etc/docker/daemon.json"))
    after = p.stat()
    assert p.read_bytes() == b'{"new": 2}\n'
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o640, 1000, DOCKER_GID)
    assert after.st_ino != before.st_ino  # replaced by rename, not rewritten in place
    assert os.listdir(p.parent) == ["daemon.json"]


@pytest.mark.root
def test_write_atomic_creates_a_missing_file_with_the_defaults(sandbox: Sandbox, host: HostRoot) -> None:
    require_root()
    host.write_atomic("/etc/docker/daemon.json", b"{}\n", default_mode=0o600)
    st = sandbox.path("/etc/docker/daemon.json").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)


def test_write_atomic_refuses_a_symlink_target(sandbox: Sandbox, host: HostRoot) -> None:
    target = sandbox.write("/etc/real.json", "keep")
    os.symlink("/etc/real.json", sandbox.path("/etc/docker/daemon.json"))
    with pytest.raises(NotRegularFile):
        host.write_atomic("/etc/docker/daemon.json", b"{}")
    assert target.read_text() == "keep"
    assert os.readlink(sandbox.path("/etc/docker/daemon.json")) == "/etc/real.json"
    assert sorted(os.listdir(sandbox.path("/etc/docker"))) == ["daemon.json"]


def test_write_atomic_refuses_a_fifo_and_a_swapped_file(sandbox: Sandbox, host: HostRoot) -> None:
    os.mkfifo(sandbox.path("/etc/docker/fifo"))
    with pytest.raises(NotRegularFile):
        host.write_atomic("/etc/docker/fifo", b"{}")
    p = sandbox.write("/etc/docker/daemon.json", "{}")
    audited = host.lstat("/etc/docker/daemon.json")
    # Moved aside rather than unlinked, so the new file cannot reuse the audited inode number.
    p.rename(p.with_name("daemon.json.old"))
    sandbox.write("/etc/docker/daemon.json", '{"swapped": true}')
    with pytest.raises(FileChanged):
        host.write_atomic("/etc/docker/daemon.json", b"{}", expect=audited)
    assert p.read_text() == '{"swapped": true}'


def test_chmod_refuses_a_symlink(sandbox: Sandbox, host: HostRoot) -> None:
    target = sandbox.write("/etc/real.json", "x", 0o644)
    os.symlink("/etc/real.json", sandbox.path("/etc/docker/daemon.json"))
    with pytest.raises(NotRegularFile):
        host.chmod("/etc/docker/daemon.json", 0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
