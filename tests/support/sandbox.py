"""A temporary host root that looks like a Debian host with Docker installed.

Every test works here, never on this machine's own /etc, firewall or docker socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import root_marker

# CI sets this: a test that needs root, namespaces or dockerd fails instead of skipping.
REQUIRE_ENV = "NODEGUARD_TESTS_REQUIRE_PRIVILEGED"

DOCKER_GID = 990
ALICE_UID = 1000
BOB_UID = 1001


def require(condition: bool, why: str) -> None:
    """Skip a test whose environment is missing — or fail it, when CI demands the real parts."""
    if condition:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"required by {REQUIRE_ENV}=1 but missing: {why}")
    pytest.skip(why)


def require_root() -> None:
    """Skip (or fail, in CI) a test run without root; fail one that does not carry the root marker."""
    root_marker.check()
    require(os.geteuid() == 0, "needs root")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs {name} on PATH")
    assert path is not None
    return path


PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:{alice}:{alice}:Alice:/home/alice:/bin/bash
bob:x:{bob}:{bob}:Bob:/home/bob:/bin/bash
bobby:x:1002:1002:Bobby:/home/bobby:/bin/bash
"""
GROUP = """root:x:0:
daemon:x:1:
alice:x:{alice}:
bob:x:{bob}:
bobby:x:1002:
docker:x:{docker}:
"""
SHADOW = """root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
alice:!:19000:0:99999:7:::
bob:!:19000:0:99999:7:::
bobby:!:19000:0:99999:7:::
"""
GSHADOW = """root:*::
daemon:*::
alice:!::
bob:!::
bobby:!::
docker:!::
"""


@dataclass
class Sandbox:
    """Paths of a sandbox host root; `host_path("/etc/group")` -> the real file."""

    root: Path

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write(self, host_path: str, text: str, mode: int = 0o644) -> Path:
        p = self.path(host_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
        return p

    def read(self, host_path: str) -> str:
        return self.path(host_path).read_text()

    def snapshot(self) -> dict[str, tuple[int, int, int, bytes | str | None]]:
        """Every entry's (mode, uid, gid, content or link target): to prove nothing changed."""
        out: dict[str, tuple[int, int, int, bytes | str | None]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                rel = str(p.relative_to(self.root))
                if rel.startswith(("var/lib/docker", "run/docker/", "run/containerd")):
                    continue  # dockerd's own state churns by itself
                st = p.lstat()
                content: bytes | str | None = None
                if p.is_symlink():
                    content = os.readlink(p)
                elif p.is_file():
                    content = p.read_bytes()
                out[rel] = (st.st_mode, st.st_uid, st.st_gid, content)
        return out


def make_sandbox(root: Path) -> Sandbox:
    sb = Sandbox(root)
    ids = {"alice": ALICE_UID, "bob": BOB_UID, "docker": DOCKER_GID}
    sb.write("/etc/passwd", PASSWD.format(**ids))
    sb.write("/etc/group", GROUP.format(**ids))
    sb.write("/etc/shadow", SHADOW, 0o640)
    sb.write("/etc/gshadow", GSHADOW, 0o640)
    for folder in ("/etc/docker", "/run", "/var/lib", "/etc/systemd/system", "/lib/systemd/system"):
        sb.path(folder).mkdir(parents=True, exist_ok=True)
    # As on most distributions: /var/run is an absolute symlink that must resolve inside the root.
    os.symlink("/run", sb.path("/var/run"))
    sb.path("/etc/docker").chmod(0o755)
    return sb


def usermod_add(sb: Sandbox, user: str, group: str = "docker") -> None:
    """The real shadow-utils, editing the sandbox through --prefix (usermod refuses to run without root)."""
    require_root()
    require_tool("usermod")
    subprocess.run(["usermod", "--prefix", str(sb.root), "-aG", group, user], check=True,
                   capture_output=True, text=True)


def gpasswd_delete(sb: Sandbox, user: str, group: str = "docker") -> None:
    # --root, the long name: the short chroot flag is -R before shadow 4.13 and -Q since (-R became --restrict).
    require_root()
    require_tool("gpasswd")
    subprocess.run(["gpasswd", "--root", str(sb.root), "-d", user, group], check=True, capture_output=True, text=True)
