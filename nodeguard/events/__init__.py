"""Events: what the agent tells the world (a finding's state change, or the agent's lifecycle)."""

from nodeguard.events.model import Event, EventName, EventSink, event_for_finding, lifecycle_event

__all__ = ["Event", "EventName", "EventSink", "event_for_finding", "lifecycle_event"]
