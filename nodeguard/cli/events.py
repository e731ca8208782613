"""`nodeguard events ...`: work with exported events (verify a chain)."""

from __future__ import annotations

from pathlib import Path

import click

from nodeguard.cli.flags import Command, DocArgument, group
from nodeguard.exit_codes import ExitCode

events_app = group("events", "Work with exported events.")


@events_app.command("verify", cls=Command)
@click.argument("file", type=click.Path(path_type=Path), cls=DocArgument,
                doc="Events exported as JSON lines (the agent's --events-file).")
@click.option("--quiet", "-q", is_flag=True, help="Print problems and the verdict only.")
def events_verify(file: Path, quiet: bool) -> None:
    """Check the hash chain of an events file: missing, altered or reordered events, by line.

    Exit 0: the chain is intact (duplicates from redelivery and drops the spool declared are
    reported, not failures); 1: an event is missing, altered or out of place; 2: unreadable file.
    """
    from nodeguard.events.verify import verify_file

    try:
        report = verify_file(file)
    except OSError as exc:
        click.echo(f"{file}: {exc.strerror or exc}", err=True)
        raise click.exceptions.Exit(ExitCode.USAGE) from None
    remarks = sorted(report.problems + ([] if quiet else report.notes), key=lambda r: r.line)
    for remark in remarks:
        level = "error" if remark in report.problems else "note"
        click.echo(f"{file}:{remark.line}: {level}: {remark.kind}: {remark.message}")
    if report.ok:
        dup = f", {report.duplicates} duplicate line(s)" if report.duplicates else ""
        click.echo(f"{file}: chain intact: {report.events} events{dup}")
        raise click.exceptions.Exit(ExitCode.OK)
    click.echo(f"{file}: chain BROKEN: {len(report.problems)} problem(s) in {report.events} events")
    raise click.exceptions.Exit(ExitCode.FAILED)
