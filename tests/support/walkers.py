"""Run a test module on every in-root walker (openat2 and the userspace fallback), not only the default."""

from __future__ import annotations

import pytest

from nodeguard.host import walk as host_walk
from tests.support.sandbox import require

WALKER_NAMES = sorted(host_walk.WALKERS)


def use_walker(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make every HostRoot built during the test (the test's own and those state.py, health.py or
    kube.py build inside) walk with `name`."""
    if name == "openat2":
        require(host_walk.openat2_available(),
                "this kernel does not let us call openat2 (ENOSYS, or filtered by seccomp)")
    monkeypatch.setattr(host_walk, "DEFAULT", name)
    return name
