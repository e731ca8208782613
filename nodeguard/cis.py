"""CIS Docker Benchmark v1.6.0, sections 1-3: the catalog, nodeguard's coverage, and the summary.

The catalog lists every recommendation of the host, daemon and daemon-file sections (numbered as
docker-bench-security numbers them for v1.6.0). What nodeguard checks is not written here: it is
read from the controls' rules (`Rule.cis`), so the README table generated from it (`python -m
nodeguard.cis --write README.md`) cannot claim a check that the code does not make; a test
compares the two.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeguard.catalog import BENCHMARK, CATALOG, RULES, CisItem
from nodeguard.structs import Finding, Status

if TYPE_CHECKING:
    from nodeguard.controls.base import Control

__all__ = ["BENCHMARK", "CATALOG", "CisItem", "Coverage", "coverage", "summarize"]
SECTIONS = ("1", "2", "3")


_BY_ID = {item.id: item for item in CATALOG}


def section_of(cis_id: str) -> str:
    return cis_id.split(".", 1)[0]


def _id_key(cis_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in cis_id.split("."))


@dataclass(frozen=True)
class Coverage:
    item: CisItem
    rules: tuple[str, ...]  # "control/rule"
    enforced_by: tuple[str, ...]

    @property
    def checked(self) -> bool:
        return bool(self.rules)

    @property
    def enforced(self) -> bool:
        return bool(self.enforced_by)


def coverage(controls: Iterable[type[Control]] | None = None) -> list[Coverage]:
    """Per catalog id: the rules that check it and those that can put it back.

    From the rule catalog by default (which a test holds equal to the controls' rules), or from
    the given control classes.
    """
    pairs = ([(e.control, e.id, e.cis, e.enforceable) for e in RULES] if controls is None
             else [(cls.name, r.id, r.cis, r.enforceable) for cls in controls for r in cls.rules])
    rules: dict[str, list[str]] = {}
    enforced: dict[str, list[str]] = {}
    for control, rule_id, cis, enforceable in pairs:
        if cis is None:
            continue
        rules.setdefault(cis, []).append(f"{control}/{rule_id}")
        if enforceable:
            enforced.setdefault(cis, []).append(f"{control}/{rule_id}")
    return [Coverage(item, tuple(rules.get(item.id, ())), tuple(enforced.get(item.id, ()))) for item in CATALOG]


def catalog_rows() -> list[dict[str, Any]]:
    """`nodeguard cis list`: each CIS recommendation of sections 1-3, then the rules outside them
    (CIS section 5 runtime checks and nodeguard's own), with what nodeguard does about each."""
    rows: list[dict[str, Any]] = []
    for row in coverage():
        it = row.item
        if row.enforced:
            does, why = "enforce", None
        elif row.checked:
            does, why = "report", it.why_report_only
        else:
            does, why = "not checked", it.why_not or "not checked yet"
        out: dict[str, Any] = {"id": it.id, "title": it.title, "nodeguard": does, "rules": list(row.rules)}
        if why:
            out["why"] = why
        rows.append(out)
    listed = {it.id for it in CATALOG}
    for e in RULES:
        if e.cis in listed:
            continue
        rows.append({"id": e.cis or "-", "title": e.title, "nodeguard": "enforce" if e.enforceable else "report",
                     "rules": [e.key]})
    return rows


def summarize(findings: Sequence[Finding]) -> dict[str, dict[str, object]]:
    """Per CIS section: how many ids pass, fail, are skipped (or not checked) in this audit.

    An id fails when any finding of it fails, passes when one passes and none fails, and is
    skipped when all its findings are skips (rule off, file absent). Catalog ids with no finding
    at all count as `not_checked`. `ids` gives each id's verdict.
    """
    verdicts: dict[str, str] = {}
    for f in findings:
        if not f.cis:
            continue
        have = verdicts.get(f.cis)
        if f.status is Status.FAIL or have == "fail":
            verdicts[f.cis] = "fail"
        elif f.status is Status.PASS or have == "pass":
            verdicts[f.cis] = "pass"
        else:
            verdicts[f.cis] = "skip"
    sections = sorted({*SECTIONS, *(section_of(i) for i in verdicts)}, key=lambda s: _id_key(s))
    out: dict[str, dict[str, object]] = {}
    for sec in sections:
        ids = sorted({i for i in verdicts if section_of(i) == sec} | {i.id for i in CATALOG if section_of(i.id) == sec},
                     key=_id_key)
        per_id = {i: verdicts.get(i, "not_checked") for i in ids}
        counts: dict[str, object] = {k: sum(1 for v in per_id.values() if v == k)
                                     for k in ("pass", "fail", "skip", "not_checked")}
        counts["ids"] = per_id
        out[sec] = counts
    return out


# -- the README table --------------------------------------------------------------------------

TABLE_START = "<!-- cis-coverage:start (generated by `python -m nodeguard.cis --write README.md`) -->"
TABLE_END = "<!-- cis-coverage:end -->"


def render_markdown(rows: Sequence[Coverage] | None = None) -> str:
    rows = coverage() if rows is None else rows
    lines = [
        "| CIS | recommendation | checked by | enforced | why not |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        it = row.item
        checked = ", ".join(f"`{r}`" for r in row.rules) if row.checked else "not checked"
        if row.enforced:
            enforced, why = "yes", ""
        elif row.checked:
            enforced, why = "report", it.why_report_only or ""
        else:
            enforced, why = "no", it.why_not or "not checked yet"
        lines.append(f"| {it.id} | {it.title} | {checked} | {enforced} | {why} |")
    n_checked = sum(r.checked for r in rows)
    n_enforced = sum(r.enforced for r in rows)
    lines.append("")
    lines.append(f"{BENCHMARK}, sections 1-3: {len(rows)} recommendations, {n_checked} checked, "
                 f"{n_enforced} enforceable, {len(rows) - n_checked} not checked.")
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    m = re.search(re.escape(TABLE_START) + r"\n(.*?)" + re.escape(TABLE_END), text, re.S)
    return m.group(1).removesuffix("\n") if m else None


def write_readme(path: Path) -> bool:
    """Replace the generated block in `path`; True when it changed."""
    text = path.read_text(encoding="utf-8")
    block = f"{TABLE_START}\n{render_markdown()}\n{TABLE_END}"
    if readme_block(text) is None:
        raise SystemExit(f"{path}: no {TABLE_START!r} marker")
    new = re.sub(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), lambda _: block, text, flags=re.S)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    # Here, not at the top: `check` imports this module for its CIS summary, not its command line.
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nodeguard.cis", description="CIS coverage table")
    parser.add_argument("--write", type=Path, metavar="README", help="update the generated table in this file")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_readme(args.write)
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(render_markdown() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
