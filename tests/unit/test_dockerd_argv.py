"""dockerd.dockerd_argv: the one "is this pid dockerd" check (find_daemon and the SIGHUP guard)."""

from __future__ import annotations

import os
from pathlib import Path

from nodeguard.dockerd import dockerd_argv


def _proc(tmp_path: Path, pid: int, cmdline: bytes) -> Path:
    (tmp_path / str(pid)).mkdir(parents=True)
    (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
    return tmp_path


def test_dockerd_by_its_program_name(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 42, b"/usr/bin/dockerd\0-H\0fd://\0")
    assert dockerd_argv(proc, 42) == ["/usr/bin/dockerd", "-H", "fd://"]


def test_anything_else_is_not_dockerd(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 1, b"/usr/bin/dockerd-rootless.sh\0")
    _proc(tmp_path, 2, b"")  # a kernel thread or a zombie
    _proc(tmp_path, 3, b"/bin/sh\0-c\0dockerd\0")
    assert [dockerd_argv(proc, pid) for pid in (1, 2, 3, 4)] == [None, None, None, None]  # 4: gone
    assert dockerd_argv(Path("/proc"), os.getpid()) is None  # the real /proc: this is python
