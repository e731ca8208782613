"""Commands pay only for what they run: the light ones import none of the heavy libraries.

Each command runs in a fresh interpreter (so nothing another test imported counts), then the
modules it loaded are listed. `health` is the pod's exec probe, run every few seconds on every node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO

HEAVY = ("docker", "kubernetes", "opentelemetry", "pyroute2", "cryptography", "iptc", "grpc")

_RUN_CLI = """
import json, sys
sys.argv = ["nodeguard", *json.loads(sys.argv[1])]
from nodeguard.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

_RUN_PROBE = """
import json, sys, runpy
sys.argv = ["nodeguard.health", *json.loads(sys.argv[1])]
try:
    runpy.run_module("nodeguard.health", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_after(code: str, args: list[str]) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    modules: list[str] = json.loads(proc.stderr.strip().splitlines()[-1])
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("args", [
    ["version"],
    ["health", "--state-dir", "{tmp}"],
    ["policy", "validate", str(REPO / "config" / "policy.yaml")],
    ["events", "verify", "{tmp}/events.jsonl"],
])
def test_light_commands_import_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("")
    top = loaded_after(_RUN_CLI, [a.format(tmp=tmp_path) for a in args])
    assert "nodeguard" in top
    assert sorted(top & set(HEAVY)) == []


def test_the_probe_imports_no_heavy_library(tmp_path: Path) -> None:
    top = loaded_after(_RUN_PROBE, ["--state-dir", str(tmp_path)])
    assert sorted(top & {*HEAVY, "typer", "pydantic"}) == []


def test_the_heavy_imports_are_really_seen(tmp_path: Path) -> None:
    """The tests above can fail: `check` of the runtime control does load the Docker SDK."""
    (tmp_path / "etc" / "docker").mkdir(parents=True)
    (tmp_path / "etc" / "docker" / "daemon.json").write_text("{}")
    top = loaded_after(_RUN_CLI, ["check", "--host-root", str(tmp_path), "--only", "runtime"])
    assert "docker" in top


def test_version_is_answered_before_the_cli_is_built() -> None:
    code = ("import json, runpy, sys; sys.argv = ['nodeguard', 'version']\n"
            "runpy.run_module('nodeguard', run_name='__main__')\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() and proc.stdout.strip()[0].isdigit()
    top = {m.split(".")[0] for m in json.loads(proc.stderr.strip().splitlines()[-1])}
    assert sorted(top & {*HEAVY, "typer", "pydantic", "rich"}) == []
