"""Commands pay only for what they run: the light ones import none of the heavy libraries.

Each command runs in a fresh interpreter (so nothing another test imported counts), then the
modules it loaded are listed. `health` is the pod's exec probe, run every few seconds on every node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.cli import REPO
from tests.support.netns import netns, nsenter
from tests.support.sandbox import make_sandbox, require

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


def modules_after(code: str, args: list[str], prefix: Sequence[str] = ()) -> tuple[set[str], str]:
    """Every module loaded by `code` run on `args` in a fresh interpreter (after `prefix`: nsenter), and its stdout."""
    proc = subprocess.run([*prefix, sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    modules: list[str] = json.loads(proc.stderr.strip().splitlines()[-1])
    return set(modules), proc.stdout


def loaded_after(code: str, args: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules_after(code, args)[0]}


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
    # The policy is validated with msgspec: pydantic (~160 ms of imports and model building) is no dependency.
    assert "pydantic" not in top


def test_the_probe_imports_no_heavy_library(tmp_path: Path) -> None:
    top = loaded_after(_RUN_PROBE, ["--state-dir", str(tmp_path)])
    assert sorted(top & {*HEAVY, "typer", "pydantic", "click"}) == []


def test_check_for_tools_loads_the_cli_parser_alone(tmp_path: Path) -> None:
    """`check --format json` parses with click; rich (the table) and the exporters are not loaded."""
    top = loaded_after(_RUN_CLI, ["check", "--host-root", str(tmp_path), "--only", "socket", "--format", "json"])
    assert "click" in top
    assert "msgspec" in top  # the policy was loaded (and validated without pydantic)
    assert sorted(top & {*HEAVY, "typer", "rich", "pydantic"}) == []


_RUN_AUDIT = """
import json, sys
from nodeguard.audit import run_audit
from nodeguard.policy import load_policy
run_audit(json.loads(sys.argv[1])[0], load_policy(), only=["runtime"])
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def test_the_heavy_imports_are_really_seen(tmp_path: Path) -> None:
    """The tests above can fail: the runtime control read in process (the agent's way) loads the Docker SDK."""
    (tmp_path / "etc" / "docker").mkdir(parents=True)
    (tmp_path / "etc" / "docker" / "daemon.json").write_text("{}")
    assert "docker" in loaded_after(_RUN_AUDIT, [str(tmp_path)])


def test_check_leaves_the_docker_sdk_to_its_forked_reader(tmp_path: Path) -> None:
    """`check` of the runtime control imports the SDK in its forked reader (nodeguard.api_prefetch),
    never in the process that loads the policy and runs the other controls."""
    (tmp_path / "etc" / "docker").mkdir(parents=True)
    (tmp_path / "etc" / "docker" / "daemon.json").write_text("{}")
    loaded, out = modules_after(_RUN_CLI, ["check", "--host-root", str(tmp_path), "--only", "runtime",
                                           "--format", "json"])
    assert "nodeguard.api_prefetch" in loaded and "nodeguard.controls.runtime" in loaded
    assert "docker" not in {m.split(".")[0] for m in loaded}
    # The runtime control ran, and its reader answered (no socket here: the reader says so).
    runtime = [f for f in json.loads(out)["findings"] if f["control"] == "runtime"]
    assert runtime and all("no daemon socket" in f["message"] for f in runtime if f["status"] == "skip"), runtime


def test_version_is_answered_before_the_cli_is_built() -> None:
    code = ("import json, runpy, sys; sys.argv = ['nodeguard', 'version']\n"
            "runpy.run_module('nodeguard', run_name='__main__')\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() and proc.stdout.strip()[0].isdigit()
    loaded = set(json.loads(proc.stderr.strip().splitlines()[-1]))
    top = {m.split(".")[0] for m in loaded}
    assert sorted(top & {*HEAVY, "typer", "pydantic", "rich"}) == []
    # The version is a literal in nodeguard/_version.py, not looked up in the installed metadata.
    assert "importlib.metadata" not in loaded


def test_the_probe_does_not_look_up_the_installed_metadata(tmp_path: Path) -> None:
    loaded, _ = modules_after(_RUN_PROBE, ["--state-dir", str(tmp_path)])
    assert "importlib.metadata" not in loaded


def test_the_version_literal_is_the_installed_one() -> None:
    """pyproject.toml reads the version from nodeguard/_version.py: one place, both agree."""
    from importlib.metadata import version

    from nodeguard._version import __version__

    assert version("nodeguard") == __version__


@pytest.mark.root
@pytest.mark.netns
def test_check_on_an_nf_tables_host_loads_neither_pyroute2_nor_python_iptables(tmp_path: Path) -> None:
    """A full `check` in a fresh network namespace (nf_tables usable, no legacy table loaded).

    The listeners control reads inet_diag with nodeguard.sock_diag, never pyroute2; `backend: auto`
    imports python-iptables only when a legacy table must be read or legacy is chosen. The output
    shows both controls really ran: the firewall chose nf_tables, the listeners read the kernel.
    """
    from nodeguard.netfilter.libnft import shared_nft

    require(shared_nft().available, "needs libnftables or nft (the nf_tables backend)")
    sb = make_sandbox(tmp_path / "root")
    sb.write("/etc/docker/daemon.json", "{}")
    with netns("imports") as ns:
        loaded, out = modules_after(_RUN_CLI, ["check", "--host-root", str(sb.root), "--format", "json"],
                                    prefix=nsenter(ns))
    top = {m.split(".")[0] for m in loaded}
    assert "pyroute2" not in top
    assert "iptc" not in top
    assert "nodeguard.sock_diag" in loaded
    findings = json.loads(out)["findings"]
    backend = next(f for f in findings if f["control"] == "firewall" and f["rule"] == "backend-available")
    assert backend["status"] == "pass" and backend["observed"] == "nftables", backend
    assert "python-iptables not needed" in backend["details"]["probes"]["iptables-legacy"]
    listeners = [f for f in findings if f["control"] == "listeners"]
    assert listeners and not any("socket diagnostics unavailable" in f["message"] for f in listeners), listeners
