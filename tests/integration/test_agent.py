"""`nodeguard run` against real parts: real inotify, a real dockerd, real usermod/gpasswd."""

from __future__ import annotations

import json
import os
import signal
import socket as pysocket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.agent import is_event, running_agent
from tests.support.dockerd import running_dockerd
from tests.support.sandbox import Sandbox, gpasswd_delete, require_root, usermod_add

pytestmark = [pytest.mark.root]

HARDENED = {
    "icc": False, "live-restore": True, "no-new-privileges": True, "userland-proxy": False,
    "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"},
}


def wait_first_pass(state_dir: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (state_dir / "findings.json").exists():
        assert time.monotonic() < deadline, "agent never finished its first pass"
        time.sleep(0.02)


def editor_write(path: Path, text: str) -> None:
    """What vim/ansible do: write a temporary file beside the target and rename it over."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.rename(tmp, path)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.mark.dockerd
def test_enforce_reverts_socket_daemon_json_and_reloads_live_restore(sandbox: Sandbox, state_dir: Path) -> None:
    with running_dockerd(sandbox, HARDENED) as d, \
            running_agent(sandbox.root, state_dir, "--mode", "enforce") as agent:
        wait_first_pass(state_dir)

        # The socket opened to everyone.
        mark = agent.mark()
        d.socket.chmod(0o666)
        agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark)
        agent.wait_for(is_event("nodeguard.drift.reverted", "socket-mode"), after=mark)
        assert stat.S_IMODE(d.socket.stat().st_mode) == 0o660

        # A plaintext TCP host added by an editor-style rename: patched out, never SIGHUP'd (hosts
        # needs a restart), the drifted file quarantined and its diff in the event.
        mark = agent.mark()
        cfg = json.loads(d.config_file.read_text())
        editor_write(d.config_file, json.dumps({**cfg, "hosts": ["tcp://0.0.0.0:2375"]}, indent=2))
        ev = agent.wait_for(is_event("nodeguard.drift.reverted", "plaintext-2375"), after=mark)
        assert ev["attributes"]["nodeguard.restart_required"] is True
        assert '"tcp://0.0.0.0:2375"' in ev["attributes"]["nodeguard.diff"]
        quarantined = Path(ev["attributes"]["nodeguard.quarantined"])
        assert "2375" in quarantined.read_text()
        assert json.loads(d.config_file.read_text()) == HARDENED  # every other key kept

        # live-restore flipped off and applied by hand; nodeguard writes it back and SIGHUPs dockerd.
        mark = agent.mark()
        editor_write(d.config_file, json.dumps({**HARDENED, "live-restore": False}, indent=2))
        d.sighup()
        ev = agent.wait_for(is_event("nodeguard.drift.reverted", "live-restore"), after=mark)
        assert "SIGHUP sent" in ev["body"]
        deadline = time.monotonic() + 10
        while d.info()["LiveRestoreEnabled"] is not True:
            assert time.monotonic() < deadline, "dockerd never reloaded live-restore"
            time.sleep(0.1)
        assert f"pid {d.pid}" in ev["body"]


def test_enforce_removes_docker_group_member_added_by_usermod(sandbox: Sandbox, state_dir: Path) -> None:
    require_root()
    with running_agent(sandbox.root, state_dir, "--mode", "enforce") as agent:
        wait_first_pass(state_dir)
        mark = agent.mark()
        usermod_add(sandbox, "bob")
        agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="bob"), after=mark)
        agent.wait_for(is_event("nodeguard.drift.reverted", "member-allowed", subject="bob"), after=mark)
        assert "docker:x:990:\n" in sandbox.read("/etc/group")
        assert "docker:!::\n" in sandbox.read("/etc/gshadow")
        # shadow-utils still works on what we wrote, and finds no lock left behind.
        usermod_add(sandbox, "alice")
        agent.wait_for(is_event("nodeguard.drift.reverted", "member-allowed", subject="alice"), after=mark)
        # (/etc/.pwd.lock stays, as shadow-utils leaves it; the per-file locks must be gone.)
        assert not [p.name for p in sandbox.path("/etc").iterdir() if p.name in ("group.lock", "gshadow.lock")]


def test_observe_mode_never_writes_to_the_host_root(sandbox: Sandbox, state_dir: Path) -> None:
    require_root()
    sandbox.write("/etc/docker/daemon.json", json.dumps({"icc": True, "hosts": ["tcp://0.0.0.0:2375"]}))
    sandbox.path("/etc/docker").chmod(0o777)
    usermod_add(sandbox, "bob")
    sock = sandbox.path("/run/docker.sock")
    import socket as pysocket

    with pysocket.socket(pysocket.AF_UNIX) as s:
        s.bind(str(sock))
        sock.chmod(0o666)
        before = sandbox.snapshot()
        with running_agent(sandbox.root, state_dir) as agent:
            for rule in ("plaintext-2375", "socket-mode", "member-allowed", "etc-docker-mode"):
                agent.wait_for(is_event("nodeguard.drift.detected", rule))
            # A further drift while watching is reported, not reverted.
            mark = agent.mark()
            usermod_add(sandbox, "alice")
            agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="alice"), after=mark)
            time.sleep(0.3)
        assert not [e for e in agent.events() if e["event.name"].startswith("nodeguard.drift.revert")]
        # Undo our own change; then the tree must be what it was (shadow-utils' `-` backups aside).
        subprocess.run(["usermod", "--prefix", str(sandbox.root), "-rG", "docker", "alice"], check=True)

        def without_backups(snap: dict) -> dict:
            return {k: v for k, v in snap.items() if not k.endswith("-")}

        assert without_backups(sandbox.snapshot()) == without_backups(before)


def test_drift_while_down_is_reported_at_start(sandbox: Sandbox, state_dir: Path) -> None:
    require_root()
    with running_agent(sandbox.root, state_dir) as agent:
        wait_first_pass(state_dir)
    usermod_add(sandbox, "bob")
    # The agents share one events file: each looks only at what came after the one before it stopped
    # (its start-up pass may have reported before running_agent hands it over).
    mark = agent.mark()
    with running_agent(sandbox.root, state_dir, events_file=agent.events_file) as agent2:
        ev = agent2.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="bob"), after=mark)
        assert ev["attributes"]["nodeguard.while_down"] is True
        assert "while nodeguard was not running" in ev["body"]
    gpasswd_delete(sandbox, "bob")
    mark = agent2.mark()
    with running_agent(sandbox.root, state_dir, events_file=agent.events_file) as agent3:
        agent3.wait_for(lambda e: e["event.name"] == "nodeguard.drift.resolved"
                        and e["attributes"].get("nodeguard.subject") == "bob", after=mark)


def test_policy_hot_reload_configmap_style(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """kubelet updates a ConfigMap volume by swapping the `..data` symlink to a new timestamped folder."""
    require_root()
    cm = tmp_path / "configmap"
    cm.mkdir()

    def publish(text: str, version: int) -> None:
        folder = cm / f"..2026_11_23_{version}"
        folder.mkdir()
        (folder / "policy.yaml").write_text(text)
        tmp_link = cm / "..data_tmp"
        tmp_link.symlink_to(folder.name)
        os.rename(tmp_link, cm / "..data")
        if not (cm / "policy.yaml").exists():
            (cm / "policy.yaml").symlink_to("..data/policy.yaml")

    head = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
    publish(head + "spec:\n  mode: observe\n", 1)
    with running_agent(sandbox.root, state_dir, "--policy", str(cm / "policy.yaml")) as agent:
        wait_first_pass(state_dir)
        mark = agent.mark()
        usermod_add(sandbox, "bob")
        agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="bob"), after=mark)

        mark = agent.mark()
        publish(head + "spec:\n  mode: enforcing\n", 2)  # invalid: refused, observe stays
        ev = agent.wait_for(is_event("nodeguard.policy.rejected"), after=mark)
        assert "policy.yaml:4: spec.mode:" in ev["body"]
        time.sleep(0.3)
        assert "bob" in sandbox.read("/etc/group")

        mark = agent.mark()
        publish(head + "spec:\n  mode: enforce\n", 3)
        agent.wait_for(is_event("nodeguard.policy.loaded", mode="enforce"), after=mark)
        agent.wait_for(is_event("nodeguard.drift.reverted", "member-allowed", subject="bob"), after=mark)
        assert "docker:x:990:\n" in sandbox.read("/etc/group")


def test_a_fight_over_a_cheap_revert_is_reported_once_and_never_backed_off(
        sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """A mode is a few system calls to put back: giving up would leave the door open (issue 12.4)."""
    require_root()
    policy = tmp_path / "p.yaml"
    policy.write_text("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"
                      "  agent:\n    flapping: {threshold: 3, windowSeconds: 30, maxBackoffSeconds: 2}\n")
    etc_docker = sandbox.path("/etc/docker")
    stop = threading.Event()
    fixed_after_flap = [0]
    flapped = threading.Event()

    def fight() -> None:  # a config-management tool that disagrees with the policy
        while not stop.is_set():
            etc_docker.chmod(0o777)
            # Count the reverts that land after the flapping report: a back-off would leave none.
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                if stat.S_IMODE(etc_docker.stat().st_mode) == 0o755:
                    if flapped.is_set():
                        fixed_after_flap[0] += 1
                    break
                time.sleep(0.0005)
            time.sleep(0.02)

    with running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        wait_first_pass(state_dir)
        fighter = threading.Thread(target=fight)
        fighter.start()
        try:
            ev = agent.wait_for(is_event("nodeguard.drift.flapping", "etc-docker-mode"))
            flapped.set()
            assert ev["attributes"]["nodeguard.backoff_seconds"] == 0
            assert ev["attributes"]["nodeguard.flap_count"] > 3
            assert "never backed off" in ev["body"]
            time.sleep(2.0)
        finally:
            stop.set()
            fighter.join()
        # ~40 chmods in those 2 s: each one put back (a back-off of 1-2 s would allow 1 or 2).
        assert fixed_after_flap[0] >= 10, fixed_after_flap[0]
        flaps = [e for e in agent.events() if is_event("nodeguard.drift.flapping", "etc-docker-mode")(e)]
        assert len(flaps) == 1, "reported at most once per window"
        assert stat.S_IMODE(etc_docker.stat().st_mode) == 0o755 or _eventually_mode(etc_docker, 0o755)


def _eventually_mode(path: Path, mode: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while stat.S_IMODE(path.stat().st_mode) != mode:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_fight_over_daemon_json_backs_off(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """A daemon.json rewrite (+ SIGHUP) is expensive: a fight over it backs off, capped by the policy."""
    require_root()
    daemon_json = sandbox.path("/etc/docker/daemon.json")
    daemon_json.write_text(json.dumps(HARDENED))
    policy = tmp_path / "p.yaml"
    policy.write_text("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"
                      "  agent:\n    flapping: {threshold: 3, windowSeconds: 30, maxBackoffSeconds: 2}\n")
    stop = threading.Event()

    def fight() -> None:
        i = 0
        while not stop.is_set():
            editor_write(daemon_json, json.dumps({**HARDENED, "icc": True, "labels": [f"n={i}"]}))
            i += 1
            time.sleep(0.05)

    with running_agent(sandbox.root, state_dir, "--policy", str(policy), "--aggregate-seconds", "0") as agent:
        wait_first_pass(state_dir)
        fighter = threading.Thread(target=fight)
        fighter.start()
        try:
            ev = agent.wait_for(is_event("nodeguard.drift.flapping", "icc"), timeout=30)
            assert ev["attributes"]["nodeguard.backoff_seconds"] == 1
            mark = agent.mark()
            time.sleep(0.8)
            reverts = [e for e in agent.events()[mark:] if is_event("nodeguard.drift.reverted", "icc")(e)]
            assert len(reverts) <= 1, len(reverts)  # backing off: ~16 writes, no revert
        finally:
            stop.set()
            fighter.join()
        # Once the fight stops, the retry after the back-off puts the file back.
        deadline = time.monotonic() + 10
        while json.loads(daemon_json.read_text()).get("icc") is not False:
            assert time.monotonic() < deadline, [(e["event.name"], e["body"][:150]) for e in agent.events()[-8:]]
            time.sleep(0.05)


def test_sigkill_during_a_storm_leaves_no_partial_file(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    require_root()
    daemon_json = sandbox.path("/etc/docker/daemon.json")
    daemon_json.write_text(json.dumps(HARDENED))
    # The flapping back-off is tested on its own; here the agent must keep reverting all the way to
    # the SIGKILL, so its threshold is out of reach.
    policy = tmp_path / "storm.yaml"
    policy.write_text("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"
                      "  agent:\n    flapping: {threshold: 1000000}\n")
    stop = threading.Event()

    def storm() -> None:  # a tool re-breaking the file again and again: a storm of reverts
        i = 0
        while not stop.is_set():
            editor_write(daemon_json, json.dumps({**HARDENED, "icc": True, "labels": [f"n={i}"]}))
            i += 1
            # Slow enough that a loaded CI machine still wins some races (a write landing between
            # the agent's read and its rename is refused, by design, not overwritten).
            time.sleep(0.03)

    # Every revert is its own event here (no folding of repeats), so reverts can be counted.
    with running_agent(sandbox.root, state_dir, "--policy", str(policy), "--aggregate-seconds", "0") as agent:
        wait_first_pass(state_dir)
        writer = threading.Thread(target=storm)
        writer.start()
        try:
            mark = agent.mark()
            for _ in range(3):  # several reverts in, so the kill lands in the middle of the storm
                agent.wait_for(is_event("nodeguard.drift.reverted", "icc"), after=mark, timeout=30)
                mark = agent.mark()
            assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        finally:
            stop.set()
            writer.join()
    json.loads(daemon_json.read_text())  # whole JSON, never half a file
    with running_agent(sandbox.root, state_dir, "--mode", "enforce") as agent2:
        wait_first_pass(state_dir)
        deadline = time.monotonic() + 10
        while json.loads(daemon_json.read_text()).get("icc") is not False:
            assert time.monotonic() < deadline, "did not converge after restart"
            time.sleep(0.05)
    leftovers = [p.name for p in daemon_json.parent.iterdir() if ".nodeguard-" in p.name]
    assert leftovers == []
    assert agent2.proc.returncode == 0


def test_sigterm_stops_cleanly_with_agent_stopped(sandbox: Sandbox, state_dir: Path) -> None:
    with running_agent(sandbox.root, state_dir) as agent:
        wait_first_pass(state_dir)
    assert agent.proc.returncode == 0
    assert agent.events()[-1]["event.name"] == "nodeguard.agent.stopped"


def test_invalid_daemon_json_restored_from_last_good_in_enforce(sandbox: Sandbox, state_dir: Path) -> None:
    daemon_json = sandbox.path("/etc/docker/daemon.json")
    daemon_json.write_text(json.dumps(HARDENED, indent=2))
    with running_agent(sandbox.root, state_dir, "--mode", "enforce") as agent:
        wait_first_pass(state_dir)
        mark = agent.mark()
        editor_write(daemon_json, '{"icc": false,, }')
        ev = agent.wait_for(is_event("nodeguard.drift.reverted", "valid-json"), after=mark)
        assert json.loads(daemon_json.read_text()) == HARDENED
        assert Path(ev["attributes"]["nodeguard.quarantined"]).read_text() == '{"icc": false,, }'
        det = next(e for e in agent.events()[mark:] if is_event("nodeguard.drift.detected", "valid-json")(e))
        assert "line 1 column 15" in det["body"]


def test_run_help_documents_contract_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "nodeguard", "run", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    for flag in ("--host-root", "--policy", "--mode", "--events-file", "--state-dir"):
        assert flag in out.stdout



ENFORCE_HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: enforce\n"


def wait_mode(path: Path, mode: int, timeout: float) -> float:
    """Seconds until `path` has `mode` (AssertionError after `timeout`)."""
    started = time.monotonic()
    while stat.S_IMODE(path.stat().st_mode) != mode:
        assert time.monotonic() - started < timeout, f"{path} still {oct(stat.S_IMODE(path.stat().st_mode))}"
        time.sleep(0.002)
    return time.monotonic() - started


def test_a_hung_daemon_never_holds_the_socket_revert(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """The socket accepts and never answers (a hung dockerd): the runtime control waits its timeout
    in the slow lane, reports `daemon-unresponsive` once, and the socket's revert does not wait."""
    require_root()
    from tests.support.hung_daemon import hung_socket
    from tests.support.sandbox import DOCKER_GID

    policy = tmp_path / "p.yaml"
    policy.write_text(ENFORCE_HEAD + "  controls:\n    runtime:\n      timeoutSeconds: 8\n")
    sock = sandbox.path("/run/docker.sock")
    with hung_socket(sock, DOCKER_GID) as held, \
            running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        wait_first_pass(state_dir)
        # While the slow lane's start-up pass is stuck on the hung API (8 s):
        mark = agent.mark()
        sock.chmod(0o666)
        took = wait_mode(sock, 0o660, timeout=4)
        agent.wait_for(is_event("nodeguard.drift.reverted", "socket-mode"), after=mark)
        ev = agent.wait_for(is_event("nodeguard.drift.detected", "daemon-unresponsive"), timeout=30)
        assert held, "nothing connected to the hung socket: the test would prove nothing"
        assert "did not answer within 8s" in ev["body"]
        # Again while the runtime control is (re)trying: still not held.
        sock.chmod(0o666)
        took = max(took, wait_mode(sock, 0o660, timeout=4))
        time.sleep(2)
        hung = [e for e in agent.events() if is_event("nodeguard.drift.detected", "daemon-unresponsive")(e)]
        assert len(hung) == 1, "a hung daemon is reported once, not once per attempt"


def test_a_20000_member_drift_is_removed_whole_in_n_plus_one_events(
        sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    require_root()
    policy = tmp_path / "p.yaml"
    policy.write_text(ENFORCE_HEAD + "  agent:\n    maxEventsPerRule: 50\n")
    group = sandbox.path("/etc/group")
    with running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        wait_first_pass(state_dir)
        mark = agent.mark()
        members = ",".join(f"intruder{i}" for i in range(20_000))
        editor_write(group, group.read_text().replace("docker:x:990:\n", f"docker:x:990:{members}\n"))
        ev = agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", summary=True), after=mark,
                            timeout=60)
        assert ev["attributes"]["nodeguard.summary.total"] == 20_000
        assert ev["attributes"]["nodeguard.summary.left_out"] == 19_950
        deadline = time.monotonic() + 60
        while "docker:x:990:\n" not in group.read_text():
            assert time.monotonic() < deadline, "the 20,000 members were not all removed"
            time.sleep(0.05)
        agent.wait_for(is_event("nodeguard.drift.reverted", "member-allowed"), after=mark, timeout=30)
        time.sleep(2.0)  # whatever the pass still had to say
        # The drift's own events; each may be followed by its actor (nodeguard.drift.attributed), a
        # follow-up bounded the same way.
        drift = [e for e in agent.events()[mark:] if e["attributes"].get("nodeguard.rule") == "member-allowed"
                 and e["event.name"] != "nodeguard.drift.attributed"]
        assert len(drift) <= 51, [(e["event.name"], e["attributes"].get("nodeguard.subject")) for e in drift[:5]]
        assert sum(1 for e in drift if e["event.name"] == "nodeguard.drift.reverted") == 50, \
            [(e["event.name"], e["body"][:100]) for e in drift][:5]


def test_a_policy_swapped_when_agent_started_appears_is_loaded(
        sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """The policy is re-read once the watch is in place: an atomic rename at `agent.started` is not lost."""
    require_root()
    folder = tmp_path / "policy"
    folder.mkdir()
    policy = folder / "policy.yaml"
    head = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
    policy.write_text(head + "spec:\n  mode: observe\n")
    with running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        agent.wait_for(is_event("nodeguard.agent.started"), timeout=30)
        tmp = folder / ".policy.yaml.new"
        tmp.write_text(head + "spec:\n  mode: enforce\n")
        os.rename(tmp, policy)
        agent.wait_for(is_event("nodeguard.policy.loaded", mode="enforce"), timeout=30)
        mark = agent.mark()
        usermod_add(sandbox, "bob")
        agent.wait_for(is_event("nodeguard.drift.reverted", "member-allowed", subject="bob"), after=mark)


def test_reload_rebuilds_the_folder_watches(sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """A reload that moves the socket's path: the new folder is watched (no resync needed: 600 s)."""
    require_root()
    from tests.support.sandbox import DOCKER_GID

    for where in ("/run/docker.sock", "/srv/d/docker.sock"):
        p = sandbox.path(where)
        p.parent.mkdir(parents=True, exist_ok=True)
        s = pysocket.socket(pysocket.AF_UNIX)
        s.bind(str(p))
        s.close()
        os.chown(p, 0, DOCKER_GID)
        p.chmod(0o660)
    policy = tmp_path / "p.yaml"
    agent_cfg = "  agent:\n    resyncSeconds: 600\n"
    policy.write_text(ENFORCE_HEAD + agent_cfg)
    with running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        wait_first_pass(state_dir)
        tmp = tmp_path / ".p.yaml.new"
        tmp.write_text(ENFORCE_HEAD + agent_cfg + "  controls:\n    socket:\n      path: /srv/d/docker.sock\n")
        os.rename(tmp, policy)
        agent.wait_for(is_event("nodeguard.policy.loaded"), after=2)
        time.sleep(0.5)
        moved = sandbox.path("/srv/d/docker.sock")
        moved.chmod(0o666)
        wait_mode(moved, 0o660, timeout=10)


@pytest.mark.dockerd
def test_reload_that_turns_runtime_on_starts_the_docker_events_watcher(
        sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """Runtime off at start, on after a reload: a new container is reported by the events stream,
    not at the next resync (600 s here)."""
    from tests.support.dockerd import import_busybox

    policy = tmp_path / "p.yaml"
    base = ("apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: observe\n"
            "  agent:\n    resyncSeconds: 600\n")
    policy.write_text(base + "  controls:\n    runtime:\n      mode: off\n")
    with running_dockerd(sandbox, HARDENED) as d, \
            running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
        image = import_busybox(d)
        wait_first_pass(state_dir)
        tmp = tmp_path / ".p.yaml.new"
        tmp.write_text(base + "  controls:\n    runtime:\n      mode: observe\n")
        os.rename(tmp, policy)
        agent.wait_for(is_event("nodeguard.policy.loaded"), after=2)
        # The reload's resync has looked at the runtime once (a finding of the running daemon):
        agent.wait_for(is_event("nodeguard.drift.detected", "userns-remap-active"), timeout=30)
        mark = agent.mark()
        d.cli("create", "--name", "late-caps", "--cap-add", "SYS_ADMIN", image)
        agent.wait_for(is_event("nodeguard.drift.detected", "added-capabilities", subject="late-caps"),
                       after=mark, timeout=20)


def test_a_held_shadow_lock_delays_the_group_revert_never_the_socket(
        sandbox: Sandbox, state_dir: Path, tmp_path: Path) -> None:
    """`vipw -g` left open holds lckpwdf(): the group's lane waits for it (never stealing it), the
    socket's revert does not (issue 17.2)."""
    require_root()
    from tests.support.sandbox import DOCKER_GID

    sock = sandbox.path("/run/docker.sock")
    s = pysocket.socket(pysocket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    os.chown(sock, 0, DOCKER_GID)
    sock.chmod(0o660)
    policy = tmp_path / "p.yaml"
    policy.write_text(ENFORCE_HEAD)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(sandbox.path('/etc/.pwd.lock'))!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with running_agent(sandbox.root, state_dir, "--policy", str(policy)) as agent:
            wait_first_pass(state_dir)
            mark = agent.mark()
            group = sandbox.path("/etc/group")
            editor_write(group, group.read_text().replace("docker:x:990:\n", "docker:x:990:mallory\n"))
            agent.wait_for(is_event("nodeguard.drift.detected", "member-allowed", subject="mallory"), after=mark)
            time.sleep(0.3)  # the group's lane is now waiting for the lock
            sock.chmod(0o666)
            wait_mode(sock, 0o660, timeout=3)
            assert "mallory" in group.read_text(), "the lock holder's lock was not respected"
            holder.communicate(b"", timeout=10)  # vipw exits: the lock is free
            deadline = time.monotonic() + 40  # shadow-utils' own wait is 15 s, then the retry timer
            while "mallory" in group.read_text():
                assert time.monotonic() < deadline, agent.stderr()[-2000:]
                time.sleep(0.05)
            flaps = [e for e in agent.events() if e["event.name"] == "nodeguard.drift.flapping"]
            assert flaps == [], "a failed revert is not a fight"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
