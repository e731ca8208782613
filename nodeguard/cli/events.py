"""`nodeguard events ...`: work with exported events (verify a chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nodeguard.exit_codes import ExitCode

events_app = typer.Typer(help="Work with exported events.", no_args_is_help=True)


@events_app.command("verify")
def events_verify(
    file: Annotated[Path, typer.Argument(help="Events exported as JSON lines (the agent's --events-file).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print problems and the verdict only.")] = False,
) -> None:
    """Check the hash chain of an events file: missing, altered or reordered events, by line.

    Exit 0: the chain is intact (duplicates from redelivery and drops the spool declared are
    reported, not failures); 1: an event is missing, altered or out of place; 2: unreadable file.
    """
    from nodeguard.events.verify import verify_file

    try:
        report = verify_file(file)
    except OSError as exc:
        typer.echo(f"{file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(ExitCode.USAGE) from None
    remarks = sorted(report.problems + ([] if quiet else report.notes), key=lambda r: r.line)
    for remark in remarks:
        level = "error" if remark in report.problems else "note"
        typer.echo(f"{file}:{remark.line}: {level}: {remark.kind}: {remark.message}")
    if report.ok:
        dup = f", {report.duplicates} duplicate line(s)" if report.duplicates else ""
        typer.echo(f"{file}: chain intact: {report.events} events{dup}")
        raise typer.Exit(ExitCode.OK)
    typer.echo(f"{file}: chain BROKEN: {len(report.problems)} problem(s) in {report.events} events")
    raise typer.Exit(ExitCode.FAILED)
