"""Waiting for a lock another process holds: shared by shadow-utils' lckpwdf and the xtables lock."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable


def acquire_by(try_lock: Callable[[], None], timeout: float, interval: float) -> None:
    """Call a non-blocking `try_lock` until it succeeds; after `timeout` seconds, or on any error
    other than "held by someone else", its last OSError is raised for the caller to explain."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            try_lock()
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise
            time.sleep(interval)
