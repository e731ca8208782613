"""Rendering an audit for people (a rich table) and for machines (JSON)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from nodeguard._version import __version__
from nodeguard.audit import AuditReport
from nodeguard.structs import Finding, Status

_STATUS_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIP: "dim"}


def _short(value: Any, width: int = 48) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def to_json(report: AuditReport, host_root: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": __version__,
        "host_root": host_root,
        "findings": [f.to_json() for f in report.findings],
        "summary": report.summary(),
    }
    if extra:
        out.update(extra)
    return out


def render_table(report: AuditReport, console: Console, *, show_passed: bool = True) -> None:
    table = Table(show_lines=False, header_style="bold", expand=False)
    for col in ("status", "control", "rule", "cis", "sev", "mode", "observed", "expected", "message"):
        table.add_column(col, overflow="fold")
    rows: list[Finding] = sorted(
        report.findings, key=lambda f: ({Status.FAIL: 0, Status.PASS: 1, Status.SKIP: 2}[f.status], f.control))
    for f in rows:
        if not show_passed and f.status is not Status.FAIL:
            continue
        table.add_row(
            f"[{_STATUS_STYLE[f.status]}]{f.status.value}[/]", f.control, f.rule, f.cis or "",
            f.severity.value, f.mode.value, _short(f.observed), _short(f.expected), f.message)
    console.print(table)
    s = report.summary()
    console.print(f"{s['fail']} failed, {s['pass']} passed, {s['skip']} skipped ({s['total']} checks)")
