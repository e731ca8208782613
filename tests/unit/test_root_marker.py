"""The root marker is enforced: a test that needs root and does not carry `@pytest.mark.root` fails.

The helpers below stand for tests; they are read by `needs_root`, never collected (no `test_` name).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import root_marker, sandbox
from tests.support.dockerd import running_dockerd
from tests.support.netns import netns
from tests.support.sandbox import Sandbox, require_root, usermod_add


def calls_require_root() -> None:
    require_root()


def calls_it_through_the_module() -> None:
    sandbox.require_root()


def starts_a_dockerd(sb: Sandbox) -> None:
    with running_dockerd(sb):
        pass


def makes_a_netns() -> None:
    with netns("x"):
        pass


def runs_usermod(sb: Sandbox) -> None:
    usermod_add(sb, "bob")


def chowns(path: Path) -> None:
    os.chown(path, 1000, 1000)


def through_a_local_helper() -> None:
    calls_require_root()


@contextmanager
def local_context_manager() -> Iterator[None]:
    require_root()
    yield


def through_a_local_context_manager() -> None:
    with local_context_manager():
        pass


def pure(sb: Sandbox) -> None:
    sb.write("/etc/docker/daemon.json", "{}")
    os.chmod(sb.path("/etc/docker/daemon.json"), 0o600)


@pytest.mark.parametrize("fn", [calls_require_root, calls_it_through_the_module, starts_a_dockerd, makes_a_netns,
                                runs_usermod, chowns, through_a_local_helper, through_a_local_context_manager])
def test_code_that_needs_root_is_found(fn: object) -> None:
    assert root_marker.needs_root(fn)  # type: ignore[arg-type]


def test_code_that_does_not_is_left_alone() -> None:
    assert not root_marker.needs_root(pure)
    assert not root_marker.needs_root(test_code_that_does_not_is_left_alone)


def test_an_unmarked_item_fails(request: pytest.FixtureRequest) -> None:
    # What require_root() does first, asked about this very test, which carries no root marker.
    with pytest.raises(pytest.fail.Exception, match=r"carries no @pytest\.mark\.root"):
        root_marker.check(request.node)


@pytest.mark.root
def test_a_marked_item_passes(request: pytest.FixtureRequest) -> None:
    root_marker.check(request.node)
    root_marker.check()  # the item require_root() sees: this one, set by tests/conftest.py


def test_the_collected_suite_has_no_unmarked_root_test(request: pytest.FixtureRequest) -> None:
    # tests/conftest.py fails such a test at setup; here the same verdict, over what this run collected.
    unmarked = root_marker.unmarked_root_tests(request.session.items)
    assert unmarked == [], [i.nodeid for i in unmarked]
