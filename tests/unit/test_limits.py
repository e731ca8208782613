"""Bounded resources: huge host files audited correctly, a full disk, inotify limits.

The timings and peak memory of the large inputs are in tests/bench/bench_limits.py; these tests
assert only that the answers are right and that failures are clean.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.controls.base import Context
from nodeguard.controls.daemon_config import DaemonConfigControl
from nodeguard.controls.docker_group import DockerGroupControl
from nodeguard.host import DiskFull, HostRoot
from nodeguard.host.accounts import load_accounts, parse_group, parse_passwd
from nodeguard.limits import explain_inotify_error, inotify_limits, is_inotify_limit
from nodeguard.policy import MAX_POLICY_BYTES, PolicyError, load_policy, parse_policy
from nodeguard.structs import Status
from tests.support.bigfiles import big_daemon_json, big_group, big_passwd, big_policy
from tests.support.sandbox import DOCKER_GID, Sandbox, require, require_root, require_tool

REPO = Path(__file__).resolve().parents[2]


# -- large inputs --------------------------------------------------------------------------------


def test_50mb_daemon_json_is_audited(sandbox: Sandbox) -> None:
    raw = big_daemon_json(50 * 1024 * 1024)
    sandbox.path("/etc/docker/daemon.json").write_bytes(raw)
    ctx = Context(HostRoot(sandbox.root), load_policy())
    control = DaemonConfigControl()
    findings = {f.rule: f for f in control.evaluate(control.observe(ctx), ctx.policy)}
    assert findings["valid-json"].status is Status.PASS
    # The settings hidden after 50 MB of labels are still read.
    assert findings["plaintext-2375"].status is Status.FAIL
    assert findings["icc"].status is Status.PASS


def test_a_big_daemon_json_read_without_its_bytes_is_read_as_a_small_one(sandbox: Sandbox) -> None:
    # Above REREAD_ABOVE the bytes are let go while the text is parsed and read again after: the
    # observation must be exactly what reading it whole gives.
    from nodeguard import daemon_settings as dc

    raw = big_daemon_json(2 * dc.REREAD_ABOVE) + b"\n\n"
    sandbox.path("/etc/docker/daemon.json").write_bytes(raw)
    obs = DaemonConfigControl().observe(Context(HostRoot(sandbox.root), load_policy()))
    assert obs.raw == raw and obs.error is None
    assert obs.config == json.loads(raw)
    # A second reader while the first is alive shares its values (the file still holds those bytes) ...
    again = DaemonConfigControl().observe(Context(HostRoot(sandbox.root), load_policy()))
    assert again.config is obs.config and again.raw is obs.raw
    # ... and reads anew once it does not.
    changed = raw.replace(b'"icc": false', b'"icc": true ')
    sandbox.path("/etc/docker/daemon.json").write_bytes(changed)
    third = DaemonConfigControl().observe(Context(HostRoot(sandbox.root), load_policy()))
    assert third.raw == changed and third.config is not obs.config and third.config["icc"] is True


def test_daemon_json_rewritten_while_parsed_is_read_as_it_is_now(sandbox: Sandbox,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nodeguard import daemon_settings as dc

    path = sandbox.path("/etc/docker/daemon.json")
    first = big_daemon_json(2 * dc.REREAD_ABOVE)
    second = first.replace(b'"icc": false', b'"icc": true ')
    path.write_bytes(first)
    parse = dc._parse_text
    calls = []

    def rewritten_meanwhile(text: str) -> object:
        calls.append(1)
        if len(calls) == 1:
            path.write_bytes(second)
        return parse(text)

    monkeypatch.setattr(dc, "_parse_text", rewritten_meanwhile)
    obs = DaemonConfigControl().observe(Context(HostRoot(sandbox.root), load_policy()))
    assert len(calls) == 2
    assert obs.raw == second and obs.config is not None and obs.config["icc"] is True


def test_check_json_report_is_streamed_byte_for_byte(sandbox: Sandbox) -> None:
    # iter_json is what `check --format json` writes: the same text json.dumps gives for to_json.
    from nodeguard.audit import AuditReport, run_audit
    from nodeguard.report import iter_json, to_json

    sandbox.write("/etc/group", big_group(300))
    report = run_audit(HostRoot(sandbox.root), load_policy())
    assert len(report.findings) > 300
    for rep, extra in ((report, None), (AuditReport(), {"docker_engine": False, "message": "none"})):
        whole = json.dumps(to_json(rep, "/host", extra), indent=2, default=str) + "\n"
        assert "".join(iter_json(rep, "/host", extra)) == whole


def test_state_last_good_copy_is_compared_not_read_whole(tmp_path: Path) -> None:
    from nodeguard.state import StateStore

    store = StateStore(tmp_path / "state")
    data = os.urandom(3 * 1024 * 1024 + 5)
    store.save_last_good("daemon.json", data)
    before = os.stat(tmp_path / "state" / "lastgood" / "daemon.json")
    store.save_last_good("daemon.json", data)  # the same bytes: not written again
    assert os.stat(tmp_path / "state" / "lastgood" / "daemon.json").st_ino == before.st_ino
    other = data[:-1] + bytes([data[-1] ^ 1])
    store.save_last_good("daemon.json", other)
    assert store.last_good("daemon.json") == other
    assert HostRoot(tmp_path / "state").holds("/lastgood/daemon.json", other)
    assert not HostRoot(tmp_path / "state").holds("/lastgood/daemon.json", data)


def test_daemon_json_above_the_read_limit_is_a_clear_finding(sandbox: Sandbox) -> None:
    from nodeguard.host import DEFAULT_READ_LIMIT

    p = sandbox.path("/etc/docker/daemon.json")
    with p.open("wb") as f:  # sparse: no need to write 64 MiB for real
        f.truncate(DEFAULT_READ_LIMIT + 1)
    ctx = Context(HostRoot(sandbox.root), load_policy())
    control = DaemonConfigControl()
    findings = {f.rule: f for f in control.evaluate(control.observe(ctx), ctx.policy)}
    assert findings["valid-json"].status is Status.FAIL
    assert "limit" in findings["valid-json"].message


def test_group_of_100k_members_and_passwd_of_100k_users(sandbox: Sandbox) -> None:
    n = 100_000
    sandbox.write("/etc/passwd", big_passwd(n))
    sandbox.write("/etc/group", big_group(n))
    ctx = Context(HostRoot(sandbox.root), load_policy())
    acc = load_accounts(ctx.host)
    assert len(acc.users) == n + 1 and len(acc.groups["docker"].members) == n
    control = DockerGroupControl()
    obs = control.observe(ctx)
    findings = control.evaluate(obs, ctx.policy)
    failed = [f for f in findings if f.rule == "member-allowed" and f.status is Status.FAIL]
    assert len(failed) == n
    assert {f.subject for f in failed} == {f"user{i}" for i in range(n)}
    # Every tenth user has docker as *primary* group: counted too.
    primary = [f for f in findings if f.rule == "primary-group" and f.status is Status.FAIL]
    assert len(primary) == n // 10


def test_account_parsers_keep_every_entry_of_big_files() -> None:
    users = parse_passwd(big_passwd(100_000))
    assert users["user99999"].uid == 10_000 + 99_999
    groups = parse_group(big_group(100_000))
    assert groups["docker"].gid == DOCKER_GID and groups["docker"].members[-1] == "user99999"


def test_policy_of_1_mib_is_parsed_and_one_byte_more_is_refused() -> None:
    text = big_policy(MAX_POLICY_BYTES)
    assert len(text.encode()) == MAX_POLICY_BYTES
    policy = parse_policy(text, "big.yaml")
    assert len(policy.spec.controls.docker_group.allowed_members) > 10_000
    with pytest.raises(PolicyError, match="larger than"):
        parse_policy(text + " ", "big.yaml")


def test_huge_or_fifo_policy_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    from nodeguard.policy import read_policy_bytes

    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(8 * 1024**3)  # sparse 8 GiB: reading it whole would exhaust memory
    assert len(read_policy_bytes(huge)) == MAX_POLICY_BYTES + 1
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(huge)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open would hang the agent at start
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(fifo)


@pytest.mark.parametrize("where", ["spec:\n  mode: *a9\n", "metadata:\n  labels: *a9\n", "kind: *a9\n"])
def test_yaml_alias_bomb_policy_ends_in_a_clear_error(where: str) -> None:
    # "Billion laughs": 9 levels of 9 aliases, 387 million nodes once expanded. Before the alias
    # limit, `spec.mode: *a9` hung the validator (the enum's error message repr'ed every node).
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    text = "x:\n" + textwrap.indent("\n".join(lines), "  ") + \
        "\napiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n" + where
    with pytest.raises(PolicyError, match="aliases expand"):
        parse_policy(text, "bomb.yaml")


# -- a full disk under the state dir -------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(size: str = "1m") -> Iterator[Path]:
    require_root()
    require_tool("mount")
    folder = Path(tempfile.mkdtemp(prefix="ng-full-"))
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        require(proc.returncode == 0, f"cannot mount a tmpfs: {proc.stderr.strip()}")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    finally:
        folder.rmdir()


@pytest.mark.root
def test_full_disk_write_fails_cleanly_and_keeps_the_old_file() -> None:
    with small_tmpfs() as folder:
        io = HostRoot(folder)
        io.write_atomic("/findings.json", b'{"old": true}', default_mode=0o600)
        with pytest.raises(DiskFull) as exc_info:
            io.write_atomic("/findings.json", b"x" * (2 * 1024 * 1024))
        assert exc_info.value.errno == errno.ENOSPC
        assert "nothing was half-written" in str(exc_info.value)
        assert (folder / "findings.json").read_bytes() == b'{"old": true}'
        assert sorted(os.listdir(folder)) == ["findings.json"]  # no temporary file left behind
        # Once there is room again, writing works.
        io.write_atomic("/findings.json", b'{"new": true}')
        assert (folder / "findings.json").read_bytes() == b'{"new": true}'


@pytest.mark.root
def test_full_disk_under_the_state_store() -> None:
    from nodeguard.state import StateStore

    with small_tmpfs() as folder:
        store = StateStore(folder)
        store.save_last_good("daemon.json", b'{"icc": false}\n')
        filler = folder / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            f.write(b"\0" * (2 * 1024 * 1024))  # fill the tmpfs to the last page
        with pytest.raises(OSError) as exc_info:
            store.save_last_good("daemon.json", b'{"icc": false, "x": "' + b"y" * 65536 + b'"}\n')
        assert exc_info.value.errno == errno.ENOSPC
        assert store.last_good("daemon.json") == b'{"icc": false}\n'
        assert sorted(os.listdir(folder / "lastgood")) == ["daemon.json"]


# -- inotify limits ------------------------------------------------------------------------------

_USERNS_SCRIPT = """
import errno, json, sys, time
from pathlib import Path
# This user namespace's own limit: the machine's stays as it is.
Path("/proc/sys/user/max_inotify_watches").write_text(sys.argv[1])
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from nodeguard.limits import explain_inotify_error, inotify_limits, is_inotify_limit
out = {"limit": inotify_limits().max_user_watches, "watched": [], "errors": {}}
observer = Observer()
observer.start()  # started first, so each schedule() adds its watch now and can fail on its own
try:
    for folder in sys.argv[2:]:
        try:
            observer.schedule(FileSystemEventHandler(), folder)
            out["watched"].append(folder)
        except OSError as exc:
            out["errors"][folder] = [is_inotify_limit(exc), explain_inotify_error(exc, folder, 60)]
finally:
    observer.stop()
    observer.join()
print(json.dumps(out))
"""


def _in_user_namespace(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    unshare = require_tool("unshare")
    return subprocess.run([unshare, "--user", "--map-root-user", sys.executable, "-c", script, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def test_inotify_watch_limit_in_a_user_namespace_is_explained(tmp_path: Path) -> None:
    folders = [tmp_path / f"d{i}" for i in range(5)]
    for f in folders:
        f.mkdir()
    machine_before = inotify_limits()
    proc = _in_user_namespace(_USERNS_SCRIPT, "2", *map(str, folders))
    require(proc.returncode == 0 or "unshare" not in proc.stderr, f"no user namespaces: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["limit"] == 2
    assert len(out["watched"]) == 2
    assert len(out["errors"]) == 3
    for is_limit, message in out["errors"].values():
        assert is_limit
        assert "fs.inotify.max_user_watches=2" in message and "not a full disk" in message
        assert "periodic resync (every 60 s)" in message
    # The limit was the namespace's own: this machine's is untouched.
    assert inotify_limits() == machine_before


def test_agent_folder_watcher_survives_the_watch_limit(tmp_path: Path) -> None:
    """The agent's FolderWatcher under a limit of 2 watches: it starts, watches what it can, says the rest."""
    folders = [tmp_path / f"d{i}" for i in range(4)]
    for f in folders:
        f.mkdir()
    script = """
import json, sys, time
from pathlib import Path
Path("/proc/sys/user/max_inotify_watches").write_text("2")
from nodeguard.watch import FolderWatcher
fired = []
w = FolderWatcher({Path(p): {"c" + p[-1]} for p in sys.argv[1:]})
try:
    w.start(lambda target, reason: fired.append(target))
    started = True
except OSError as exc:
    started = str(exc)
for p in sys.argv[1:]:
    Path(p, "touch").write_text("x")
deadline = time.monotonic() + 10
while len(set(fired)) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)  # room for a (wrong) third folder to fire too
w.stop()
print(json.dumps({"started": started, "failed": w.failed, "fired": sorted(set(fired))}))
"""
    proc = _in_user_namespace(script, *map(str, folders))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["started"] is True, f"FolderWatcher.start raised under the inotify limit: {out['started']}"
    assert len(out["fired"]) == 2
    assert len(out["failed"]) == 2


def test_explain_names_the_instance_limit_for_emfile() -> None:
    msg = explain_inotify_error(OSError(errno.EMFILE, "inotify instance limit reached"), "/etc/docker")
    assert "max_user_instances" in msg and "/etc/docker" in msg
    assert not is_inotify_limit(OSError(errno.EACCES, "denied"))
    assert "denied" in explain_inotify_error(OSError(errno.EACCES, "denied"), "/etc")


@pytest.mark.root
def test_agent_with_a_full_state_dir_keeps_enforcing_what_it_can(sandbox: Sandbox) -> None:
    """One engine pass, enforce mode, state dir on a full tmpfs: the socket is still fixed; the
    daemon.json revert (which must quarantine the old file first) fails, says why, and writes nothing."""
    import socket as pysocket
    import threading

    from nodeguard.controls.socket import SocketControl
    from nodeguard.engine import Engine, EngineOptions
    from nodeguard.events.model import Event, EventName
    from nodeguard.structs import Mode

    sock_path = sandbox.path("/run/docker.sock")
    server = pysocket.socket(pysocket.AF_UNIX)
    server.bind(str(sock_path))
    os.chown(sock_path, 0, DOCKER_GID)
    sock_path.chmod(0o666)
    daemon_json = sandbox.write("/etc/docker/daemon.json", '{"icc": true}\n')
    events: list[Event] = []

    class ListSink:
        def emit(self, event: Event) -> None:
            events.append(event)

        def close(self) -> None:
            pass

    with small_tmpfs("256k") as state:
        engine_box: list[Engine] = []
        engine = Engine(EngineOptions(HostRoot(sandbox.root), state), load_policy().with_mode(Mode.ENFORCE),
                        ListSink(), controls=[DaemonConfigControl(), SocketControl()],
                        on_pass=lambda: engine_box[0].stop())
        engine_box.append(engine)
        with contextlib.suppress(OSError), (state / "filler").open("wb") as f:
            f.write(b"\0" * (1024 * 1024))  # the state dir's disk is now full
        runner = threading.Thread(target=engine.run)
        runner.start()
        runner.join(timeout=60)
        assert not runner.is_alive(), "the engine hung on a full state dir"
    server.close()
    assert stat_mode(sock_path) == 0o660, "the socket revert needs no disk space and must still happen"
    assert daemon_json.read_text() == '{"icc": true}\n', "no revert without its quarantine copy"
    failed = [e for e in events if e.name is EventName.DRIFT_REVERT_FAILED
              and e.attributes.get("nodeguard.control") == "daemon-config"]
    assert failed and any("no space" in json.dumps(e.attributes) + e.body for e in failed)


def stat_mode(p: Path) -> int:
    return p.stat().st_mode & 0o7777


def test_enforcing_a_group_of_100k_members_is_one_rewrite(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    from nodeguard.structs import Mode
    from tests.support.bigfiles import big_gshadow

    n = 100_000
    sandbox.write("/etc/group", big_group(n).replace("user7,", "user7,bob,"))
    sandbox.write("/etc/gshadow", big_gshadow(n), 0o640)
    policy = load_policy().with_mode(Mode.ENFORCE)
    ctx = Context(HostRoot(sandbox.root), policy)
    control = DockerGroupControl()
    obs = control.observe(ctx)
    failing = [f for f in control.evaluate(obs, policy) if f.status is Status.FAIL and f.rule == "member-allowed"]
    assert len(failing) == n + 1
    writes: list[str] = []
    original = HostRoot.write_atomic

    def counting(self: HostRoot, host_path: str, data: bytes, **kw: object) -> None:
        writes.append(host_path)
        original(self, host_path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(HostRoot, "write_atomic", counting)
    outcomes = control.remediate_many(ctx, failing, obs)
    assert all(o.ok and o.changed for o in outcomes)
    assert writes == ["/etc/group", "/etc/gshadow"]
    assert sandbox.read("/etc/group").startswith("root:x:0:\ndocker:x:990:\n")
    assert "user" not in sandbox.read("/etc/gshadow")
