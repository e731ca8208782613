"""nodeguard: hold every Docker host to a written security policy.

The public surface is small on purpose: load a policy, point at a host root, run the audit.
Everything under a leading underscore or in submodules not re-exported here is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nodeguard._version import __version__

if TYPE_CHECKING:
    from nodeguard.audit import run_audit
    from nodeguard.host import HostRoot
    from nodeguard.policy import Policy, PolicyError, load_policy
    from nodeguard.structs import Finding, Mode, Severity, Status

# Loaded on first use (PEP 562): `python -m nodeguard.health`, the pod's probe every 30 s, must
# not pay for importing every control (about half a second of CPU).
_LAZY = {
    "run_audit": "nodeguard.audit", "HostRoot": "nodeguard.host", "Policy": "nodeguard.policy",
    "PolicyError": "nodeguard.policy", "load_policy": "nodeguard.policy", "Finding": "nodeguard.structs",
    "Mode": "nodeguard.structs", "Severity": "nodeguard.structs", "Status": "nodeguard.structs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nodeguard' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

__all__ = [
    "Finding",
    "HostRoot",
    "Mode",
    "Policy",
    "PolicyError",
    "Severity",
    "Status",
    "__version__",
    "load_policy",
    "run_audit",
]
