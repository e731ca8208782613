"""Shared fixtures: a sandbox host root per test, and a real dockerd on demand.

Also holds the root marker to account: a test whose code (or a fixture's) calls require_root()
must carry `@pytest.mark.root`, or it fails (tests/support/root_marker.py says how it is found).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support import root_marker
from tests.support.sandbox import Sandbox, make_sandbox

UNMARKED = pytest.StashKey[bool]()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Short paths: dockerd's containerd socket lives under the root and unix sockets cap at 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    try:
        yield make_sandbox(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in root_marker.unmarked_root_tests(items):
        item.stash[UNMARKED] = True


def pytest_report_collectionfinish(items: list[pytest.Item]) -> list[str]:
    # Shown by `pytest --collect-only` too, so a missing marker is seen before anything runs.
    return [f"needs root but has no @pytest.mark.root: {item.nodeid}" for item in items
            if item.stash.get(UNMARKED, False)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    # require_root() asks root_marker about the test running now, fixtures' setup included.
    root_marker.set_current(item)
    try:
        return (yield)
    finally:
        root_marker.set_current(None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(UNMARKED, False):
        root_marker.check(item)
