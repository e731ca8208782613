"""netfilter as one pass sees it: the backend kept since start, its dump, and what `auto` would pick now.

`read_firewall` is the one place a pass dumps netfilter. The firewall control judges what it
returns, and the listeners control reads from the same value which ports nodeguard's chains close:
the pass makes it once, through the context's observations (nodeguard.observations).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeguard.host import HostRoot
from nodeguard.netfilter.model import FirewallState
from nodeguard.netfilter.select import Selection, decided_backend, select_backend


@dataclass
class FirewallObservation:
    selection: Selection  # the backend decided at start and kept
    state: FirewallState | None
    # `auto` only: what the host's netfilter would decide now, when that differs from `selection`.
    now: Selection | None = None
    # The agent holds nodeguard's nf_tables table (flags owner) while it runs in enforce mode.
    held: bool = False

    @property
    def where(self) -> str | None:
        return self.selection.backend.describe() if self.selection.backend else None


def read_firewall(host: HostRoot, requested: str) -> FirewallObservation:
    """One dump of nodeguard's chains through the backend decided at start (`requested`: the policy's)."""
    selection = decided_backend(requested, host)
    state = selection.backend.read_state() if selection.backend is not None else None
    now = None
    if requested == "auto" and selection.backend is not None:
        # Looked at again on every pass, acted on never: a changed answer is a finding.
        fresh = select_backend(requested, host)
        now = fresh if fresh.name != selection.name else None
    held = bool(getattr(selection.backend, "hold", False))
    return FirewallObservation(selection, state, now, held)
