"""Kernel limits the agent can run into on a busy node, explained in words an operator can act on.

inotify's limits are per user (uid) and per user namespace, and every container of a node that
runs as root shares the host root's budget: an IDE, a log shipper or another agent can use up
`max_user_watches` long before nodeguard starts. When a watch cannot be added the agent does not
stop: the periodic resync still covers that folder, only later. These helpers say exactly that.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

INOTIFY_SYSCTL_DIR = Path("/proc/sys/fs/inotify")
# The same limits as seen from the caller's user namespace (kernel 4.9+).
USERNS_SYSCTL_DIR = Path("/proc/sys/user")


@dataclass(frozen=True)
class InotifyLimits:
    max_user_watches: int | None
    max_user_instances: int | None
    max_queued_events: int | None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def inotify_limits() -> InotifyLimits:
    """The limits that apply to this process: the user namespace's where it has its own."""
    watches = _read_int(USERNS_SYSCTL_DIR / "max_inotify_watches")
    instances = _read_int(USERNS_SYSCTL_DIR / "max_inotify_instances")
    return InotifyLimits(
        max_user_watches=watches if watches is not None else _read_int(INOTIFY_SYSCTL_DIR / "max_user_watches"),
        max_user_instances=instances if instances is not None
        else _read_int(INOTIFY_SYSCTL_DIR / "max_user_instances"),
        max_queued_events=_read_int(INOTIFY_SYSCTL_DIR / "max_queued_events"),
    )


def is_inotify_limit(exc: BaseException) -> bool:
    """An inotify_add_watch ENOSPC or an inotify_init EMFILE (watchdog raises both as OSError)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EMFILE)


def explain_inotify_error(exc: OSError, path: str, resync_seconds: float | None = None) -> str:
    """One sentence for an event or a log line: what failed, which limit, what still works, the fix.

    ENOSPC from inotify_add_watch is not a full disk: it means fs.inotify.max_user_watches is used
    up. EMFILE from inotify_init means fs.inotify.max_user_instances is.
    """
    limits = inotify_limits()
    fallback = (f"changes there are still found by the periodic resync (every {resync_seconds:g} s), "
                "only later" if resync_seconds else "changes there are still found by the periodic resync, only later")
    if exc.errno == errno.ENOSPC:
        return (f"cannot watch {path}: the inotify watch limit is used up (fs.inotify.max_user_watches="
                f"{limits.max_user_watches}, shared by every process of this user on the node; this is not a full "
                f"disk); {fallback}. Raise it, e.g. sysctl -w fs.inotify.max_user_watches=524288")
    if exc.errno == errno.EMFILE:
        return (f"cannot watch {path}: the inotify instance limit is used up (fs.inotify.max_user_instances="
                f"{limits.max_user_instances}, shared by every process of this user on the node); {fallback}. "
                "Raise it, e.g. sysctl -w fs.inotify.max_user_instances=1024")
    return f"cannot watch {path}: {exc.strerror or exc}; {fallback}"
