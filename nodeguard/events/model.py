"""The event: one shape for every exporter, modelled on an OpenTelemetry log record.

`to_record()` is the JSON-lines form: {"time", "severity", "event.name", "event.id", "body",
"attributes"}. Event names and attribute keys are a contract with the SIEM: add beside them, never
rename. A finding's event carries the OpenTelemetry semantic conventions' `security_rule.*` keys
beside the `nodeguard.*` ones, so a SIEM that knows the conventions needs no nodeguard mapping.
An attribute whose value is None is left out, never sent as an empty value.
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


# OpenTelemetry severity numbers (logs data model): INFO=9, WARN=13, ERROR=17..20, FATAL=21.
# FATAL means the emitter itself died, so a critical finding sits at the top of the ERROR range
# (ERROR4 = 20) with its own text. "FATAL" stays readable for events spooled by older versions
# (the chain hash covers the severity text, so a spooled event is never rewritten).
SEVERITY_NUMBER = {"INFO": 9, "WARN": 13, "ERROR": 17, "CRITICAL": 20, "FATAL": 21}
_FINDING_SEVERITY = {
    Severity.INFO: "INFO", Severity.LOW: "WARN", Severity.MEDIUM: "WARN",
    Severity.HIGH: "ERROR", Severity.CRITICAL: "CRITICAL",
}
# The semantic conventions' unique id of a log record: the one de-duplication key of both outputs
# (an attribute over OTLP, and in each JSON line's attributes beside the historical `event.id`).
ATTR_RECORD_UID = "log.record.uid"
# When the engine first saw this finding open (unix nanoseconds): OCSF's `created_time`, stable
# across every update of the finding. Optional: the engine sets it where it keeps that state.
ATTR_FIRST_SEEN = "nodeguard.finding.first_seen_unix_nano"
CIS_RULESET = "CIS Docker Benchmark v1.6.0"
CIS_REFERENCE = "https://www.cisecurity.org/benchmark/docker"
NODEGUARD_RULESET = "nodeguard"
NODEGUARD_REFERENCE = "https://github.com/nodeguard/nodeguard#reading-an-audit"


def drop_nulls(attributes: dict[str, JSONValue]) -> dict[str, JSONValue]:
    """The attributes without None values: OTLP has no null, and an empty value misleads a SIEM."""
    return {k: v for k, v in attributes.items() if v is not None}


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
            # log.record.uid is not part of the chain hash (chain.canonical_bytes leaves it out):
            # it is the same value as event.id, written under the key OTLP receivers know.
            # Nulls are dropped where events are made (event_for_finding, lifecycle_event), not here:
            # the chain hash covers the attributes as they were spooled.
            "attributes": {**self.attributes, ATTR_RECORD_UID: self.id},
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
            attributes={k: v for k, v in (record.get("attributes") or {}).items() if k != ATTR_RECORD_UID},
            time_unix_nano=int(record["time_unix_nano"]),
            id=record["event.id"],
        )

    def to_json_line(self, resource: dict[str, str] | None = None) -> str:
        """One JSON line; `resource` (service.*, host.*, k8s.*) says who is speaking, as OTLP's resource does."""
        record = self.to_record()
        if resource:
            record["resource"] = resource
        return json.dumps(record, sort_keys=False, default=str, separators=(",", ":"))


class EventSink(Protocol):
    """Where events go. `emit` must not block the reconciler for long; `close` flushes."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


# A sink that spools durably may also offer the engine's group commit: `enable_group_commit()`
# (appends are then written without an fsync) and `sync()` (one fsync for all of them, once per
# pass). Wrappers (fan-out, attribution) pass both through; sinks without them ignore them.
def enable_group_commit(sink: object) -> None:
    hook = getattr(sink, "enable_group_commit", None)
    if callable(hook):
        hook()


def sync(sink: object) -> None:
    hook = getattr(sink, "sync", None)
    if callable(hook):
        hook()


def event_for_finding(
    name: EventName,
    finding: Finding,
    *,
    outcome: str,
    body: str | None = None,
    extra: dict[str, JSONValue] | None = None,
    first_seen_unix_nano: int | None = None,
) -> Event:
    """The event of one finding's state change; `first_seen_unix_nano`: when the finding opened."""
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
    attrs.update(security_rule_attributes(finding.control, finding.rule, finding.cis))
    if first_seen_unix_nano is not None:
        attrs[ATTR_FIRST_SEEN] = first_seen_unix_nano
    if extra:
        attrs.update(extra)
    attrs = drop_nulls(attrs)
    severity = "INFO" if name in (EventName.DRIFT_RESOLVED, EventName.DRIFT_REVERTED) else \
        _FINDING_SEVERITY[finding.severity]
    return Event(name, severity, body or finding.message, attrs)


def security_rule_attributes(control: str, rule: str, cis: str | None) -> dict[str, JSONValue]:
    """The semantic conventions' security_rule.* keys of one rule (`name` is the rule id, as in nodeguard.rule)."""
    from nodeguard.catalog import rule_entry

    entry = rule_entry(control, rule)
    attrs: dict[str, JSONValue] = {
        "security_rule.name": rule,
        "security_rule.uid": f"{control}/{rule}",
        "security_rule.ruleset.name": CIS_RULESET if cis else NODEGUARD_RULESET,
        "security_rule.reference": CIS_REFERENCE if cis else NODEGUARD_REFERENCE,
        "security_rule.category": control,
    }
    if entry is not None:
        attrs["security_rule.description"] = entry.title
    return attrs


def lifecycle_event(name: EventName, body: str, **attributes: JSONValue) -> Event:
    attrs: dict[str, JSONValue] = {"host.name": socket.gethostname()}
    attrs.update({f"nodeguard.{k}": v for k, v in attributes.items() if v is not None})
    severity = "ERROR" if name is EventName.POLICY_REJECTED else "INFO"
    return Event(name, severity, body, attrs)


