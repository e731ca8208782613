"""What the image test needs to run the real Dockerfile with no network: a base image and a wheelhouse.

Nothing can be pulled here and the test dockerd has no route out, so:

- the **base image** is imported (`docker import`) from a root filesystem assembled from this
  machine's own Python: the interpreter and its standard library laid out under /usr/local as in
  the official `python:3.11-slim` image, pip, every shared library `ldd` names for them, and
  busybox for /bin/sh. Seconds to assemble, where debootstrap would take minutes and need a mirror;
- the **wheelhouse** holds every runtime dependency of nodeguard (and the build backend) as a wheel
  repacked from what is installed in this virtualenv — the exact versions the
  other tests ran against. The Dockerfile finds it in the build context and installs with
  `PIP_NO_INDEX=1`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import Distribution, distribution
from pathlib import Path

from packaging.requirements import Requirement

from tests.support.sandbox import require

REPO = Path(__file__).resolve().parents[2]
BASE_PREFIX = Path(sys.base_prefix)
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Trimmed from the standard library: tests, GUI, the static library of the C API, other site
# packages, and a distribution's EXTERNALLY-MANAGED marker (python:3.11-slim has none).
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "site-packages", "dist-packages",
               "__pycache__", "EXTERNALLY-MANAGED"}
_DIST_INFO_SKIP = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(roots: Iterable[str]) -> dict[str, Distribution]:
    """The installed distributions `roots` need at run time (extras followed, markers evaluated)."""
    seen: dict[str, Distribution] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(r, ()) for r in roots]
    while todo:
        name, extras = todo.pop()
        dist = distribution(name)
        key = _normalize(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(req.extras)))
    return seen


def _wheel_name(dist: Distribution, wheel_meta: str) -> str:
    """{name}-{version}-{python}-{abi}-{platform}.whl from the Tag lines of the WHEEL file."""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{'.'.join(parts[0])}-{'.'.join(parts[1])}-{'.'.join(parts[2])}.whl"


def repack_wheel(dist: Distribution, dest: Path) -> Path:
    """An installed distribution back into a wheel: the files its RECORD lists, with a fresh RECORD.

    Console scripts (outside site-packages) are left out: pip regenerates them from entry_points.txt.
    """
    members: list[tuple[str, Path]] = []
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts[0] == ".." or "__pycache__" in parts or str(f).endswith(".pyc"):
            continue
        if parts[0].endswith(".dist-info") and parts[-1] in _DIST_INFO_SKIP:
            continue
        src = Path(str(dist.locate_file(f)))
        if src.is_file():
            members.append((str(f), src))
    info_dir = next(name.split("/")[0] for name, _ in members if name.split("/")[0].endswith(".dist-info"))
    target = dest / _wheel_name(dist, (dist.read_text("WHEEL") or ""))
    record: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as whl:
        for name, src in members:
            data = src.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
            whl.writestr(name, data)
        record.append(f"{info_dir}/RECORD,,")
        whl.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return target


def build_wheelhouse(dest: Path) -> list[str]:
    """Every wheel the Dockerfile's offline build needs, nodeguard's own excepted (built in stage one)."""
    dest.mkdir(parents=True, exist_ok=True)
    dists = [d for key, d in runtime_closure(["nodeguard", "setuptools", "wheel"]).items() if key != "nodeguard"]
    with ThreadPoolExecutor(max_workers=4) as pool:  # zlib and file reads release the GIL
        return sorted(p.name for p in pool.map(lambda d: repack_wheel(d, dest), dists))


def _ldd(paths: Iterable[Path]) -> set[Path]:
    """Every shared library these ELF files load (the dynamic loader included)."""
    libs: set[Path] = set()
    for path in paths:
        proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(Path(m.group(1)))
    return libs


def _copy_with_parents(src: Path, root: Path) -> None:
    """Copy `src` to the same absolute path under `root`, following the symlinks on the way."""
    target = root / str(src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(src.resolve(), target)


def build_python_rootfs(root: Path) -> Path:
    """A root filesystem like python:X.Y-slim's: this machine's interpreter under /usr/local, with pip."""
    require_tool_path("ldd")
    busybox = Path("/bin/busybox")
    require(busybox.exists(), "needs busybox-static (/bin/busybox) for the image's /bin/sh")
    local = root / "usr/local"
    (local / "bin").mkdir(parents=True)
    interpreter = Path(os.path.realpath(sys.executable))
    shutil.copy2(interpreter, local / "bin" / f"python{PY_VERSION}")
    for alias in ("python3", "python"):
        (local / "bin" / alias).symlink_to(f"python{PY_VERSION}")
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": str(BASE_PREFIX),
                                            "installed_platbase": str(BASE_PREFIX)})["stdlib"])
    target_stdlib = local / "lib" / f"python{PY_VERSION}"
    shutil.copytree(stdlib, target_stdlib, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_SKIP or n.startswith("config-")])
    # A shared-library build of CPython finds libpython through its RPATH: ldd names it, and it is
    # copied to that same path below.
    elves = [interpreter, *target_stdlib.glob("lib-dynload/*.so")]
    # Binary wheels (cryptography, grpcio, msgspec, ...) load only glibc's libraries, which
    # the interpreter's own list already holds; scan them anyway, they are few.
    elves += [Path(str(d.locate_file(f))) for d in runtime_closure(["nodeguard"]).values()
              for f in d.files or [] if str(f).endswith(".so") and not str(f).startswith("..")]
    for lib in sorted(_ldd(elves)):
        _copy_with_parents(lib, root)
    for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev", "run", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "mkdir", "ln", "rm", "ls", "cat", "readlink", "env", "true"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    # pip, where this interpreter looks for site packages once it runs from /usr/local.
    site = _site_packages_in(root)
    pip_dist = distribution("pip")
    for f in pip_dist.files or []:
        if str(f).startswith("..") or "__pycache__" in str(f):
            continue
        src = Path(str(pip_dist.locate_file(f)))
        if src.is_file():
            dest = site / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return root


def _site_packages_in(root: Path) -> Path:
    """Ask the copied interpreter itself (chrooted) where its site packages are."""
    proc = subprocess.run(["chroot", str(root), "/usr/local/bin/python3", "-S", "-c",
                           "import site, sys; sys.stdout.write(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True)
    site = root / proc.stdout.strip().lstrip("/")
    site.mkdir(parents=True, exist_ok=True)
    return site


def require_tool_path(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs {name} on PATH")
    assert path is not None
    return path


def tar_rootfs(root: Path, tar_path: Path) -> Path:
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname=".")
    return tar_path


def build_context(dest: Path, wheelhouse: Path) -> Path:
    """The build context as a checkout would give it, plus the wheelhouse; .dockerignore filters it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "nodeguard", dest / "nodeguard", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.move(str(wheelhouse), dest / "wheelhouse")
    return dest
