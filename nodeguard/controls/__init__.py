"""The controls, one module per enforced surface. `ALL_CONTROLS` is the order they run in."""

from __future__ import annotations

from nodeguard.controls.audit_rules import HostAuditControl
from nodeguard.controls.base import Context, Control, Outcome
from nodeguard.controls.daemon_config import DaemonConfigControl
from nodeguard.controls.daemon_files import DaemonFilesControl
from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.controls.firewall import FirewallControl
from nodeguard.controls.host_checks import HostControl
from nodeguard.controls.host_layout import HostLayoutControl
from nodeguard.controls.listeners import ListenersControl
from nodeguard.controls.runtime import RuntimeControl
from nodeguard.controls.socket import SocketControl

ALL_CONTROLS: tuple[type[Control], ...] = (
    DaemonConfigControl,
    DaemonFilesControl,
    SocketControl,
    DockerGroupControl,
    FirewallControl,
    ListenersControl,
    RuntimeControl,
    HostControl,
    HostLayoutControl,
    HostAuditControl,
)


def all_controls() -> list[Control]:
    return [cls() for cls in ALL_CONTROLS]


def control_names() -> list[str]:
    return [cls.name for cls in ALL_CONTROLS]


def rule_ids_by_policy_key() -> dict[str, set[str]]:
    return {cls.policy_key: {r.id for r in cls.rules} for cls in ALL_CONTROLS}


__all__ = ["ALL_CONTROLS", "Context", "Control", "Outcome", "all_controls", "control_names",
           "rule_ids_by_policy_key"]
