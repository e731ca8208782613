"""The CIS catalog, the coverage the code really has, the README table made from it, the summary."""

from __future__ import annotations

from pathlib import Path

from nodeguard import cis
from nodeguard.controls import ALL_CONTROLS
from nodeguard.structs import Finding, Severity, Status

README = Path(__file__).resolve().parents[2] / "README.md"


def _key(cis_id: str) -> list[int]:
    return [int(p) for p in cis_id.split(".")]


def test_catalog_is_sections_1_to_3_of_v1_6_0() -> None:
    ids = [item.id for item in cis.CATALOG]
    want = ([f"1.1.{n}" for n in range(1, 19)] + ["1.2.1", "1.2.2"] + [f"2.{n}" for n in range(1, 19)]
            + [f"3.{n}" for n in range(1, 25)])
    assert ids == want
    assert len(ids) == 62  # docker-bench-security's count for these sections


def test_every_rule_in_sections_1_to_3_names_a_catalog_id() -> None:
    known = {item.id for item in cis.CATALOG}
    for ctl in ALL_CONTROLS:
        for rule in ctl.rules:
            if rule.cis and cis.section_of(rule.cis) in cis.SECTIONS:
                assert rule.cis in known, f"{ctl.name}/{rule.id}: CIS {rule.cis} is not in sections 1-3 of v1.6.0"


def test_readme_table_matches_the_code() -> None:
    block = cis.readme_block(README.read_text(encoding="utf-8"))
    assert block is not None, "README.md lost its CIS coverage markers"
    fix = "python -m nodeguard.cis --write README.md"
    assert block == cis.render_markdown(), f"README's CIS table is stale: run `{fix}`"


def test_coverage_reads_the_rules() -> None:
    rows = {row.item.id: row for row in cis.coverage()}
    assert rows["1.1.1"].rules == ("host-layout/data-root-partition",)
    assert rows["3.16"].enforced
    assert not rows["1.1.3"].enforced and rows["1.1.3"].checked
    assert not rows["1.2.1"].checked
    # Sections 1-3 are all checked except the manual host hardening (and 1.2.2/2.1, the runtime
    # control's, whenever it is registered).
    missing = {i for i, row in rows.items() if not row.checked}
    assert missing <= {"1.2.1", "1.2.2", "2.1"}


def _f(cis_id: str | None, status: Status) -> Finding:
    return Finding("c", "r", status, Severity.LOW, "m", cis=cis_id)


def test_summary_counts_ids_per_section() -> None:
    findings = [
        _f("1.1.2", Status.PASS), _f("1.1.2", Status.FAIL),  # any failure fails the id
        _f("1.1.3", Status.PASS), _f("1.1.3", Status.SKIP),  # a pass and a skip: pass
        _f("1.1.4", Status.SKIP),
        _f("3.16", Status.PASS),
        _f("5.5", Status.FAIL),
        _f(None, Status.FAIL),
    ]
    s = cis.summarize(findings)
    assert list(s) == ["1", "2", "3", "5"]
    one = s["1"]
    assert (one["pass"], one["fail"], one["skip"], one["not_checked"]) == (1, 1, 1, 17)
    assert one["ids"]["1.1.2"] == "fail"  # type: ignore[index]
    assert s["2"]["not_checked"] == 18
    assert (s["3"]["pass"], s["3"]["not_checked"]) == (1, 23)
    assert (s["5"]["fail"], s["5"]["not_checked"]) == (1, 0)


def test_write_readme_is_idempotent(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    copy.write_text(f"# x\n\n{cis.TABLE_START}\nold\n{cis.TABLE_END}\n\nrest\n")
    assert cis.write_readme(copy) is True
    assert cis.write_readme(copy) is False
    assert copy.read_text().endswith("\n\nrest\n")


def test_check_json_carries_the_cis_summary(tmp_path: Path) -> None:
    from nodeguard.audit import run_audit
    from nodeguard.policy import load_policy
    from nodeguard.report import to_json
    from tests.support.rules import EMPTY_PROC
    from tests.support.sandbox import make_sandbox

    sb = make_sandbox(tmp_path)
    sb.write("/etc/docker/daemon.json", '{"icc": true}')
    out = to_json(run_audit(sb.root, load_policy(), only=["daemon-config"], proc=EMPTY_PROC), str(sb.root))
    assert out["cis"]["2"]["ids"]["2.2"] == "fail"
    assert out["cis"]["3"]["not_checked"] == 24  # daemon-files did not run
