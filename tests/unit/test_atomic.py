"""nodeguard.host.atomic: the one write-temp-then-rename (HostRoot, heartbeat and Kubernetes sink use it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nodeguard.host.atomic import replace_file, replace_path, temp_name


def test_replace_path_creates_the_folder_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.json"
    replace_path(target, b"one\n", mode=0o600)
    assert target.read_bytes() == b"one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    replace_path(target, b"two\n", mode=0o644, durable=False)
    assert target.read_bytes() == b"two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(target.parent)) == ["file.json"]  # no temporary file left


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_link_planted_under_the_temporary_name_is_never_written_through(tmp_path: Path, plant: str) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"canary\n")
    folder = tmp_path / "state"
    folder.mkdir()
    planted = folder / temp_name("file")
    if plant == "symlink":
        planted.symlink_to(outside)
    else:
        os.link(outside, planted)
    replace_path(folder / "file", b"new\n", mode=0o600)
    assert outside.read_bytes() == b"canary\n"
    assert (folder / "file").read_bytes() == b"new\n"


def test_a_failure_before_the_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"old\n")

    def prepare(fd: int) -> None:
        raise OSError("refused")

    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match="refused"):
            replace_file(dir_fd, "file", b"new\n", mode=0o644, prepare=prepare)
    finally:
        os.close(dir_fd)
    assert (tmp_path / "file").read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["file"]
