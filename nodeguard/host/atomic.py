"""Replace a file in one step: readers see the old bytes or the new, never half of them.

The one write-temp-then-rename of the code base. HostRoot.write_atomic (host files and the state
dir), the heartbeat and the Kubernetes sink's open-drifts file all call `replace_file`; each adds
only what is its own (HostRoot copies the old file's owner and attributes through `prepare`).

Standard library only: the exec probe's module (health) imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def temp_name(name: str) -> str:
    """The temporary sibling `replace_file` writes first. Predictable (one per process), so it is
    always created exclusively, never opened through whatever was planted under that name."""
    return f".{name}.nodeguard-{os.getpid()}.tmp"


def replace_file(dir_fd: int, name: str, data: bytes, *, mode: int, durable: bool = True,
                 prepare: Callable[[int], None] | None = None) -> None:
    """Write `data` under `name` in the folder open as `dir_fd` (O_RDONLY|O_DIRECTORY, not O_PATH).

    The temporary file is created with mode 0 (it grants nothing until it is complete), then
    `prepare(fd)` runs (owner, attributes...), then the mode is set. `durable` fsyncs the file
    before the rename and the folder after it: a power cut leaves the old file or the new one.
    Without it a SIGKILL still does (the rename is atomic), which is enough for a heartbeat.
    Any failure removes the temporary file and re-raises: the old file stays whole.
    """
    tmp = temp_name(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    # O_EXCL|O_NOFOLLOW: a symlink or hard link planted under the temporary name would carry the
    # write out of the folder; O_EXCL refuses both (the unlink above took away ours).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if prepare is not None:
                prepare(fd)
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        os.fsync(dir_fd)


def replace_path(path: str | os.PathLike[str], data: bytes, *, mode: int, durable: bool = True) -> None:
    """`replace_file` for a path of the agent's own (state dir, heartbeat): its folder is created
    if missing. Not for host files: those go through HostRoot, which never follows a link."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_file(dir_fd, target.name, data, mode=mode, durable=durable)
    finally:
        os.close(dir_fd)
