"""Which controls a run covers is decided from the catalog before any control is imported
(`check` needs it to know whether its forked Docker API reader has work): it must be exactly the
controls the audit then runs, chosen from the control classes' own rules (nothing is run here:
the firewall and listeners controls would read this machine's network namespace)."""

from __future__ import annotations

import pytest

from nodeguard.audit import choose_controls
from nodeguard.catalog import rules_matching
from nodeguard.policy import parse_policy
from nodeguard.selection import controls_to_run

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
RUNTIME_OFF = HEAD + "spec:\n  controls:\n    runtime:\n      mode: \"off\"\n"
ALL_OBSERVE = HEAD + "spec:\n  mode: observe\n"

CASES = {
    "everything": (ALL_OBSERVE, [], [], []),
    "runtime off": (RUNTIME_OFF, [], [], []),
    "runtime off, named by --only": (RUNTIME_OFF, ["runtime"], [], []),
    "--only by policy key": (ALL_OBSERVE, ["dockerGroup", "socket"], [], []),
    "--check a CIS id": (ALL_OBSERVE, [], ["2.2"], []),
    "--check a section": (ALL_OBSERVE, [], ["5"], []),
    "--check a rule of the runtime control": (ALL_OBSERVE, [], ["privileged"], []),
    "--skip every rule of a control": (ALL_OBSERVE, [], [], ["runtime"]),
    "--skip one rule": (ALL_OBSERVE, [], [], ["privileged"]),
    "--only and --check that leave nothing": (ALL_OBSERVE, ["socket"], ["privileged"], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_catalog_names_exactly_the_controls_the_audit_runs(case: str) -> None:
    text, only, check, skip = CASES[case]
    policy = parse_policy(text)
    select = rules_matching(check)[0] if check else None
    skipped = rules_matching(skip)[0] if skip else set()
    wanted = set(only) or None
    named = controls_to_run(policy, wanted=wanted, select=select, skip=skipped)
    assert named == [c.name for c in choose_controls(policy, wanted=wanted, select=select, skip=skipped)]


def test_the_cases_tell_runtime_in_and_out() -> None:
    """The cases above can fail: they include runs with and without the runtime control."""
    def runtime_in(case: str) -> bool:
        text, only, check, skip = CASES[case]
        return "runtime" in controls_to_run(
            parse_policy(text), wanted=set(only) or None,
            select=rules_matching(check)[0] if check else None, skip=rules_matching(skip)[0] if skip else set())

    assert runtime_in("everything") and runtime_in("runtime off, named by --only")
    assert not runtime_in("runtime off") and not runtime_in("--skip every rule of a control")
