"""nodeguard: hold every Docker host to a written security policy.

The public surface is small on purpose: load a policy, point at a host root, run the audit.
Everything under a leading underscore or in submodules not re-exported here is internal.
"""

from nodeguard._version import __version__
from nodeguard.audit import run_audit
from nodeguard.host import HostRoot
from nodeguard.policy import Policy, PolicyError, load_policy
from nodeguard.structs import Finding, Mode, Severity, Status

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
