"""A read-only connection to the daemon's API, on the socket the policy names.

Access to this socket is root on the host: nodeguard only ever sends GET requests through it
(containers, inspect, info, version, events). The socket is found inside the host root like every
other host path, so `/var/run/docker.sock` lands on `<root>/run/docker.sock` when `/var/run` is a
symlink to `/run`.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeguard.host import HostRoot
from nodeguard.policy import Policy


class DaemonUnavailable(Exception):
    """The daemon cannot be asked: no socket, nothing listening, or an API error."""


class DaemonUnresponsive(DaemonUnavailable):
    """The socket accepts connections but the daemon does not answer within the timeout (a hung dockerd)."""


def is_timeout(exc: BaseException) -> bool:
    """True when a timeout is anywhere in the chain (socket.timeout, requests/urllib3 Read/ConnectTimeout)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TimeoutError) or "Timeout" in type(cur).__name__:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


@dataclass
class CallCounter:
    """Counts the HTTP requests a client sends (a response hook on its requests session)."""

    calls: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        path = str(getattr(response.request, "path_url", "?")).split("?", 1)[0]
        # /v1.41/containers/<id>/json -> /containers/{id}/json: one bucket per endpoint.
        parts = path.split("/")
        if len(parts) > 3 and parts[2] == "containers" and parts[3] not in ("json", "create"):
            parts[3] = "{id}"
        key = "/" + "/".join(parts[2:]) if len(parts) > 2 and parts[1].startswith("v") else path
        with self._lock:
            self.calls += 1
            self.by_path[key] = self.by_path.get(key, 0) + 1
        return response


def socket_path(host: HostRoot, policy: Policy) -> Path:
    """The real path of the daemon socket named by `controls.socket.path`, resolved inside the root."""
    return host.resolve(policy.spec.controls.socket.path)


def connect(host: HostRoot, policy: Policy, *, counter: CallCounter | None = None,
            timeout: float | None = None) -> Any:
    """A low-level `docker.APIClient` on the policy's socket; raises DaemonUnavailable with a reason."""
    import docker
    import docker.errors
    import requests

    real = socket_path(host, policy)
    shown = policy.spec.controls.socket.path
    if not real.exists():
        raise DaemonUnavailable(f"no daemon socket at {shown} ({real}): is dockerd running?")
    if not real.is_socket():
        raise DaemonUnavailable(f"{shown} ({real}) is not a socket")
    # Every call on this client is bounded: a hung dockerd costs at most `wait` per request.
    wait = timeout if timeout is not None else policy.spec.controls.runtime.timeout_seconds
    try:
        # version="auto" asks the daemon which API version it speaks (one GET /version): an SDK
        # newer than the daemon would otherwise be refused.
        client = docker.APIClient(base_url=f"unix://{real}", version="auto", timeout=wait)
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        if is_timeout(exc):
            raise DaemonUnresponsive(f"the daemon at {shown} accepts connections but did not answer within "
                                     f"{wait:g}s") from None
        raise DaemonUnavailable(f"the daemon at {shown} does not answer: {_reason(exc)}") from None
    # A unix socket takes no proxy (the SDK's adapter ignores them), no .netrc password and no CA
    # bundle; left on, requests reads the environment for all three on every request (~0.4 ms each).
    client.trust_env = False
    if counter is not None:
        counter.calls += 1  # the version negotiation above
        counter.by_path["/version"] = counter.by_path.get("/version", 0) + 1
        client.hooks["response"].append(counter.hook)
    return client


def _reason(exc: BaseException) -> str:
    """A one-line cause: requests/urllib3 wrap the errno several layers deep."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.EACCES):
            return cur.strerror or str(cur)
        cur = cur.__cause__ or cur.__context__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    return _reason(exc)
