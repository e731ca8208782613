"""The rule catalog (nodeguard/catalog.py) and the controls' own rules say the same thing."""

from __future__ import annotations

import re
import subprocess
import sys

from nodeguard.catalog import CATALOG, RULES, rule_ids_by_policy_key, rules_matching
from nodeguard.controls import ALL_CONTROLS


def test_every_control_rule_is_in_the_catalog_with_the_same_facts() -> None:
    from_controls = {(c.name, c.policy_key, r.id, r.title, r.severity, r.cis, r.enforceable)
                     for c in ALL_CONTROLS for r in c.rules}
    from_catalog = {(e.control, e.policy_key, e.id, e.title, e.severity, e.cis, e.enforceable) for e in RULES}
    assert from_controls - from_catalog == set(), "in a control, not (or not so) in the catalog"
    assert from_catalog - from_controls == set(), "in the catalog, not (or not so) in a control"
    assert [c.name for c in ALL_CONTROLS] == list(dict.fromkeys(e.control for e in RULES))


def test_every_rule_has_remediation_text_and_a_known_cis_id() -> None:
    cis_ids = {item.id for item in CATALOG}
    for e in RULES:
        # A template left unformatted ("{}", "{mode}") would reach the user as it is.
        assert len(e.remediation) > 20 and not re.search(r"\{\w*\}", e.remediation), e
        # Section 5 (container runtime) ids are outside the sections-1-3 list on purpose.
        assert e.cis is None or e.cis in cis_ids or e.cis.startswith("5."), e


def test_policy_validation_reads_the_catalog_and_imports_no_control() -> None:
    code = ("import sys; from nodeguard.policy import load_policy; load_policy(None); "
            "print(sorted(m for m in sys.modules if m.startswith('nodeguard.controls')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "member-allowed" in rule_ids_by_policy_key()["dockerGroup"]


def test_selection_by_cis_id_section_rule_or_control() -> None:
    found, unknown = rules_matching(["2.2", "1.1.2", "daemon-json-mode", "socket", "no-such"])
    assert unknown == ["no-such"]
    assert ("daemon-config", "icc") in found
    assert {("docker-group", "member-allowed"), ("docker-group", "primary-group")} <= found
    assert ("daemon-files", "daemon-json-mode") in found
    assert ("socket", "socket-acl") in found
    sec, _ = rules_matching(["1.1"])
    assert ("host-audit", "audit-dockerd") in sec and ("host-layout", "data-root-partition") in sec
    assert ("daemon-config", "icc") not in sec
