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
_K8S_ENV = {"k8s.node.name": "NODE_NAME", "k8s.pod.name": "POD_NAME", "k8s.namespace.name": "POD_NAMESPACE"}


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
    return attrs
