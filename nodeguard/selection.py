"""Which controls a run covers: `--only`, `--check`/`--skip` and the policy's modes.

Decided from the rule catalog, so `check` knows whether the runtime control runs (and its forked
reader has work) before any control is imported; the audit chooses its controls with the same
predicate.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from nodeguard.structs import Mode

if TYPE_CHECKING:
    from nodeguard.policy import Policy

Pairs = Collection[tuple[str, str]]  # (control name, rule id)


def candidates(wanted: Collection[str] | None, select: Pairs | None) -> list[str]:
    """Names of the controls that `--only` (names or policy keys) and `--check` leave in, in run order."""
    from nodeguard.catalog import RULES

    names: list[str] = []
    for entry in RULES:
        if entry.control in names:
            continue
        if wanted is not None and entry.control not in wanted and entry.policy_key not in wanted:
            continue
        if select is not None and not any(control == entry.control for control, _ in select):
            continue
        names.append(entry.control)
    return names


def runs(name: str, policy_key: str, rule_ids: Collection[str], policy: Policy, *,
         wanted: Collection[str] | None, select: Pairs | None, skip: Pairs) -> bool:
    """Whether a control runs: named by --only (or, without --only, not off in the policy), owning a
    --check'ed rule when there is a --check, and not every rule of it --skip'ped."""
    if wanted is not None and name not in wanted and policy_key not in wanted:
        return False
    if wanted is None and policy.mode_of(policy_key) is Mode.OFF:
        return False
    if select is not None and not any((name, r) in select for r in rule_ids):
        return False
    return not (rule_ids and all((name, r) in skip for r in rule_ids))


def controls_to_run(policy: Policy, *, wanted: Collection[str] | None, select: Pairs | None,
                    skip: Pairs) -> list[str]:
    """The names of the controls a run with these arguments runs, from the catalog alone."""
    from nodeguard.catalog import RULES

    rule_ids: dict[str, set[str]] = {}
    keys: dict[str, str] = {}
    for entry in RULES:
        rule_ids.setdefault(entry.control, set()).add(entry.id)
        keys[entry.control] = entry.policy_key
    return [name for name in candidates(wanted, select)
            if runs(name, keys[name], rule_ids[name], policy, wanted=wanted, select=select, skip=skip)]
