"""Tamper evidence: every event carries the hash of the one before it (one chain per node).

The spool links each event as it stores it: `nodeguard.chain.seq` (1, 2, 3, ... per node),
`nodeguard.chain.prev` (the previous event's hash; GENESIS for the first) and
`nodeguard.chain.hash` = SHA-256 over the event's canonical form, which includes `prev` and `seq`.
Removing, reordering or editing an event breaks a link that anybody holding the events can
recompute: the canonical form uses only what every exporter ships (id, time in nanoseconds,
name, severity, body, attributes), so a SIEM can check the chain from OTLP records as well as
from the JSON-lines file (`nodeguard events verify FILE`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from nodeguard.structs import JSONValue

ATTR_SEQ = "nodeguard.chain.seq"
ATTR_PREV = "nodeguard.chain.prev"
ATTR_HASH = "nodeguard.chain.hash"
GENESIS = "0" * 64


def canonical_bytes(
    *, event_id: str, time_unix_nano: int, name: str, severity: str, body: str, attributes: Mapping[str, JSONValue]
) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same bytes whoever re-serializes the event."""
    doc = {
        # log.record.uid repeats the id (the JSON line's and OTLP's de-duplication key): not hashed twice.
        "attributes": {k: v for k, v in attributes.items() if k not in (ATTR_HASH, "log.record.uid")},
        "body": body,
        "id": event_id,
        "name": name,
        "severity": severity,
        "time_unix_nano": int(time_unix_nano),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def event_hash(
    *, event_id: str, time_unix_nano: int, name: str, severity: str, body: str, attributes: Mapping[str, JSONValue]
) -> str:
    return hashlib.sha256(canonical_bytes(event_id=event_id, time_unix_nano=time_unix_nano, name=name,
                                          severity=severity, body=body, attributes=attributes)).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """The hash of a JSON-lines record (`Event.to_record()` form)."""
    return event_hash(event_id=record["event.id"], time_unix_nano=record["time_unix_nano"],
                      name=record["event.name"], severity=record["severity"], body=record["body"],
                      attributes=record.get("attributes") or {})


def normalize(attributes: Mapping[str, Any]) -> dict[str, JSONValue]:
    """Attributes as JSON will give them back (tuples -> lists, paths -> str), so the hash survives a round trip."""
    out: dict[str, JSONValue] = json.loads(json.dumps(dict(attributes), default=str, allow_nan=False))
    return out
