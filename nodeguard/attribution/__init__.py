"""Who made a drift: actor attribution from the host's Linux audit trail (issue 16).

    records.py  the audit log's text -> records -> events (pure; hostile input)
    logfile.py  where the log is (auditd.conf) and its recent end, read bounded, across a rotation
    match.py    which audit event changed the finding's file (pure)
    enrich.py   names from the host's passwd, the container from /proc/PID/cgroup
    reasons.py  why no actor: log unreadable, auditd not running, no rule watching the file
    sink.py     the EventSink companion: events go out at once, `nodeguard.drift.attributed` follows

Read only: nothing here writes to the host or loads an audit rule.
"""

from __future__ import annotations

from pathlib import Path

from nodeguard.attribution.sink import AttributionSettings, AttributionSink
from nodeguard.events.model import EventSink
from nodeguard.host import HostRoot
from nodeguard.policy import Policy

__all__ = ["AttributionSettings", "AttributionSink", "attribution_for"]


def attribution_for(host: HostRoot, proc: Path, policy: Policy, inner: EventSink) -> AttributionSink | None:
    """The companion for `inner`, or None when the policy turns attribution off."""
    cfg = policy.spec.agent.attribution
    if not cfg.enabled:
        return None
    audit = policy.spec.controls.host_audit
    return AttributionSink(inner, host, proc, AttributionSettings(
        audit_log=cfg.audit_log, wait_ms=cfg.wait_ms, per_finding_per_minute=cfg.max_per_finding_per_minute,
        rules_files=tuple(audit.audit_rules_files),
        rules_dirs=tuple(audit.audit_rules_dirs)))
