"""Count what one `check` pass reads from the host: file reads by host path, and netfilter dumps.

The host root and the backends are the real ones; the counters only watch them: `CountingHost`
tallies every whole-file read made through the root, `counting_dumps` every `read_state` of a
netfilter backend (one dump of nodeguard's chains), nested calls counted once.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodeguard.host import DEFAULT_READ_LIMIT, HostRoot


class CountingHost(HostRoot):
    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def read_bytes(self, host_path: str, *, limit: int = DEFAULT_READ_LIMIT, follow: bool = True) -> bytes:
        self.reads[host_path] += 1
        return super().read_bytes(host_path, limit=limit, follow=follow)


@contextlib.contextmanager
def counting_dumps() -> Iterator[Counter[str]]:
    """Every netfilter backend's read_state counted while the block runs (then put back)."""
    from nodeguard.netfilter.backend import Backend
    from nodeguard.netfilter.nft import NftablesBackend
    from nodeguard.netfilter.xtables import XtablesLegacyBackend
    from nodeguard.netfilter.xtables_nft import XtablesNftBackend

    dumps: Counter[str] = Counter()
    depth = [0]
    saved: list[tuple[type[Backend], Any]] = []

    def counted(cls: type[Backend], original: Any) -> Any:
        def read_state(self: Backend) -> Any:
            if depth[0] == 0:
                dumps[cls.__name__] += 1
            depth[0] += 1
            try:
                return original(self)
            finally:
                depth[0] -= 1
        return read_state

    for cls in (NftablesBackend, XtablesLegacyBackend, XtablesNftBackend):
        original = cls.__dict__["read_state"]
        saved.append((cls, original))
        setattr(cls, "read_state", counted(cls, original))  # noqa: B010 (a method put back below)
    try:
        yield dumps
    finally:
        for cls, original in saved:
            setattr(cls, "read_state", original)  # noqa: B010


def one_check_pass(host_root: str, policy_path: str | None = None) -> dict[str, Any]:
    """One full `check` pass (every control), with what it read: call it in a network namespace."""
    from nodeguard.audit import run_audit
    from nodeguard.policy import load_policy

    policy = load_policy(policy_path)
    host = CountingHost(host_root)
    with counting_dumps() as dumps:
        report = run_audit(host, policy)
    return {"reads": dict(host.reads), "dumps": sum(dumps.values()),
            "daemon_json": policy.spec.controls.daemon_config.path, "pid_file": policy.spec.daemon.pid_file,
            "errors": {r.control.name: r.error for r in report.results if r.error is not None},
            "controls": [r.control.name for r in report.results],
            "findings": [f.to_json() for f in report.findings]}
