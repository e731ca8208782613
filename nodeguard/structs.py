"""Plain data shared by controls, the audit and the agent: no I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# What a finding may carry as observed/expected: anything JSON can hold.
JSONValue = Any


class Mode(enum.StrEnum):
    OFF = "off"
    OBSERVE = "observe"
    ENFORCE = "enforce"


class Status(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class Severity(enum.StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Rule:
    """A rule's fixed identity: what it checks and which CIS recommendation it maps to."""

    id: str
    title: str
    severity: Severity
    cis: str | None = None
    # Whether the agent knows a safe way to put this rule back in enforce mode.
    enforceable: bool = False


# slots: a 100,000-member group is 100,000 findings; without a __dict__ each is about half the size.
@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's verdict about one subject (a file, a key, a user, a port) on this host."""

    control: str
    rule: str
    status: Status
    severity: Severity
    message: str
    cis: str | None = None
    observed: JSONValue = None
    expected: JSONValue = None
    path: str | None = None
    # Distinguishes several findings of one rule (a member name, a port, a TLS file role).
    subject: str | None = None
    mode: Mode = Mode.OBSERVE
    details: dict[str, JSONValue] = field(default_factory=dict)

    def with_mode(self, mode: Mode) -> Finding:
        # dataclasses.replace() costs ~15 us: every finding of every pass (the socket's revert
        # included) is stamped with its mode.
        return Finding(self.control, self.rule, self.status, self.severity, self.message, self.cis, self.observed,
                       self.expected, self.path, self.subject, mode, self.details)

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity across evaluations: the agent compares findings by this key."""
        return (self.control, self.rule, self.subject or "")

    def to_json(self) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {
            "control": self.control,
            "rule": self.rule,
            "cis": self.cis,
            "status": self.status.value,
            "severity": self.severity.value,
            "mode": self.mode.value,
            "observed": self.observed,
            "expected": self.expected,
            "path": self.path,
            "subject": self.subject,
            "message": self.message,
        }
        if self.details:
            out["details"] = self.details
        return out
