"""How the command line answers a wrong or missing command: what typer's click did, now click's own.

A usage error is exit 2 with the usage and the error on stderr; a group called without a command
prints its help on stdout, exit 2 (nothing was done).
"""

from __future__ import annotations

import pytest

from tests.support.cli import run_nodeguard


@pytest.mark.parametrize(("args", "listed"), [
    ([], ["check", "cis", "events", "firewall", "health", "policy", "run", "version"]),
    (["policy"], ["validate", "show"]),
    (["events"], ["verify"]),
    (["cis"], ["list"]),
    (["firewall"], ["show", "apply", "remove"]),
])
def test_a_group_without_a_command_prints_its_help_and_exits_2(args: list[str], listed: list[str]) -> None:
    proc = run_nodeguard(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("Usage:"), proc.stdout
    for name in listed:
        assert f"\n  {name} " in proc.stdout, (name, proc.stdout)


@pytest.mark.parametrize(("args", "says"), [
    (["check", "--bogus"], "No such option"),
    (["check", "--format", "xml"], "'xml' is not one of"),
    (["check", "--fail-on", "severe"], "'severe' is not one of"),
    (["health", "--max-age", "0"], "--max-age"),
    (["run", "--spool-max-bytes", "1024"], "--spool-max-bytes"),
    (["run", "--mode", "fix"], "--mode"),
    (["policy", "validate"], "Missing argument 'FILE'"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_exit_2_and_say_why_on_stderr(args: list[str], says: str) -> None:
    proc = run_nodeguard(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Usage:" in proc.stderr and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_help_lists_the_export_flags_under_their_own_heading() -> None:
    proc = run_nodeguard("run", "--help")
    assert proc.returncode == 0, proc.stderr
    general, export = proc.stdout.split("\nEvent export:\n", 1)
    for flag in ("--host-root", "--policy", "--mode", "--events-file", "--state-dir", "--log-level",
                 "--metrics-bind-address"):
        assert flag in general, flag
    for flag in ("--otlp-endpoint", "--otlp-protocol", "--otlp-headers", "--otlp-certificate", "--otlp-client-key",
                 "--otlp-client-certificate", "--otlp-insecure / --otlp-secure", "--otlp-timeout", "--ocsf-file",
                 "--spool-max-bytes", "--aggregate-seconds", "--metrics / --no-metrics"):
        assert flag in export, flag
    assert "[default: /var/lib/nodeguard]" in general and "Env: NODEGUARD_STATE_DIR." in general
