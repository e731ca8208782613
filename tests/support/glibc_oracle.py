"""The real consumer of /etc/group and /etc/passwd as an oracle: this machine's glibc in a chroot.

`install(root)` copies `getent` and `id`, every shared library `ldd` names, libnss_files and an
nsswitch.conf (`files` only) into a sandbox root; `GlibcOracle` then runs them there with
`chroot`, so glibc reads exactly the bytes nodeguard reads. Nothing of this machine's /etc is used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.sandbox import require, require_root, require_tool

BINARIES = ("getent", "id")
NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\ngshadow: files\n"
_LIB = re.compile(rb"(/\S+\.so[^\s]*)")


def _libraries(binary: str) -> list[Path]:
    out = subprocess.run(["ldd", binary], capture_output=True, check=True).stdout
    return [Path(m.decode()) for m in _LIB.findall(out)]


def install(root: Path) -> None:
    """Make `root` a chroot in which glibc's getent and id run against root/etc."""
    require_root()
    require_tool("ldd")
    require_tool("chroot")
    libs: set[Path] = set()
    for name in BINARIES:
        binary = require_tool(name)
        target = root / "usr/bin" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, target)
        libs.update(_libraries(binary))
    # glibc >= 2.34 has nss_files inside libc; the stub library is copied when the system has one.
    libs.update(p for p in Path("/lib/x86_64-linux-gnu").glob("libnss_files.so.*") if p.exists())
    for lib in libs:
        target = root / str(lib).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), target)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/nsswitch.conf").write_bytes(NSSWITCH)


@dataclass(frozen=True)
class GroupEntryOut:
    name: bytes
    gid: bytes  # as getent prints it: empty for a NIS compat (+/-) name
    members: tuple[bytes, ...]


class GlibcOracle:
    def __init__(self, root: Path) -> None:
        install(root)
        self.root = root

    def getent(self, *args: bytes | str) -> bytes:
        proc = subprocess.run(["chroot", str(self.root), "/usr/bin/getent", *args], capture_output=True,
                              timeout=30)
        require(proc.returncode in (0, 2), f"getent {args!r} failed: {proc.stderr!r}")
        return proc.stdout

    def groups(self) -> list[GroupEntryOut]:
        """getent group: every entry getgrent returns, in file order."""
        out = []
        for line in self.getent("group").split(b"\n"):
            if not line:
                continue
            name, _pw, gid, members = line.split(b":", 3)
            out.append(GroupEntryOut(name, gid, tuple(m for m in members.split(b",") if m)))
        return out

    def passwd(self) -> list[tuple[bytes, bytes, bytes]]:
        """getent passwd: (name, uid, gid) of every entry getpwent returns."""
        out = []
        for line in self.getent("passwd").split(b"\n"):
            if line:
                fields = line.split(b":")
                out.append((fields[0], fields[2], fields[3]))
        return out

    def gshadow(self) -> list[tuple[bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]]]:
        out = []
        for line in self.getent("gshadow").split(b"\n"):
            if line:
                name, pw, admins, members = line.split(b":", 3)
                out.append((name, pw, tuple(a for a in admins.split(b",") if a),
                            tuple(m for m in members.split(b",") if m)))
        return out

    def initgroups(self, names: list[bytes]) -> dict[bytes, set[int]]:
        """getent initgroups: the supplementary gids glibc gives each name at login (getgrouplist)."""
        if not names:
            return {}
        out: dict[bytes, set[int]] = {}
        lines = self.getent("--", "initgroups", *names).split(b"\n")
        # One output line per name, in order: "name<padding> gid gid ...". The name is known, so it is
        # cut off by length (a name may hold blanks or digits of its own).
        for name, line in zip(names, lines, strict=False):
            assert line.startswith(name), (name, line)
            out[name] = {int(g) for g in line[len(name):].split()}
        return out

    def group_members(self, group: bytes, candidates: set[bytes]) -> set[bytes]:
        """Who glibc puts in `group`: every candidate whose initgroups holds one of the gids getgrnam-
        style lookups give `group`, and every user whose primary gid is one of them."""
        gids = {int(g.gid) for g in self.groups() if g.name == group and g.gid}
        gids.discard(0xFFFFFFFF)
        names = sorted(c for c in candidates if c and b"\n" not in c and b"\0" not in c)
        found = {n for n, got in self.initgroups(names).items() if got & gids}
        found |= {name for name, _uid, gid in self.passwd() if gid and int(gid) in gids}
        return found

    def id_groups(self, user: bytes) -> bytes:
        """`id USER` as a human would run it: used once per layout as a cross-check of initgroups."""
        proc = subprocess.run(["chroot", str(self.root), "/usr/bin/id", "--", user], capture_output=True, timeout=30)
        return proc.stdout
