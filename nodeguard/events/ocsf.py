"""A drift event as an OCSF Compliance Finding (class 2003), for SIEMs that ingest files or syslog.

Only findings are findings: the drift events map to OCSF, the agent's lifecycle events do not
(they go to OTLP and the JSON-lines file). The finding's `finding_info.uid` is the same for
every event of one (control, rule, subject) on one host, so a SIEM can follow a drift from
Create (detected) through Update (flapping, revert failed) to Close (reverted, resolved).
Every nodeguard attribute, the chain's included, is kept under `unmapped`. `created_time` is when
the finding opened (the engine's `nodeguard.finding.first_seen_unix_nano`, else the aggregate's
first repeat, else this event) and stays the same across its updates; `modified_time` is the
update. The CIS id is `compliance.control` and `check.uid`; `remediation.desc` and the check's
name come from the rule catalog (nodeguard/catalog.py). No key is null.
"""

from __future__ import annotations

import hashlib
from typing import Any

from nodeguard._version import __version__
from nodeguard.events.chain import ATTR_SEQ
from nodeguard.events.model import ATTR_FIRST_SEEN, CIS_REFERENCE, CIS_RULESET, Event, EventName

OCSF_VERSION = "1.5.0"
CLASS_UID = 2003  # Compliance Finding
CATEGORY_UID = 2  # Findings

# OCSF Finding activity: 1 Create, 2 Update, 3 Close; finding status: 1 New, 2 In Progress, 4 Resolved;
# compliance status: 1 Pass, 3 Fail.
_ACTIVITY = {
    EventName.DRIFT_DETECTED: (1, "Create", 1, "New", 3, "Fail"),
    EventName.DRIFT_FLAPPING: (2, "Update", 2, "In Progress", 3, "Fail"),
    EventName.DRIFT_REVERT_FAILED: (2, "Update", 2, "In Progress", 3, "Fail"),
    EventName.DRIFT_REVERTED: (3, "Close", 4, "Resolved", 1, "Pass"),
    EventName.DRIFT_RESOLVED: (3, "Close", 4, "Resolved", 1, "Pass"),
}
_SEVERITY = {"info": (1, "Informational"), "low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"),
             "critical": (5, "Critical")}
_SEVERITY_BY_TEXT = {"INFO": (1, "Informational"), "WARN": (3, "Medium"), "ERROR": (4, "High"),
                     "CRITICAL": (5, "Critical"), "FATAL": (5, "Critical")}
NODEGUARD_STANDARD = "nodeguard policy"
AUDIT_EVENT_CODE = "nodeguard.check"
DEVICE_TYPE_SERVER = 1  # OCSF device.type_id: 1 Server


def is_finding(event: Event) -> bool:
    return event.name in _ACTIVITY or event.name is EventName.DRIFT_ATTRIBUTED


def _activity(event: Event) -> tuple[int, str, int, str, int, str]:
    """An attribution (the actor found in the audit log) updates the finding of the drift event it
    completes: the same finding uid, that event's statuses, activity Update."""
    if event.name is EventName.DRIFT_ATTRIBUTED:
        try:
            of = EventName(str(event.attributes.get("nodeguard.attributed.event_name", "")))
        except ValueError:
            of = EventName.DRIFT_DETECTED
        _, _, status_id, status, compliance_id, compliance = _ACTIVITY.get(of, _ACTIVITY[EventName.DRIFT_DETECTED])
        return 2, "Update", status_id, status, compliance_id, compliance
    return _ACTIVITY[event.name]


def _ms(nanos: int) -> int:
    return nanos // 1_000_000


def _prune(value: Any) -> Any:
    """The document without None values or empty containers: OCSF has no use for an empty key."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value if v is not None]
    return value


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def device(host: dict[str, str]) -> dict[str, Any]:
    """OCSF `device` (the host profile): the node the finding is about."""
    name = host.get("host.name")
    return {"type_id": DEVICE_TYPE_SERVER, "type": "Server", "hostname": name, "name": name,
            "uid": host.get("host.id") or name}


def actor(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """OCSF `actor` from the semantic conventions' process.* and user.* attributes, when the event has them.

    Who made a change is found by the audit trail (auditd), when it is: these keys are optional.
    """
    process = {
        "pid": _int(attrs.get("process.pid")),
        "name": attrs.get("process.executable.name"),
        "cmd_line": attrs.get("process.command_line"),
        "file": {"path": attrs.get("process.executable.path"),
                 "name": attrs.get("process.executable.name")} if attrs.get("process.executable.path") else None,
        "parent_process": {"pid": _int(attrs.get("process.parent_pid"))} if "process.parent_pid" in attrs else None,
    }
    user = {"name": attrs.get("user.name") or attrs.get("process.user.name"),
            "uid": _str_or_none(attrs.get("user.id", attrs.get("process.user.id")))}
    out = _prune({"process": process, "user": user})
    return out or None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def finding_uid(event: Event, host: dict[str, str]) -> str:
    """One id per (host, control, rule, subject): the same from Create to Close."""
    attrs = event.attributes
    host_key = host.get("host.id") or host.get("host.name", "")
    key = f"{host_key}/{attrs.get('nodeguard.control', '')}/{attrs.get('nodeguard.rule', '')}/" \
          f"{attrs.get('nodeguard.subject') or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def to_ocsf(event: Event, host: dict[str, str], *, audit_passed: bool | None = None,
            opened_unix_nano: int | None = None) -> dict[str, Any]:
    """The OCSF document of a drift event (call only when `is_finding(event)`); it holds no null.

    `audit_passed` (True/False) makes it the finding of a one-shot audit (`check --format ocsf`):
    activity Create, compliance status Pass or Fail, event code `nodeguard.check`.
    `opened_unix_nano`: when the exporter saw this finding created, used when the event does not
    carry the engine's first-seen time.
    """
    from nodeguard.catalog import cis_item, rule_entry

    if audit_passed is None:
        activity_id, activity, status_id, status, compliance_id, compliance = _activity(event)
    else:
        activity_id, activity, status_id, status = 1, "Create", 1, "New"
        compliance_id, compliance = (1, "Pass") if audit_passed else (3, "Fail")
    attrs = event.attributes
    control, rule = str(attrs.get("nodeguard.control", "")), str(attrs.get("nodeguard.rule", ""))
    subject = attrs.get("nodeguard.subject")
    cis = str(attrs["nodeguard.cis"]) if attrs.get("nodeguard.cis") else None
    entry = rule_entry(control, rule)
    item = cis_item(cis) if cis else None
    severity_id, severity = _SEVERITY.get(str(attrs.get("nodeguard.severity", "")),
                                          _SEVERITY_BY_TEXT.get(event.severity, (0, "Unknown")))
    uid = finding_uid(event, host)
    first_seen = _int(attrs.get(ATTR_FIRST_SEEN)) or _int(attrs.get("nodeguard.aggregate.first_seen_unix_nano")) \
        or opened_unix_nano or event.time_unix_nano
    last_seen = _int(attrs.get("nodeguard.aggregate.last_seen_unix_nano")) or event.time_unix_nano
    standards = [CIS_RULESET] if cis else [NODEGUARD_STANDARD]
    check: dict[str, Any] = {
        "uid": cis or f"{control}/{rule}",
        "name": item.title if item else (entry.title if entry else f"{control}/{rule}"),
        "desc": entry.title if entry else None,
        "status": compliance, "status_id": compliance_id,
        "severity_id": severity_id, "severity": severity, "standards": standards,
    }
    resources: list[dict[str, Any]] = [{"type": "host", "name": host.get("host.name"),
                                        "uid": host.get("host.id") or host.get("host.name")}]
    if attrs.get("file.path"):
        resources.append({"type": "file", "name": attrs["file.path"], "uid": attrs["file.path"]})
    if subject:
        resources.append({"type": "subject", "name": str(subject), "uid": str(subject)})
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "uid": event.id,
        "event_code": event.name.value if audit_passed is None else AUDIT_EVENT_CODE,
        "product": {"name": "nodeguard", "vendor_name": "nodeguard", "version": __version__},
        "profiles": ["host"],
        "log_name": "nodeguard.events",
        "original_time": str(event.time_unix_nano),
    }
    if ATTR_SEQ in attrs:
        metadata["sequence"] = int(attrs[ATTR_SEQ])
    finding_info: dict[str, Any] = {
        "uid": uid,
        "title": f"{control}: {rule}" + (f" ({subject})" if subject else ""),
        "desc": event.body,
        "types": [event.name.value if audit_passed is None else AUDIT_EVENT_CODE],
        # Stable for every event of one finding (when the engine says when it opened); the
        # update itself is modified_time.
        "created_time": _ms(first_seen),
        "modified_time": _ms(event.time_unix_nano) if activity_id != 1 else None,
        "first_seen_time": _ms(first_seen),
        "last_seen_time": _ms(last_seen),
    }
    doc: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "Compliance Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": f"Compliance Finding: {activity}",
        "time": _ms(event.time_unix_nano),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "message": event.body,
        "metadata": metadata,
        "device": device(host),
        "actor": actor(attrs),
        "finding_info": finding_info,
        "compliance": {
            "control": cis or f"{control}/{rule}",
            "standards": standards,
            "requirements": [cis] if cis else None,
            "status": compliance,
            "status_id": compliance_id,
            "checks": [check],
        },
        "remediation": {"desc": entry.remediation, "references": [CIS_REFERENCE] if cis else None}
        if entry else None,
        "resources": resources,
        "unmapped": {"host": host, "attributes": attrs},
    }
    if "nodeguard.aggregate.count" in attrs:
        # A summary of repeats: the count itself is in unmapped.attributes (nodeguard.aggregate.count).
        doc["start_time"] = _ms(int(first_seen))
        doc["end_time"] = _ms(int(last_seen))
    pruned: dict[str, Any] = _prune(doc)
    return pruned
