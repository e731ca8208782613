"""The `nodeguard` command: check (one-shot audit), run (the agent), policy, version."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nodeguard._version import __version__
from nodeguard.audit import run_audit
from nodeguard.controls import control_names
from nodeguard.host import HostPathError, HostRoot
from nodeguard.policy import Policy, PolicyError, load_policy
from nodeguard.report import render_table, to_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="nodeguard",
    help="Hold a Docker host to a written security policy: audit it once (check) or keep it there (run).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

err = Console(stderr=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


HostRootOpt = Annotated[
    Path,
    typer.Option("--host-root", envvar="NODEGUARD_HOST_ROOT",
                 help="Where the host's filesystem is: / from a shell, /host in a pod.", show_default=True),
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", envvar="NODEGUARD_POLICY",
                 help="Policy YAML; names only what it changes from the embedded CIS default."),
]


def _load_policy_or_exit(path: Path | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        err.print(f"[red]policy rejected[/]\n{exc.render()}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


def _host_or_exit(path: Path) -> HostRoot:
    try:
        return HostRoot(path)
    except HostPathError as exc:
        err.print(f"[red]{exc.strerror}[/]")
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def check(
    host_root: HostRootOpt = Path("/"),
    policy: PolicyOpt = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="table for people, json for tools.")] = (
        OutputFormat.table),
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"Run only this control (repeatable): {', '.join(control_names())}.")] = None,
    failed_only: Annotated[bool, typer.Option("--failed", help="Table: show failing rules only.")] = False,
) -> None:
    """Audit the host once against the policy. Exit 0: nothing fails; 1: a rule fails; 2: usage or policy error."""
    pol = _load_policy_or_exit(policy)
    known = set(control_names())
    for name in only or []:
        if name not in known:
            err.print(f"[red]unknown control {name!r}[/]; known: {', '.join(sorted(known))}")
            raise typer.Exit(EXIT_USAGE)
    host = _host_or_exit(host_root)
    report = run_audit(host, pol, only=only)
    if output_format is OutputFormat.json:
        sys.stdout.write(json.dumps(to_json(report, str(host.root)), indent=2, default=str) + "\n")
    else:
        render_table(report, Console(), show_passed=not failed_only)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


@policy_app.command("validate")
def policy_validate(
    file: Annotated[Path, typer.Argument(help="The policy file to check.")],
) -> None:
    """Explain what is wrong with a policy file: file, line, field and why. Exit 0 valid, 2 invalid."""
    _load_policy_or_exit(file)
    typer.echo(f"{file}: valid")


@policy_app.command("show")
def policy_show(policy: PolicyOpt = None) -> None:
    """Print the effective policy (the file merged over the embedded default) as JSON."""
    pol = _load_policy_or_exit(policy)
    typer.echo(pol.model_dump_json(by_alias=True, indent=2))


@app.command()
def version() -> None:
    """Print nodeguard's version."""
    typer.echo(__version__)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
