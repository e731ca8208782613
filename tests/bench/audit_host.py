"""The host the `check` benchmarks audit: a sandbox host root served by a real dockerd."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.dockerd import Dockerd, import_busybox, running_dockerd
from tests.support.sandbox import Sandbox, make_sandbox, usermod_add


@contextmanager
def audit_host(containers: int) -> Iterator[tuple[Sandbox, Dockerd]]:
    """A host worth auditing: a docker group member, a TLS-less TCP listener flag, a loose
    daemon.json (0606) and `containers` created containers, served by a real dockerd in a network
    namespace of its own. The daemon (by its pid) and the root are removed afterwards, even on failure."""
    root = Path(tempfile.mkdtemp(prefix="ng-", dir="/tmp"))
    try:
        sb = make_sandbox(root)
        usermod_add(sb, "bob")
        with running_dockerd(sb, {"icc": False, "live-restore": True}, hosts=["tcp://127.0.0.1:23750"]) as d:
            image = import_busybox(d)
            for i in range(containers):
                d.cli("create", "--name", f"bench-{i:03d}", image, "sleep", "3600")
            sb.path("/etc/docker/daemon.json").chmod(0o606)
            yield sb, d
    finally:
        shutil.rmtree(root, ignore_errors=True)
