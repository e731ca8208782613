"""Rendering an audit: a table for people; JSON, SARIF 2.1.0, JUnit XML and OCSF for tools.

Every format reads the same AuditReport and the rule catalog (titles, CIS ids, remediation), so
they cannot disagree about what failed. Nothing here touches the host.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nodeguard._version import __version__
from nodeguard.audit import AuditReport
from nodeguard.catalog import BENCHMARK, BENCHMARK_NAME, BENCHMARK_VERSION, RuleEntry, cis_item, rule_entry
from nodeguard.cis import summarize as cis_summary
from nodeguard.structs import Finding, Severity, Status

if TYPE_CHECKING:
    from rich.console import Console

_STATUS_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIP: "dim"}
# The table fits an 80-column terminal: observed/expected stay in --format json.
_CHECK_WIDTH = 30
_SEVERITY_SHORT = {"critical": "crit", "medium": "med"}
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://github.com/nodeguard/nodeguard"


@dataclass(frozen=True)
class RunInfo:
    """Where and when the audit ran: the metadata every machine format carries."""

    host_root: str
    host_name: str

    def metadata(self, report: AuditReport) -> dict[str, Any]:
        return {
            "nodeguard_version": __version__,
            "benchmark": {"name": BENCHMARK_NAME, "version": BENCHMARK_VERSION, "title": BENCHMARK},
            "start_time": _iso(report.started),
            "end_time": _iso(report.ended),
            "host_name": self.host_name,
            "host_root": self.host_root,
        }


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(f: Finding) -> RuleEntry | None:
    return rule_entry(f.control, f.rule)


def _remediation(f: Finding) -> str | None:
    entry = _entry(f)
    return entry.remediation if entry else None


def _check_cell(control: str, rule: str) -> str:
    """control/rule on one line when it fits, else broken after the slash (rich wraps only at spaces)."""
    text = f"{control}/{rule}"
    return text if len(text) <= _CHECK_WIDTH else f"{control}/\n {rule}"


# -- JSON -------------------------------------------------------------------------------------

def _finding_doc(f: Finding) -> dict[str, Any]:
    doc = f.to_json()
    remediation = _remediation(f)
    if remediation and f.status is Status.FAIL:
        doc["remediation"] = remediation
    return doc


def _document(report: AuditReport, info: RunInfo | str, extra: dict[str, Any] | None,
              findings: Any) -> dict[str, Any]:
    if isinstance(info, str):
        info = RunInfo(info, socket.gethostname())
    out: dict[str, Any] = {
        # Kept beside `metadata` for tools written against the first JSON shape.
        "version": __version__,
        "host_root": info.host_root,
        "metadata": info.metadata(report),
        "findings": findings,
        "summary": report.summary(),
        # Per CIS section ("1", "2", "3"): pass/fail/skip/not_checked counts of CIS ids.
        "cis": cis_summary(report.findings),
    }
    if extra:
        out.update(extra)
    return out


def to_json(report: AuditReport, info: RunInfo | str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report; `info` may be just the host root (the host name is then this machine's)."""
    return _document(report, info, extra, [_finding_doc(f) for f in report.findings])


# Stands for the findings list in the document iter_json encodes, so the list is spliced in as text.
_FINDINGS_SLOT = "\0nodeguard-findings\0"
_JSON_INDENT = 2


def iter_json(report: AuditReport, info: RunInfo | str, extra: dict[str, Any] | None = None) -> Iterator[str]:
    """The text of `json.dumps(to_json(...), indent=2, default=str) + "\\n"`, in pieces, one finding at
    a time: 100,000 findings are never one document in memory (nor the encoder's millions of chunks)."""
    encoder = json.JSONEncoder(indent=_JSON_INDENT, default=str)
    head, slot, tail = encoder.encode(_document(report, info, extra, _FINDINGS_SLOT)).partition(
        encoder.encode(_FINDINGS_SLOT))
    assert slot, "the findings slot is in the document"
    yield head
    # An indented finding is encoded on its own and shifted to the findings list's depth (level 2):
    # a JSON string never holds a raw newline, so every "\\n" is a line break of the layout.
    inner = "\n" + " " * (2 * _JSON_INDENT)
    first = True
    for f in report.iter_findings():
        yield ("[" if first else ",") + inner + encoder.encode(_finding_doc(f)).replace("\n", inner)
        first = False
    yield "[]" if first else "\n" + " " * _JSON_INDENT + "]"
    yield tail + "\n"


# -- the table --------------------------------------------------------------------------------

def render_table(report: AuditReport, console: Console, *, show_passed: bool = True, verbose: bool = False,
                 remediation: bool = False) -> None:
    # rich only for the table: the machine formats do not pay for importing it.
    from rich import box
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold", expand=False, box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("status", no_wrap=True)
    table.add_column("control/rule", no_wrap=True, max_width=_CHECK_WIDTH, overflow="fold")
    table.add_column("cis", no_wrap=True)
    table.add_column("sev", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=1)
    rows: list[Finding] = sorted(
        report.findings, key=lambda f: ({Status.FAIL: 0, Status.PASS: 1, Status.SKIP: 2}[f.status], f.control))
    folded: Counter[str] = Counter()
    for f in rows:
        if not show_passed and f.status is not Status.FAIL:
            continue
        if f.status is Status.SKIP and not verbose:
            # Skips repeat one reason many times (no TLS configured, a file absent): one line per reason.
            folded[f.message] += 1
            continue
        message = f.message
        fix = _remediation(f) if remediation and f.status is Status.FAIL else None
        if fix:
            message += f"\nfix: {fix}"
        table.add_row(
            f"[{_STATUS_STYLE[f.status]}]{f.status.value}[/]", _check_cell(f.control, f.rule), f.cis or "",
            _SEVERITY_SHORT.get(f.severity.value, f.severity.value), message)
    console.print(table)
    for reason, count in sorted(folded.items(), key=lambda kv: (-kv[1], kv[0])):
        console.print(f"[dim]skip  {count} check{'s' if count > 1 else ''}: {reason}[/]", highlight=False)
    if folded:
        console.print("[dim](--verbose lists each skipped check)[/]")
    s = report.summary()
    console.print(f"{s['fail']} failed, {s['pass']} passed, {s['skip']} skipped ({s['total']} checks)")
    sections = cis_summary(report.findings)
    console.print("CIS ids: " + "; ".join(
        f"section {sec}: {c['fail']} failed, {c['pass']} passed, {c['skip']} skipped, {c['not_checked']} not checked"
        for sec, c in sections.items()), highlight=False)


# -- SARIF 2.1.0 ------------------------------------------------------------------------------

_SARIF_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
                Severity.LOW: "warning", Severity.INFO: "note"}
# GitHub code scanning orders alerts by this property (a CVSS-like number, as a string).
_SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                      Severity.LOW: "3.0", Severity.INFO: "0.0"}


def _sarif_rule(control: str, rule: str, f: Finding) -> dict[str, Any]:
    entry = rule_entry(control, rule)
    title = entry.title if entry else f.message
    out: dict[str, Any] = {
        "id": f"{control}/{rule}",
        "name": rule,
        "shortDescription": {"text": title},
        "defaultConfiguration": {"level": _SARIF_LEVEL[f.severity]},
        "properties": {"tags": ["security", control], "security-severity": _SECURITY_SEVERITY[f.severity]},
    }
    item = cis_item(f.cis) if f.cis else None
    if item is not None:
        out["fullDescription"] = {"text": f"CIS {item.id}: {item.title}"}
        out["properties"]["tags"].append(f"CIS-{item.id}")
        out["properties"]["cis"] = item.id
    if entry is not None:
        out["help"] = {"text": entry.remediation}
    return out


def to_sarif(report: AuditReport, info: RunInfo) -> dict[str, Any]:
    """One run; a rule per (control, rule) seen, a result per failing finding."""
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    results: list[dict[str, Any]] = []
    for f in report.findings:
        rid = f"{f.control}/{f.rule}"
        if rid not in index:
            index[rid] = len(rules)
            rules.append(_sarif_rule(f.control, f.rule, f))
        if f.status is not Status.FAIL:
            continue
        result: dict[str, Any] = {
            "ruleId": rid,
            "ruleIndex": index[rid],
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message},
            # The same finding on the same host is the same alert from one run to the next.
            "partialFingerprints": {"nodeguardFinding/v1": f"{info.host_name}/{rid}/{f.subject or ''}"},
            "properties": {"severity": f.severity.value, "mode": f.mode.value},
        }
        if f.path:
            result["locations"] = [{"physicalLocation": {"artifactLocation": {
                "uri": f.path.lstrip("/"), "uriBaseId": "HOSTROOT"}}}]
        if f.subject:
            result["properties"]["subject"] = f.subject
        results.append(result)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "nodeguard", "version": __version__, "semanticVersion": __version__,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "originalUriBaseIds": {"HOSTROOT": {"uri": "file:///",
                                                "description": {"text": f"the host root ({info.host_root})"}}},
            "invocations": [{"executionSuccessful": True, "startTimeUtc": _iso(report.started),
                             "endTimeUtc": _iso(report.ended),
                             "machine": info.host_name}],
            "results": results,
            "properties": {"benchmark": BENCHMARK, "hostRoot": info.host_root},
        }],
    }


# -- JUnit XML --------------------------------------------------------------------------------

def to_junit(report: AuditReport, info: RunInfo) -> str:
    """One testcase per rule (its findings folded), a <failure> per failing rule, <skipped> when all skip."""
    import xml.etree.ElementTree as ET  # only --format junit pays for the XML library

    by_rule: dict[tuple[str, str], list[Finding]] = {}
    for f in report.findings:
        by_rule.setdefault((f.control, f.rule), []).append(f)
    elapsed = f"{max(report.ended - report.started, 0.0):.3f}"
    suites = ET.Element("testsuites", name="nodeguard check", time=elapsed)
    suite = ET.SubElement(suites, "testsuite", name=f"nodeguard {BENCHMARK}", hostname=info.host_name,
                          timestamp=_iso(report.started).removesuffix("Z"), time=elapsed)
    props = ET.SubElement(suite, "properties")
    for name, value in (("nodeguard.version", __version__), ("benchmark", BENCHMARK), ("host_root", info.host_root)):
        ET.SubElement(props, "property", name=name, value=value)
    counts = Counter[str]()
    for (control, rule), findings in by_rule.items():
        cis = next((f.cis for f in findings if f.cis), None)
        case = ET.SubElement(suite, "testcase", classname=f"nodeguard.{control}",
                             name=f"{rule}" + (f" (CIS {cis})" if cis else ""), time="0")
        failing = [f for f in findings if f.status is Status.FAIL]
        counts["tests"] += 1
        if failing:
            counts["failures"] += 1
            worst = max(failing, key=lambda f: _ORDER_INDEX[f.severity])
            fail = ET.SubElement(case, "failure", message=worst.message, type=worst.severity.value)
            lines = [f"[{f.severity.value}] {f.message}" for f in failing]
            fix = _remediation(worst)
            if fix:
                lines.append(f"fix: {fix}")
            fail.text = "\n".join(lines)
        elif all(f.status is Status.SKIP for f in findings):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=findings[0].message)
    for el in (suites, suite):
        el.set("tests", str(counts["tests"]))
        el.set("failures", str(counts["failures"]))
        el.set("errors", "0")
        el.set("skipped", str(counts["skipped"]))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


_ORDER_INDEX = {s: i for i, s in enumerate((Severity.INFO, Severity.LOW, Severity.MEDIUM, Severity.HIGH,
                                             Severity.CRITICAL))}


# -- OCSF -------------------------------------------------------------------------------------

def to_ocsf_lines(report: AuditReport, host: dict[str, str]) -> str:
    """One OCSF Compliance Finding (class 2003) per checked rule and subject, one JSON document a line."""
    from nodeguard.events.model import EventName, event_for_finding
    from nodeguard.events.ocsf import to_ocsf

    lines = []
    when = int(report.ended * 1e9)
    for f in report.findings:
        if f.status is Status.SKIP:
            continue
        event = event_for_finding(EventName.DRIFT_DETECTED, f, outcome="checked")
        event.time_unix_nano = when
        doc = to_ocsf(event, host, audit_passed=f.status is Status.PASS)
        lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str))
    return "".join(line + "\n" for line in lines)
