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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `check` forks its reader (nodeguard.api_prefetch) before the policy is imported
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
    wait = timeout if timeout is not None else policy.spec.controls.runtime.timeout_seconds
    return connect_at(socket_path(host, policy), policy.spec.controls.socket.path, wait, counter=counter)


def connect_at(real: Path, shown: str, wait: float, *, counter: CallCounter | None = None) -> Any:
    """A `docker.APIClient` on the socket at `real` (named `shown` in messages), every request
    bounded by `wait` seconds; raises DaemonUnavailable with a reason."""
    import docker
    import docker.errors
    import requests

    if not real.exists():
        raise DaemonUnavailable(f"no daemon socket at {shown} ({real}): is dockerd running?")
    if not real.is_socket():
        raise DaemonUnavailable(f"{shown} ({real}) is not a socket")
    # Every call on this client is bounded: a hung dockerd costs at most `wait` per request.
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


# -- one pass's reads -------------------------------------------------------------------------

# What nodeguard reads of a container's inspect: the rest (its full config, the environment with
# its secrets, labels, the network settings) is dropped as soon as it arrives, so a host with
# thousands of containers is never held in memory whole.
_HOST_CONFIG_KEYS = ("Privileged", "CapAdd", "PidMode", "NetworkMode", "SecurityOpt")
_MOUNT_KEYS = ("Type", "Source", "Destination", "RW")
INSPECT_WORKERS = 4


def slim_inspect(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields of `GET /containers/{id}/json` that the runtime rules read, in the daemon's shape."""
    state = raw.get("State")
    host_config = raw.get("HostConfig") or {}
    return {
        "Id": raw.get("Id", ""),
        "Name": raw.get("Name", ""),
        "State": {"Status": state.get("Status", "")} if isinstance(state, dict) else state,
        "Config": {"Image": (raw.get("Config") or {}).get("Image", "")},
        "HostConfig": {k: host_config[k] for k in _HOST_CONFIG_KEYS if k in host_config},
        "Mounts": [{k: m[k] for k in _MOUNT_KEYS if k in m} for m in raw.get("Mounts") or []],
    }


@dataclass
class DaemonReads:
    """What one pass asked the daemon: /version, /info and every container's inspect (slimmed).

    Plain JSON values only, so a reader in another process can hand them over as they are.
    """

    version: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    containers: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    error: str | None = None
    # The socket accepted the connection but the daemon did not answer within the timeout.
    unresponsive: bool = False


def read_daemon(real: Path, shown: str, timeout: float, counter: CallCounter | None = None) -> DaemonReads:
    """Version, info and every container (created or running) of the daemon at `real`; each request
    bounded by `timeout` seconds. A daemon that is missing, hung or failing mid-read is an `error`
    in the result, never an exception."""
    from concurrent.futures import ThreadPoolExecutor

    reads = DaemonReads()
    counter = counter if counter is not None else CallCounter()
    try:
        client = connect_at(real, shown, timeout, counter=counter)
    except DaemonUnavailable as exc:
        reads.error = str(exc)
        reads.unresponsive = isinstance(exc, DaemonUnresponsive)
        reads.calls = counter.calls
        return reads
    try:
        def inspect(cid: str) -> dict[str, Any] | None:
            try:
                return slim_inspect(client.inspect_container(cid))
            except Exception as exc:  # removed between the list and the inspect
                if getattr(getattr(exc, "response", None), "status_code", None) == 404:
                    return None
                raise

        # Every call at once, a few at a time (the client's connection pool holds 10): version
        # and info beside the list, then one inspect per container, since the list has no
        # HostConfig (privileged, caps, pid mode). The inspects are queued as soon as the list
        # is in, not after info: dockerd takes ~10 ms over /info, the inspects fill that wait.
        with ThreadPoolExecutor(max_workers=INSPECT_WORKERS) as pool:
            version = pool.submit(client.version, api_version=False)
            info = pool.submit(client.info)
            # all=True: a created or stopped container is one `docker start` away from running.
            ids = [str(c["Id"]) for c in client.containers(all=True)]
            inspected = [pool.submit(inspect, cid) for cid in ids]
            try:
                reads.version = dict(version.result())
                reads.info = dict(info.result())
                for fut in inspected:
                    raw = fut.result()
                    if raw is not None:
                        reads.containers.append(raw)
            except BaseException:
                # A daemon failing mid-read: the queued inspects are not sent (each could wait
                # out the timeout); the ones in flight end with their own timeout.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    except Exception as exc:  # docker.errors.APIError, requests errors: a daemon going away mid-read
        reads.unresponsive = is_timeout(exc)
        reads.error = (f"the daemon at {shown} stopped answering mid-read (timeout {timeout:g}s)"
                       if reads.unresponsive else f"the daemon at {shown} failed mid-read: {describe_error(exc)}")
    finally:
        client.close()
        reads.calls = counter.calls
    return reads
