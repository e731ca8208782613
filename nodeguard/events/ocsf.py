"""A drift event as an OCSF Compliance Finding (class 2003), for SIEMs that ingest files or syslog.

Only findings are findings: the drift events map to OCSF, the agent's lifecycle events do not
(they go to OTLP and the JSON-lines file). The finding's `finding_info.uid` is the same for
every event of one (control, rule, subject) on one host, so a SIEM can follow a drift from
Create (detected) through Update (flapping, revert failed) to Close (reverted, resolved).
Every nodeguard attribute, the chain's included, is kept under `unmapped`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from nodeguard._version import __version__
from nodeguard.events.chain import ATTR_SEQ
from nodeguard.events.model import Event, EventName

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
                     "FATAL": (5, "Critical")}
CIS_STANDARD = "CIS Docker Benchmark"


def is_finding(event: Event) -> bool:
    return event.name in _ACTIVITY


def _ms(nanos: int) -> int:
    return nanos // 1_000_000


def to_ocsf(event: Event, host: dict[str, str]) -> dict[str, Any]:
    """The OCSF document of a drift event (call only when `is_finding(event)`)."""
    activity_id, activity, status_id, status, compliance_id, compliance = _ACTIVITY[event.name]
    attrs = event.attributes
    control, rule = str(attrs.get("nodeguard.control", "")), str(attrs.get("nodeguard.rule", ""))
    subject = attrs.get("nodeguard.subject")
    cis = attrs.get("nodeguard.cis")
    severity_id, severity = _SEVERITY.get(str(attrs.get("nodeguard.severity", "")),
                                          _SEVERITY_BY_TEXT.get(event.severity, (0, "Unknown")))
    host_key = host.get("host.id") or host.get("host.name", "")
    finding_uid = hashlib.sha256(f"{host_key}/{control}/{rule}/{subject or ''}".encode()).hexdigest()[:32]
    first_seen = attrs.get("nodeguard.aggregate.first_seen_unix_nano", event.time_unix_nano)
    last_seen = attrs.get("nodeguard.aggregate.last_seen_unix_nano", event.time_unix_nano)
    check: dict[str, Any] = {"name": f"{control}/{rule}", "status": compliance, "status_id": compliance_id,
                             "severity_id": severity_id, "severity": severity}
    if cis:
        check.update(uid=str(cis), standards=[CIS_STANDARD])
    resources: list[dict[str, Any]] = [{"type": "host", "name": host.get("host.name"), "uid": host.get("host.id")}]
    if attrs.get("file.path"):
        resources.append({"type": "file", "name": attrs["file.path"]})
    if subject:
        resources.append({"type": "subject", "name": str(subject)})
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "uid": event.id,
        "event_code": event.name.value,
        "product": {"name": "nodeguard", "vendor_name": "nodeguard", "version": __version__},
        "log_name": "nodeguard.events",
        "original_time": str(event.time_unix_nano),
    }
    if ATTR_SEQ in attrs:
        metadata["sequence"] = int(attrs[ATTR_SEQ])
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
        "finding_info": {
            "uid": finding_uid,
            "title": f"{control}: {rule}" + (f" ({subject})" if subject else ""),
            "desc": event.body,
            "types": [event.name.value],
            "created_time": _ms(event.time_unix_nano),
            "first_seen_time": _ms(int(first_seen)),
            "last_seen_time": _ms(int(last_seen)),
        },
        "compliance": {
            "control": f"{control}/{rule}",
            "standards": [CIS_STANDARD] if cis else ["nodeguard policy"],
            "requirements": [str(cis)] if cis else [],
            "status_id": compliance_id,
            "checks": [check],
        },
        "resources": resources,
        "unmapped": {"host": host, "attributes": attrs},
    }
    if "nodeguard.aggregate.count" in attrs:
        # A summary of repeats: the count itself is in unmapped.attributes (nodeguard.aggregate.count).
        doc["start_time"] = _ms(int(first_seen))
        doc["end_time"] = _ms(int(last_seen))
    return doc
