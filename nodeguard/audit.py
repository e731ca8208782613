"""One pass over the host: observe and evaluate every control, then apply the policy's modes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeguard.controls import Context, Control, all_controls
from nodeguard.host import HostRoot
from nodeguard.policy import Policy
from nodeguard.structs import Finding, Mode, Severity, Status

log = logging.getLogger(__name__)


@dataclass
class ControlResult:
    control: Control
    observed: Any
    findings: list[Finding]
    error: str | None = None


@dataclass
class AuditReport:
    results: list[ControlResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    def summary(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for f in self.findings:
            counts[f.status.value] += 1
        counts["total"] = len(self.findings)
        return counts

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)


def apply_modes(control: Control, findings: Iterable[Finding], policy: Policy) -> list[Finding]:
    """Stamp each finding with its rule's effective mode; a rule that is off becomes a skip."""
    out = []
    for f in findings:
        mode = control.rule_mode(policy, f.rule)
        if mode is Mode.OFF:
            f = dataclasses.replace(f, status=Status.SKIP, message=f"rule is off in the policy ({f.message})")
        out.append(dataclasses.replace(f, mode=mode))
    return out


def evaluate_control(control: Control, ctx: Context) -> ControlResult:
    """Observe + evaluate one control; an unexpected error becomes a finding, never a crash."""
    try:
        observed = control.observe(ctx)
        findings = control.evaluate(observed, ctx.policy)
    except Exception as exc:  # a hostile host must not stop the audit of the other controls
        log.exception("control %s failed", control.name)
        msg = f"{control.name} could not be evaluated: {type(exc).__name__}: {exc}"
        findings = [Finding(control.name, "evaluate", Status.FAIL, Severity.MEDIUM, msg)]
        return ControlResult(control, None, apply_modes(control, findings, ctx.policy), msg)
    return ControlResult(control, observed, apply_modes(control, findings, ctx.policy))


def run_audit(
    host: HostRoot | str,
    policy: Policy,
    *,
    only: Iterable[str] | None = None,
    proc: Path = Path("/proc"),
    controls: Iterable[Control] | None = None,
) -> AuditReport:
    host = host if isinstance(host, HostRoot) else HostRoot(host)
    ctx = Context(host, policy, proc)
    wanted = set(only) if only else None
    report = AuditReport()
    for control in controls if controls is not None else all_controls():
        if wanted is not None and control.name not in wanted and control.policy_key not in wanted:
            continue
        if control.settings(policy).rule_mode("", policy.spec.mode) is Mode.OFF and wanted is None:
            continue
        report.results.append(evaluate_control(control, ctx))
    return report
