"""Shared fixtures: a sandbox host root per test, and a real dockerd on demand."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandbox import Sandbox, make_sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Short paths: dockerd's containerd socket lives under the root and unix sockets cap at 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    try:
        yield make_sandbox(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
