"""Which tests need root, found from their code, so a test that does and lacks `@pytest.mark.root` fails.

Two checks, wired in tests/conftest.py:

- at collection, `needs_root(fn)` reads a test's source and the source of every fixture it uses,
  and follows the calls it can resolve (the module's globals, `module.name`, context managers)
  into tests' own helpers, until it finds `require_root()` or a chown. So a test that starts a real dockerd,
  a network namespace, auditd or `usermod` through tests/support is caught before it runs;
- at run time, `require_root()` asks `check(item)` about the test running now, which also catches
  a call the source reading could not follow (a helper reached through an object).

Calls are followed only into code under `tests.`: nodeguard and the libraries never ask for root
through `require_root`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import shutil
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

MARKER = "root"
# Giving a file to another user is root's alone (CAP_CHOWN): a test that does needs root too.
CHOWN = {os.chown, os.lchown, os.fchown, shutil.chown}
_current: pytest.Item | None = None
_verdicts: dict[Any, bool] = {}


def set_current(item: pytest.Item | None) -> None:
    global _current
    _current = item


def check(item: pytest.Item | None = None) -> None:
    """Fail the running test (or `item`) when it needs root and does not say so."""
    item = item if item is not None else _current
    if item is not None and item.get_closest_marker(MARKER) is None:
        pytest.fail(f"{item.nodeid} needs root (it calls require_root()) but carries no @pytest.mark.{MARKER}",
                    pytrace=False)


def _is_require_root(obj: Any) -> bool:
    return getattr(obj, "__name__", None) == "require_root" and _ours(obj)


def _is_chown(obj: Any) -> bool:
    return any(obj is c for c in CHOWN)


def _ours(obj: Any) -> bool:
    return (getattr(obj, "__module__", None) or "").startswith("tests.")


def _called(tree: ast.AST) -> list[ast.expr]:
    """Every callee, and every name handed to a decorator-free call such as `in_netns(ns, fn)`."""
    out: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            out.append(node.func)
            out.extend(a for a in node.args if isinstance(a, ast.Name | ast.Attribute))
    return out


def _resolve(expr: ast.expr, scope: dict[str, Any]) -> Any:
    if isinstance(expr, ast.Name):
        return scope.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, scope)
        if isinstance(base, types.ModuleType | type):
            return getattr(base, expr.attr, None)
    return None


@functools.cache
def _definitions(filename: str) -> dict[int, ast.AST]:
    """A source file's functions, by the first line of their code object (the first decorator's)."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    # Module level and class bodies only: a nested function is never reached through a global name.
    nodes = [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body)]
    out: dict[int, ast.AST] = {}
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[min([d.lineno for d in node.decorator_list] + [node.lineno])] = node
    return out


def _tree_of(fn: Any) -> ast.AST | None:
    # One parse per file rather than inspect.getsource per function: collection reads every test.
    code = getattr(fn, "__code__", None)
    if code is not None:
        return _definitions(code.co_filename).get(code.co_firstlineno)
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None


def needs_root(fn: Callable[..., Any]) -> bool:
    """Whether `fn`, or a helper under tests/ it calls, calls require_root()."""
    fn = inspect.unwrap(fn)
    key = getattr(fn, "__code__", fn)
    if key in _verdicts:
        return _verdicts[key]
    _verdicts[key] = False  # a recursive helper does not loop
    tree = _tree_of(fn)
    if tree is None:
        return False
    scope = dict(getattr(fn, "__globals__", {}))
    if isinstance(fn, type):
        scope = dict(vars(inspect.getmodule(fn) or types.ModuleType("x")))
    verdict = False
    for expr in _called(tree):
        target = _resolve(expr, scope)
        if target is None or target is fn:
            continue
        if _is_require_root(target) or _is_chown(target):
            verdict = True
            break
        if _ours(target) and (inspect.isfunction(target) or isinstance(target, type)) and needs_root(target):
            verdict = True
            break
    _verdicts[key] = verdict
    return verdict


def fixtures_of(item: pytest.Item) -> list[Callable[..., Any]]:
    """The functions of every fixture `item` uses, its fixtures' fixtures included."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [d.func for defs in info.name2fixturedefs.values() for d in defs]


def unmarked_root_tests(items: list[pytest.Item]) -> list[pytest.Item]:
    """The items that need root by their code (or their fixtures') and lack the marker."""
    out = []
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            continue
        fn = getattr(item, "function", None)
        funcs = ([fn] if fn is not None else []) + fixtures_of(item)
        if any(needs_root(f) for f in funcs):
            out.append(item)
    return out
