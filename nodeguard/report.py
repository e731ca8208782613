"""Rendering an audit for people (a rich table) and for machines (JSON)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from nodeguard._version import __version__
from nodeguard.audit import AuditReport
from nodeguard.cis import summarize as cis_summary
from nodeguard.structs import Finding, Status

_STATUS_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIP: "dim"}
# The table fits an 80-column terminal: observed/expected stay in --format json.
_CHECK_WIDTH = 30
_SEVERITY_SHORT = {"critical": "crit", "medium": "med"}


def _check_cell(control: str, rule: str) -> str:
    """control/rule on one line when it fits, else broken after the slash (rich wraps only at spaces)."""
    text = f"{control}/{rule}"
    return text if len(text) <= _CHECK_WIDTH else f"{control}/\n {rule}"


def to_json(report: AuditReport, host_root: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": __version__,
        "host_root": host_root,
        "findings": [f.to_json() for f in report.findings],
        "summary": report.summary(),
        # Per CIS section ("1", "2", "3"): pass/fail/skip/not_checked counts of CIS ids.
        "cis": cis_summary(report.findings),
    }
    if extra:
        out.update(extra)
    return out


def render_table(report: AuditReport, console: Console, *, show_passed: bool = True) -> None:
    table = Table(show_lines=False, header_style="bold", expand=False, box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("status", no_wrap=True)
    table.add_column("control/rule", no_wrap=True, max_width=_CHECK_WIDTH, overflow="fold")
    table.add_column("cis", no_wrap=True)
    table.add_column("sev", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=1)
    rows: list[Finding] = sorted(
        report.findings, key=lambda f: ({Status.FAIL: 0, Status.PASS: 1, Status.SKIP: 2}[f.status], f.control))
    for f in rows:
        if not show_passed and f.status is not Status.FAIL:
            continue
        table.add_row(
            f"[{_STATUS_STYLE[f.status]}]{f.status.value}[/]", _check_cell(f.control, f.rule), f.cis or "",
            _SEVERITY_SHORT.get(f.severity.value, f.severity.value), f.message)
    console.print(table)
    s = report.summary()
    console.print(f"{s['fail']} failed, {s['pass']} passed, {s['skip']} skipped ({s['total']} checks)")
    sections = cis_summary(report.findings)
    console.print("CIS ids: " + "; ".join(
        f"section {sec}: {c['fail']} failed, {c['pass']} passed, {c['skip']} skipped, {c['not_checked']} not checked"
        for sec, c in sections.items()), highlight=False)
