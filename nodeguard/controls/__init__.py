"""The controls, one module per enforced surface. `ALL_CONTROLS` is the order they run in.

A control's module is imported when that control is first asked for (`all_controls(names)`):
`check --only socket` does not import the nine others (netfilter backends, sock_diag, the TLS and
sshd parsers...). Asking for `ALL_CONTROLS` imports them all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from nodeguard.controls.base import Context, Control, Outcome

# name -> "module:class", in the order they run (nodeguard.catalog lists the same names in the
# same order: tests/unit/test_catalog.py).
_CLASSES = {
    "daemon-config": "nodeguard.controls.daemon_config:DaemonConfigControl",
    "daemon-files": "nodeguard.controls.daemon_files:DaemonFilesControl",
    "socket": "nodeguard.controls.socket:SocketControl",
    "docker-group": "nodeguard.controls.docker_group:DockerGroupControl",
    "firewall": "nodeguard.controls.firewall:FirewallControl",
    "listeners": "nodeguard.controls.listeners:ListenersControl",
    "runtime": "nodeguard.controls.runtime:RuntimeControl",
    "host": "nodeguard.controls.host_checks:HostControl",
    "host-layout": "nodeguard.controls.host_layout:HostLayoutControl",
    "host-audit": "nodeguard.controls.audit_rules:HostAuditControl",
}


def control_class(name: str) -> type[Control]:
    """The class of the control named `name` ("daemon-config"); KeyError for an unknown name."""
    module, _, attr = _CLASSES[name].partition(":")
    cls: type[Control] = getattr(importlib.import_module(module), attr)
    return cls


def all_controls(names: Iterable[str] | None = None) -> list[Control]:
    """A fresh instance of every control, in run order; of those in `names` only when given."""
    wanted = None if names is None else set(names)
    return [control_class(n)() for n in _CLASSES if wanted is None or n in wanted]


def control_names() -> list[str]:
    return list(_CLASSES)


def rule_ids_by_policy_key() -> dict[str, set[str]]:
    return {cls.policy_key: {r.id for r in cls.rules} for cls in map(control_class, _CLASSES)}


if TYPE_CHECKING:
    ALL_CONTROLS: tuple[type[Control], ...]


def __getattr__(name: str) -> Any:
    # PEP 562: the tuple of classes is built (and every control imported) on first use.
    if name == "ALL_CONTROLS":
        return tuple(control_class(n) for n in _CLASSES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALL_CONTROLS", "Context", "Control", "Outcome", "all_controls", "control_class", "control_names",
           "rule_ids_by_policy_key"]
