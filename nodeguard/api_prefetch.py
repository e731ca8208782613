"""`check`'s Docker API reads, made by a forked process that imports the Docker SDK meanwhile.

Importing the Docker SDK (requests, urllib3, charset_normalizer) costs `check` ~85 ms, a third of
its run, and an import holds the GIL: on a thread it overlaps nothing. So `check` forks this reader
first thing, before it loads the policy. The child imports the SDK while the parent parses the
policy and imports the controls; the audit then sends it the socket and the timeout, the child
makes the very reads the agent makes in process (`docker_api.read_daemon`: bounded by the same
timeout, read-only GETs) and hands them back as one JSON document, while the parent runs the
file-based controls.

The child never decides anything: it only reads. If it cannot answer (it died, it was killed, its
answer does not parse) the parent reads the daemon itself and logs why, so a broken reader costs
time, never a finding. The child exits as soon as its request pipe closes, and `close` kills and
reaps one that is still reading: no process outlives `check`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from nodeguard.docker_api import CallCounter, DaemonReads, read_daemon

if TYPE_CHECKING:
    from nodeguard.host import HostRoot
    from nodeguard.policy import Policy

log = logging.getLogger(__name__)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _serve(requests: int, answers: int) -> int:
    """The child: import the SDK, wait for one request, read the daemon, answer. Returns the exit code."""
    # Nothing of the parent's output is the child's to hold: a `check | jq` pipe ends when the
    # parent exits, not when a child still reading a hung daemon does.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    import docker  # noqa: F401  (the point of the fork: read_daemon would import it later)

    request = _read_all(requests)
    if not request:  # the audit did not need the daemon after all
        return 0
    asked = json.loads(request)
    reads = read_daemon(Path(asked["real"]), asked["shown"], float(asked["timeout"]))
    _write_all(answers, json.dumps(asdict(reads)).encode())
    return 0


_early: ForkedDaemonReader | None = None


def start_early() -> None:
    """Fork the reader now, for `check` to take (nodeguard.__main__, before the CLI is imported).

    A run that never takes it (a usage error, --help) ends it at exit."""
    global _early
    _early = ForkedDaemonReader.start()
    if _early is not None:
        atexit.register(_early.close)


def take_early() -> ForkedDaemonReader | None:
    """The reader start_early forked, once; None if there is none."""
    global _early
    reader, _early = _early, None
    return reader


class ForkedDaemonReader:
    """A child process ready to read the Docker API once. `read` has `read_daemon`'s signature."""

    def __init__(self) -> None:
        self._requests: int | None = None  # parent's write end
        self._answers: int | None = None  # parent's read end
        self._asked: tuple[str, str, float] | None = None
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        ans_r, ans_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            for fd in (req_r, req_w, ans_r, ans_w):
                os.close(fd)
            raise
        if pid == 0:  # the child
            code = 1
            try:
                os.close(req_w)
                os.close(ans_r)
                code = _serve(req_r, ans_w)
            except BaseException:  # whatever it was, the parent reads in process
                log.debug("forked Docker API reader failed", exc_info=True)
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(ans_w)
        self.pid: int | None = pid
        self._requests, self._answers = req_w, ans_r

    def request(self, real: Path, shown: str, timeout: float) -> None:
        """Start the reads now; `read` with the same arguments collects them."""
        if self._requests is None or self._asked is not None:
            return
        self._asked = (str(real), shown, timeout)
        try:
            _write_all(self._requests, json.dumps({"real": str(real), "shown": shown, "timeout": timeout}).encode())
        except OSError:  # the child is gone: `read` finds no answer and reads in process
            log.debug("forked Docker API reader did not take the request", exc_info=True)
        os.close(self._requests)
        self._requests = None

    @classmethod
    def start(cls) -> ForkedDaemonReader | None:
        """A reader, or None when this process cannot fork one (a pids limit, no fds left): the
        runtime control then reads in process, as the agent does."""
        try:
            return cls()
        except OSError as exc:
            log.info("no forked Docker API reader (%s): the daemon is read in process", exc)
            return None

    def request_for(self, host: HostRoot, policy: Policy) -> None:
        """Start the reads the runtime control will ask for: the policy's socket and timeout."""
        shown = policy.spec.controls.socket.path
        try:
            real = host.resolve(shown)
        except OSError:  # the runtime control meets (and reports) the same error itself
            return
        self.request(real, shown, policy.spec.controls.runtime.timeout_seconds)

    def read(self, real: Path, shown: str, timeout: float, counter: CallCounter | None = None) -> DaemonReads:
        """The child's answer to the request made for these arguments, else a read in this process."""
        if self._asked != (str(real), shown, timeout) or counter is not None:
            self.close()
            return read_daemon(real, shown, timeout, counter)
        answers, self._answers = self._answers, None
        why = ""
        try:
            assert answers is not None
            data = _read_all(answers)
            os.close(answers)
            if data:
                return DaemonReads(**json.loads(data))
            why = "no answer"
        except (OSError, ValueError, TypeError) as exc:
            why = f"an answer that does not parse ({exc})"
        finally:
            self.close()
        log.warning("the forked Docker API reader gave %s; reading the daemon in process", why)
        return read_daemon(real, shown, timeout)

    def close(self) -> None:
        """End the child (killed if it is still reading) and reap it. Idempotent."""
        for name in ("_requests", "_answers"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
