"""Helpers for rule tests: observe a control on a sandbox, evaluate, and index the findings."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from nodeguard.controls.base import Context, Control
from nodeguard.host import HostRoot
from nodeguard.policy import Policy, load_policy, parse_policy
from nodeguard.structs import Finding, Status
from tests.support.sandbox import Sandbox

# A /proc with no processes: a sandbox's dockerd is found by its pidfile only, never by a scan.
EMPTY_PROC = Path("/nonexistent-proc")


POLICY_HEADER = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"


def policy_from(text: str | None = None) -> Policy:
    """The embedded default, or `text` (a partial policy; the header is added) merged over it."""
    if text is None:
        return load_policy()
    return parse_policy(text if "apiVersion" in text else POLICY_HEADER + textwrap.dedent(text), "<test>")


def context(sb: Sandbox | Path, policy: Policy | None = None, proc: Path = EMPTY_PROC) -> Context:
    root = sb.root if isinstance(sb, Sandbox) else sb
    return Context(HostRoot(root), policy or load_policy(), proc)


def observe(control: Control, sb: Sandbox | Path, policy: Policy | None = None) -> Any:
    return control.observe(context(sb, policy))


def run(control: Control, sb: Sandbox | Path, policy: Policy | None = None) -> list[Finding]:
    """observe + evaluate on a sandbox, as one audit pass does."""
    pol = policy or load_policy()
    return control.evaluate(control.observe(context(sb, pol)), pol)


def one(findings: list[Finding], rule: str, subject: str | None = None) -> Finding:
    """The single finding of `rule` (and `subject`, when given)."""
    hits = [f for f in findings if f.rule == rule and (subject is None or f.subject == subject)]
    assert len(hits) == 1, f"{rule}/{subject}: {hits}"
    return hits[0]


def statuses(findings: list[Finding]) -> dict[str, Status]:
    """rule -> status, for controls with one finding per rule."""
    out: dict[str, Status] = {}
    for f in findings:
        assert f.rule not in out, f"{f.rule} reported twice"
        out[f.rule] = f.status
    return out


def assert_complete(control: Control, findings: list[Finding]) -> None:
    """evaluate returns a finding for every rule of the control (pass, fail or skip)."""
    assert {r.id for r in control.rules} <= {f.rule for f in findings} | _optional_rules(control)


def _optional_rules(control: Control) -> set[str]:
    # daemon-files' `extra` rules exist only when the policy lists extra files.
    return {r.id for r in control.rules if r.id.startswith("extra-")}
