"""The event: one shape for every exporter, modelled on an OpenTelemetry log record.

`to_record()` is the JSON-lines form: {"time", "severity", "event.name", "body", "attributes"}.
Event names and attribute keys are a contract with the SIEM: add beside them, never rename.
"""

from __future__ import annotations

import enum
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from nodeguard.structs import Finding, JSONValue, Severity


class EventName(enum.StrEnum):
    DRIFT_DETECTED = "nodeguard.drift.detected"
    DRIFT_REVERTED = "nodeguard.drift.reverted"
    DRIFT_REVERT_FAILED = "nodeguard.drift.revert_failed"
    DRIFT_RESOLVED = "nodeguard.drift.resolved"
    DRIFT_FLAPPING = "nodeguard.drift.flapping"
    DRIFT_ATTRIBUTED = "nodeguard.drift.attributed"  # who made a drift (nodeguard/attribution/)
    AGENT_STARTED = "nodeguard.agent.started"
    POLICY_LOADED = "nodeguard.policy.loaded"
    POLICY_REJECTED = "nodeguard.policy.rejected"
    AGENT_STOPPED = "nodeguard.agent.stopped"
    # The durable spool was full and dropped its oldest events (see nodeguard/events/spool.py).
    SPOOL_DROPPED = "nodeguard.spool.dropped"


# OpenTelemetry severity numbers (logs data model): INFO=9, WARN=13, ERROR=17, FATAL=21.
SEVERITY_NUMBER = {"INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
_FINDING_SEVERITY = {
    Severity.INFO: "INFO", Severity.LOW: "WARN", Severity.MEDIUM: "WARN",
    Severity.HIGH: "ERROR", Severity.CRITICAL: "FATAL",
}


@dataclass
class Event:
    name: EventName
    severity: str  # INFO | WARN | ERROR | FATAL (OpenTelemetry severity text)
    body: str
    attributes: dict[str, JSONValue] = field(default_factory=dict)
    time_unix_nano: int = field(default_factory=time.time_ns)
    # Stable across retries and restarts, so a receiver can de-duplicate at-least-once delivery.
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def severity_number(self) -> int:
        return SEVERITY_NUMBER.get(self.severity, 9)

    def to_record(self) -> dict[str, Any]:
        ts = datetime.fromtimestamp(self.time_unix_nano / 1e9, tz=UTC)
        return {
            "time": ts.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "severity": self.severity,
            "severity_number": self.severity_number,
            "event.name": self.name.value,
            "event.id": self.id,
            "body": self.body,
            "attributes": self.attributes,
            # Exact time: `time` is rounded to microseconds, the chain hash covers nanoseconds.
            "time_unix_nano": self.time_unix_nano,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        """The inverse of `to_record` (the spool keeps events in this form)."""
        return cls(
            name=EventName(record["event.name"]),
            severity=record["severity"],
            body=record["body"],
            attributes=dict(record.get("attributes") or {}),
            time_unix_nano=int(record["time_unix_nano"]),
            id=record["event.id"],
        )

    def to_json_line(self) -> str:
        return json.dumps(self.to_record(), sort_keys=False, default=str, separators=(",", ":"))


class EventSink(Protocol):
    """Where events go. `emit` must not block the reconciler for long; `close` flushes."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


def event_for_finding(
    name: EventName,
    finding: Finding,
    *,
    outcome: str,
    body: str | None = None,
    extra: dict[str, JSONValue] | None = None,
) -> Event:
    attrs: dict[str, JSONValue] = {
        "nodeguard.control": finding.control,
        "nodeguard.rule": finding.rule,
        "nodeguard.outcome": outcome,
        "nodeguard.mode": finding.mode.value,
        "nodeguard.observed": finding.observed,
        "nodeguard.expected": finding.expected,
        "nodeguard.severity": finding.severity.value,
    }
    if finding.cis:
        attrs["nodeguard.cis"] = finding.cis
    if finding.path:
        attrs["file.path"] = finding.path
    if finding.subject:
        attrs["nodeguard.subject"] = finding.subject
    if extra:
        attrs.update(extra)
    severity = "INFO" if name in (EventName.DRIFT_RESOLVED, EventName.DRIFT_REVERTED) else \
        _FINDING_SEVERITY[finding.severity]
    return Event(name, severity, body or finding.message, attrs)


def lifecycle_event(name: EventName, body: str, **attributes: JSONValue) -> Event:
    attrs: dict[str, JSONValue] = {"host.name": socket.gethostname()}
    attrs.update({f"nodeguard.{k}": v for k, v in attributes.items()})
    severity = "ERROR" if name is EventName.POLICY_REJECTED else "INFO"
    return Event(name, severity, body, attrs)


