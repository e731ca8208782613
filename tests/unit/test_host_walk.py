"""The in-root walker (nodeguard.host.walk), both implementations, against a hostile host root.

The oracle is the file actually opened: the descriptor's device and inode, compared with the
inodes inside the root and with a sentinel file planted outside it, where every escape would land
(`/`, `../../..` and an absolute link all name the sentinel's folder when resolved from the host's
own `/`). Races use a separate process to swap a folder for a symlink, so the swap runs in
parallel with the walk rather than between two of its Python bytecodes.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeguard.host import HostPathError, HostRoot
from nodeguard.host import walk as host_walk
from nodeguard.host.walk import MAX_SYMLINKS, Walker
from tests.support.sandbox import require, require_root
from tests.support.walkers import WALKER_NAMES, use_walker

SENTINEL = "secret"  # the file name every walk asks for; the copy outside the root must never be opened


@pytest.fixture(params=WALKER_NAMES)
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Walker:
    use_walker(request.param, monkeypatch)
    return host_walk.WALKERS[request.param]()


@dataclass
class Tree:
    outside: Path  # holds the sentinel: tmp/out/secret
    root: Path  # tmp/out/a/b/root, so that `../../..` from the root's top folder names `outside`
    sentinel: tuple[int, int]

    def inodes(self) -> set[tuple[int, int]]:
        """Every inode inside the root, as (st_dev, st_ino)."""
        found = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [".", *dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                found.add((st.st_dev, st.st_ino))
        return found

    def ident(self, host_path: str) -> tuple[int, int]:
        st = os.stat(self.root / host_path.lstrip("/"))
        return st.st_dev, st.st_ino


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    outside = tmp_path / "out"
    root = outside / "a/b/root"
    (root / "etc/docker").mkdir(parents=True)
    (outside / SENTINEL).write_text("outside: must never be opened\n")
    # The in-root copies of every place a link could name: a walk that stays inside finds one.
    for rel in (SENTINEL, f"etc/{SENTINEL}", f"etc/docker/{SENTINEL}", f"{str(outside).lstrip('/')}/{SENTINEL}"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("inside\n")
    st = os.stat(outside / SENTINEL)
    yield Tree(outside, root, (st.st_dev, st.st_ino))


def opened(walker: Walker, tree: Tree, path: str, *, follow_last: bool = True) -> tuple[int, int]:
    root_fd = os.open(tree.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = walker.open(root_fd, path, follow_last=follow_last)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


# -- plain symlinks pointing out -----------------------------------------------------------------


@pytest.mark.parametrize("link", ["/", "../../..", "../../../../../../../../../..", "absolute-outside"])
def test_a_link_out_of_the_root_lands_inside(walker: Walker, tree: Tree, link: str) -> None:
    if link == "absolute-outside":
        # The outside folder's own name: inside the root it names the in-root copy of that folder.
        link, lands_on = str(tree.outside), f"{tree.outside}/{SENTINEL}"
    else:
        lands_on = f"/{SENTINEL}"  # `/` and `..` above the root are the root
    os.symlink(link, tree.root / "up")
    got = opened(walker, tree, f"/up/{SENTINEL}")
    assert got != tree.sentinel
    assert got == tree.ident(lands_on)


def test_a_chain_of_forty_links_is_followed_and_the_41st_is_a_loop(walker: Walker, tree: Tree) -> None:
    def chain(prefix: str, n: int, end: str) -> str:
        for i in range(n):
            os.symlink(f"{prefix}{i + 1}" if i + 1 < n else end, tree.root / f"{prefix}{i}")
        return f"/{prefix}0"

    ok = chain("l", MAX_SYMLINKS, f"/etc/{SENTINEL}")
    assert opened(walker, tree, ok) == tree.ident(f"/etc/{SENTINEL}")
    assert opened(walker, tree, chain("d", MAX_SYMLINKS, "etc") + f"/{SENTINEL}") == tree.ident(f"/etc/{SENTINEL}")
    too_long = chain("m", MAX_SYMLINKS + 1, f"/etc/{SENTINEL}")
    with pytest.raises(HostPathError) as exc_info:
        opened(walker, tree, too_long)
    assert exc_info.value.errno == errno.ELOOP
    # The same limits through HostRoot, whose final-link step (open_parent, resolve) is its own loop.
    host = HostRoot(tree.root, walker=walker)
    assert host.read_bytes(ok) == b"inside\n"
    assert host.resolve(ok) == tree.root / "etc" / SENTINEL
    for call in (lambda: host.read_bytes(too_long), lambda: host.resolve(too_long), lambda: host.stat(too_long)):
        with pytest.raises(HostPathError):
            call()
    with pytest.raises(HostPathError), host.open_parent(too_long):
        pass
    os.symlink("loop", tree.root / "loop")
    with pytest.raises(HostPathError):
        opened(walker, tree, f"/loop/{SENTINEL}")


# -- a folder swapped for a symlink while the walk runs ------------------------------------------

RACER = textwrap.dedent("""
    import ctypes, os, sys
    # renameat2(RENAME_EXCHANGE): the folder and a ready-made symlink trade names in one step, so the
    # name always exists and is, at any instant, either the real folder or the link out.
    libc = ctypes.CDLL(None, use_errno=True)
    folder, link = (os.fsencode(a) for a in sys.argv[1:3])
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    print("ready", flush=True)
    while True:
        if libc.renameat2(AT_FDCWD, folder, AT_FDCWD, link, RENAME_EXCHANGE) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
""")

RACE_ITERATIONS = 3000


def race(walker: Walker, tree: Tree, path: str, swap: tuple[Path, Path], label: str,
         shapes: int = 1) -> dict[str, int]:
    """Walk `path` (through the walker alone, and through HostRoot.open_parent) while another process
    exchanges the two `swap` entries as fast as it can; count what was opened, and the escapes: a
    descriptor on the sentinel, or on anything that was not inside the root when we began.

    Goes on past RACE_ITERATIONS (up to ten times that) until `shapes` different in-root files were
    opened: a run that never met the swapped shape proves nothing.
    """
    inside = tree.inodes()
    host = HostRoot(tree.root, walker=walker)
    names = {tree.ident(p): p for p in (f"/{SENTINEL}", f"/etc/{SENTINEL}", f"/etc/docker/{SENTINEL}")}
    names[tree.ident(f"{tree.outside}/{SENTINEL}")] = "<the outside folder's name, inside the root>/secret"
    outcomes: dict[str, int] = {}
    escapes = iterations = 0
    racer = subprocess.Popen([sys.executable, "-c", RACER, *map(str, swap)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        while iterations < RACE_ITERATIONS or (
                sum(k.startswith("opened ") for k in outcomes) < shapes and iterations < 10 * RACE_ITERATIONS):
            iterations += 1
            try:
                got = opened(walker, tree, path)
                with host.open_parent(path) as (dfd, _name):
                    st = os.fstat(dfd)
                    parent = (st.st_dev, st.st_ino)
            except OSError as exc:
                key = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                outcomes[key] = outcomes.get(key, 0) + 1
                continue
            if got == tree.sentinel or got not in inside or parent not in inside:
                escapes += 1
            key = f"opened {names.get(got, 'another in-root file')}"
            outcomes[key] = outcomes.get(key, 0) + 1
        assert racer.poll() is None, f"the racer stopped: the walks did not race anything ({racer.stderr})"
    finally:
        racer.kill()
        racer.wait()
    print(f"\nwalker={walker.name} {label} path={path} iterations={iterations} escapes={escapes} outcomes={outcomes}")
    assert escapes == 0, outcomes
    assert sum(outcomes.values()) == iterations
    assert sum(k.startswith("opened ") for k in outcomes) >= shapes, outcomes
    return outcomes


@pytest.mark.parametrize("folder", ["etc", "etc/docker"])
@pytest.mark.parametrize("link", ["/", "dotdot", "absolute-outside"])
def test_a_folder_swapped_for_a_link_mid_walk_never_leads_out(walker: Walker, tree: Tree, folder: str,
                                                                link: str) -> None:
    depth = folder.count("/") + 1
    # Each names the sentinel's folder when the host's own `/` resolves it.
    target = {"/": "/", "dotdot": "../" * (depth + 2), "absolute-outside": str(tree.outside)}[link]
    os.symlink(target, tree.root / f"{folder}.link")
    race(walker, tree, f"/{folder}/{SENTINEL}", (tree.root / folder, tree.root / f"{folder}.link"),
         f"swap={folder}<->link:{link}", shapes=2)


def test_a_folder_moved_out_of_the_root_mid_walk_never_leads_out(walker: Walker, tree: Tree) -> None:
    # /etc/docker trades places with a folder outside the root: from there, the physical `..`
    # climbs to the sentinel's folder. Kept inside, `..` stops at the root (openat2 notices the
    # rename and answers EAGAIN, retried; the userspace walker climbs back the folders it holds).
    away = tree.outside / "x/y/docker"
    away.mkdir(parents=True)
    race(walker, tree, f"/etc/docker/../../../{SENTINEL}", (tree.root / "etc/docker", away),
         "swap=etc/docker<->outside")


# -- magic links -------------------------------------------------------------------------------------


@pytest.fixture
def proc_inside(tree: Tree) -> Iterator[Path]:
    """A real procfs mounted inside the root, as a pod's /host has the host's /proc."""
    require_root()
    mnt = tree.root / "proc"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.root
def test_magic_links_never_jump_out(walker: Walker, tree: Tree, proc_inside: Path) -> None:
    out_fd = os.open(tree.outside, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    os.symlink(f"/proc/self/root{tree.outside}", tree.root / "etc/magic")
    in_root_copy = tree.ident(f"{tree.outside}/{SENTINEL}")
    try:
        for path in (f"/proc/self/root{tree.outside}/{SENTINEL}", f"/proc/self/fd/{out_fd}/{SENTINEL}",
                     f"/proc/thread-self/root{tree.outside}/{SENTINEL}", f"/etc/magic/{SENTINEL}"):
            try:
                got = opened(walker, tree, path)
            except HostPathError as exc:
                # openat2 with RESOLVE_NO_MAGICLINKS refuses the jump outright.
                assert walker.name == "openat2" and exc.errno == errno.ELOOP, exc
                continue
            # The userspace walker reads the link as text ("/", or the folder's name) and walks it
            # inside the root, to the in-root copy.
            assert walker.name == "userspace"
            assert got != tree.sentinel
            assert got == in_root_copy, path
    finally:
        os.close(out_fd)


# -- both walkers give the same answer -----------------------------------------------------------

_TARGETS = ["/", "..", "../..", "/a", "a/b", "../c", "/a/b/../../c", "missing", "/missing/x", "f", "self",
            "/a/link", "b/../../f", ".", "c/f/..", "/c/"]
_NAMES = ["a", "b", "c", "f", "link", "self", "missing", "..", ".", ""]


def _answer(walker: Walker, root: Path, path: str, follow_last: bool, directory: bool) -> tuple[object, ...]:
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = walker.open(root_fd, path, follow_last=follow_last, directory=directory)
    except OSError as exc:
        return ("error", type(exc).__name__, exc.errno)
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    os.close(fd)
    return ("opened", st.st_dev, st.st_ino)


def test_both_walkers_agree_on_random_trees(tmp_path: Path) -> None:
    require(host_walk.openat2_available(),
            "this kernel does not let us call openat2: nothing to compare the userspace walker with")
    kernel, userspace = host_walk.Openat2Walker(), host_walk.UserspaceWalker()
    rng = random.Random(13)
    compared = 0
    for n in range(40):
        root = tmp_path / f"t{n}"
        for d in ("a/b", "c"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for f in ("f", "a/f", "a/b/f", "c/f"):
            (root / f).write_text(f)
        for folder in ("", "a", "a/b", "c"):
            for name in ("link", "self"):
                os.symlink(rng.choice(_TARGETS) if name == "link" else name, root / folder / name)
        for _ in range(60):
            path = "/".join(rng.choice(_NAMES) for _ in range(rng.randint(1, 5)))
            for follow_last in (True, False):
                for directory in (False, True):
                    want = _answer(kernel, root, path, follow_last, directory)
                    got = _answer(userspace, root, path, follow_last, directory)
                    assert got == want, (n, path, follow_last, directory, os.listdir(root))
                    compared += 1
    assert compared == 40 * 60 * 4


# -- openat2 filtered by seccomp: the fallback takes over --------------------------------------

SECCOMP_CHILD = textwrap.dedent("""
    import ctypes, errno, os, struct, sys
    from nodeguard.host import walk as host_walk
    from nodeguard.host import HostRoot

    # A real seccomp filter, as a container runtime's default profile would install: openat2 -> EPERM.
    def insn(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        insn(0x20, 0, 0, 0),                      # ld  [nr]
        insn(0x15, 0, 1, 437),                    # jeq #openat2
        insn(0x06, 0, 0, 0x00050000 | errno.EPERM),  # ret ERRNO(EPERM)
        insn(0x06, 0, 0, 0x7FFF0000),             # ret ALLOW
    ])
    buf = ctypes.create_string_buffer(prog)
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
    try:
        host_walk.openat2(-100, "/", os.O_PATH, 0)
    except OSError as exc:
        assert exc.errno == errno.EPERM
    else:
        raise AssertionError("the filter let openat2 through")
    assert not host_walk.openat2_available()
    walker = host_walk.Openat2Walker()  # chosen by a caller that probed before the filter came
    host = HostRoot(sys.argv[1], walker=walker)
    print(host.read_text("/up/secret").strip(), walker._refused)
""")


def test_openat2_refused_by_seccomp_falls_back_to_the_userspace_walker(tree: Tree) -> None:
    os.symlink("../../..", tree.root / "up")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SECCOMP_CHILD, str(tree.root)], capture_output=True, text=True,
                          cwd=repo, timeout=60, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inside", "True"]


# -- resolve: where a missing file would be ------------------------------------------------------


def test_resolve_follows_dangling_links_to_where_the_file_would_be(walker: Walker, tree: Tree) -> None:
    host = HostRoot(tree.root, walker=walker)
    os.symlink("/nope/x", tree.root / "etc/final")  # a dangling last name
    os.symlink("../missing/dir", tree.root / "etc/middle")  # a dangling folder on the way
    os.symlink("middle/../../..", tree.root / "etc/climb")  # `..` after a missing folder, by name
    assert host.resolve("/etc/final") == tree.root / "nope/x"
    assert host.resolve("/etc/final", follow_last=False) == tree.root / "etc/final"
    assert host.resolve("/etc/middle/file") == tree.root / "missing/dir/file"
    assert host.resolve("/etc/climb/secret") == tree.root / "secret"
    assert host.resolve(f"/etc/{SENTINEL}") == tree.root / "etc" / SENTINEL
    with pytest.raises(FileNotFoundError), host.open_parent("/etc/middle/file"):
        pass
    os.symlink("docker/new.json", tree.root / "etc/creates")
    with host.open_parent("/etc/creates") as (dfd, name):  # the name may be missing, not its folder
        assert (name, os.fstat(dfd).st_ino) == ("new.json", os.stat(tree.root / "etc/docker").st_ino)
