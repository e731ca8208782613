"""Who is speaking: the OpenTelemetry resource of every event and metric this agent sends.

Attribute names follow the OpenTelemetry semantic conventions (SEMCONV_VERSION): `service.*`,
`host.*` and `k8s.*`. The host is the one under the host root (`/host` in a pod), so its
machine-id and hostname are read from there, not from the container's own /etc.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from nodeguard._version import __version__
from nodeguard.host import HostRoot

SEMCONV_VERSION = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
SERVICE_NAME = "nodeguard"

# Kubernetes' downward API, as the Helm chart sets it.
_K8S_ENV = {"k8s.node.name": "NODE_NAME", "k8s.pod.name": "POD_NAME", "k8s.namespace.name": "POD_NAMESPACE",
            "k8s.pod.uid": "POD_UID"}


def _read_first_line(host: HostRoot, host_path: str) -> str | None:
    try:
        text = host.read_text(host_path, limit=4096)
    except OSError:
        return None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line or None


def machine_id(host_root: Path) -> str | None:
    """systemd's /etc/machine-id of the host (dbus' copy as a fallback): the `host.id` of the semconv."""
    try:
        host = HostRoot(host_root)
    except OSError:
        return None
    return _read_first_line(host, "/etc/machine-id") or _read_first_line(host, "/var/lib/dbus/machine-id")


def host_name(host_root: Path) -> str:
    try:
        name = _read_first_line(HostRoot(host_root), "/etc/hostname")
    except OSError:
        name = None
    return name or socket.gethostname()


def resource_attributes(host_root: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if env is None else env
    attrs = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "host.name": host_name(host_root),
    }
    mid = machine_id(host_root)
    if mid:
        attrs["host.id"] = mid
    for key, var in _K8S_ENV.items():
        if env.get(var):
            attrs[key] = env[var]
    # OTEL_RESOURCE_ATTRIBUTES naming one wins (Resource.create merges it; ours would override it).
    declared = {kv.split("=", 1)[0].strip() for kv in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")}
    if "service.instance.id" not in declared:
        attrs["service.instance.id"] = service_instance_id(attrs)
    return attrs


def service_instance_id(attrs: Mapping[str, str]) -> str:
    """Which agent this is, stable across restarts (the SDK's default is a new random UUID per
    process, so every restart would start a new set of metric series).

    In a cluster the node's name: one agent per node (the DaemonSet's maxSurge is 0), and it
    survives pod restarts, rollouts and upgrades, where the pod's uid and name do not. Outside a
    cluster the host's machine-id, else its hostname.
    """
    return attrs.get("k8s.node.name") or attrs.get("host.id") or attrs["host.name"]
