"""The attribution companion: drift events pass at once; the actor, or why there is none, follows.

The audit log here is a file written as auditd writes it (tests/integration/test_attribution_auditd.py
runs the real auditd); /proc is a folder made by the test where a reason depends on which processes
run (this machine's own /proc may or may not have an auditd).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeguard.attribution.enrich import container_id_from_cgroup
from nodeguard.attribution.sink import AttributionSettings, AttributionSink
from nodeguard.events.model import Event, EventName, event_for_finding, lifecycle_event
from nodeguard.policy import Policy
from nodeguard.structs import Finding, Mode, Severity, Status
from tests.support.auditd import chmod_record
from tests.support.sandbox import ALICE_UID, Sandbox

LOG = "/var/log/audit/audit.log"
FINDING = Finding("socket", "socket-mode", Status.FAIL, Severity.CRITICAL, "docker.sock is 0666", cis="3.16",
                  observed="0666", expected="at most 0660", path="/var/run/docker.sock", mode=Mode.ENFORCE)


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cv = threading.Condition()

    def emit(self, event: Event) -> None:
        with self.cv:
            self.events.append(event)
            self.cv.notify_all()

    def close(self) -> None:
        pass

    def attributed(self, event_id: str, timeout: float = 5.0) -> Event:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for e in self.events:
                    if (e.name is EventName.DRIFT_ATTRIBUTED
                            and e.attributes["nodeguard.attributed.event_id"] == event_id):
                        return e
                left = deadline - time.monotonic()
                assert left > 0, f"no attribution for {event_id}: {[e.name for e in self.events]}"
                self.cv.wait(left)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A /proc where auditd runs (pid 77)."""
    p = tmp_path / "proc"
    (p / "77").mkdir(parents=True)
    (p / "77" / "comm").write_text("auditd\n")
    return p


@pytest.fixture
def sink(sandbox: Sandbox, proc: Path) -> Iterator[tuple[AttributionSink, ListSink]]:
    from nodeguard.host import HostRoot

    sandbox.path("/run/docker.sock").write_text("")
    sandbox.path(LOG).parent.mkdir(parents=True)
    sandbox.path(LOG).write_text("")
    inner = ListSink()
    settings = AttributionSettings(wait_ms=300, per_finding_per_minute=10)
    s = AttributionSink(inner, HostRoot(sandbox.root), proc, settings)
    try:
        yield s, inner
    finally:
        s.stop()


def append(sb: Sandbox, text: str) -> None:
    with sb.path(LOG).open("a") as fh:
        fh.write(text)


def test_the_drift_event_passes_at_once_and_the_actor_follows(sandbox: Sandbox,
                                                              sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    # The chmod, named by its real path under the root and through the /var/run symlink.
    append(sandbox, chmod_record(10, time.time_ns() - 50_000_000, f"{sandbox.root}/var/run/docker.sock", pid=4321))
    drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(drift)
    assert inner.events == [drift]  # handed on before emit returned, unchanged
    a = inner.attributed(drift.id).attributes
    assert a["nodeguard.actor.source"] == "audit"
    assert (a["process.pid"], a["process.parent_pid"], a["process.executable.path"]) == (4321, 1, "/usr/bin/chmod")
    assert a["process.command_line"] == f"chmod 666 {sandbox.root}/var/run/docker.sock"
    assert (a["user.id"], a["user.name"]) == (0, "root")
    assert (a["nodeguard.actor.login_uid"], a["nodeguard.actor.login_name"]) == (ALICE_UID, "alice")
    assert a["nodeguard.actor.audit_key"] == "k"
    for k in ("nodeguard.control", "nodeguard.rule", "file.path", "nodeguard.cis", "nodeguard.mode"):
        assert a[k] == drift.attributes[k]
    assert a["nodeguard.attributed.event_name"] == "nodeguard.drift.detected"


def test_a_record_written_late_is_waited_for(sandbox: Sandbox, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    made = time.time_ns()
    drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(drift)
    time.sleep(0.1)  # auditd is behind by 100 ms
    append(sandbox, chmod_record(11, made, f"{sandbox.root}/run/docker.sock", pid=555))
    a = inner.attributed(drift.id).attributes
    assert a["process.pid"] == 555
    assert 100 <= float(str(a["nodeguard.actor.latency_ms"])) < 1000


def test_the_revert_is_never_taken_for_the_actor(sandbox: Sandbox, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    append(sandbox, chmod_record(12, time.time_ns() - 10_000_000, f"{sandbox.root}/run/docker.sock", pid=600))
    detected = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(detected)
    time.sleep(0.01)
    # The agent's own chmod back (as another pid would show it: a pod without hostPID), then reverted.
    append(sandbox, chmod_record(13, time.time_ns(), f"{sandbox.root}/run/docker.sock", pid=601))
    reverted = event_for_finding(EventName.DRIFT_REVERTED, FINDING, outcome="reverted")
    s.emit(reverted)
    assert inner.attributed(detected.id).attributes["process.pid"] == 600
    assert inner.attributed(reverted.id).attributes["process.pid"] == 600


def test_own_pid_is_never_the_actor(sandbox: Sandbox, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    append(sandbox, chmod_record(14, time.time_ns() - 10_000_000, f"{sandbox.root}/run/docker.sock",
                                 pid=os.getpid()))
    drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(drift)
    assert inner.attributed(drift.id).attributes["nodeguard.actor.source"] == "unavailable"


def reason_for(s: AttributionSink, inner: ListSink, finding: Finding = FINDING) -> str:
    drift = event_for_finding(EventName.DRIFT_DETECTED, finding, outcome="detected")
    s.emit(drift)
    a = inner.attributed(drift.id).attributes
    assert a["nodeguard.actor.source"] == "unavailable" and "process.pid" not in a
    return str(a["nodeguard.actor.reason"])


def test_reasons_when_nothing_matches(sandbox: Sandbox, proc: Path, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    assert reason_for(s, inner) == "no audit rule covers /var/run/docker.sock"
    # A rule in rules.d (CIS style, on the name through the symlink): covered, but no record.
    sandbox.write("/etc/audit/rules.d/docker.rules", "-w /run/docker.sock -p wa -k docker\n")
    assert reason_for(s, inner).startswith("no audit record of a change to /var/run/docker.sock")
    # auditd gone.
    (proc / "77" / "comm").write_text("sshd\n")
    assert reason_for(s, inner) == "auditd is not running"
    # The log unreadable: said at once, without waiting.
    sandbox.path(LOG).unlink()
    started = time.monotonic()
    assert reason_for(s, inner).startswith(f"the audit log is unreadable: {LOG}")
    assert time.monotonic() - started < 0.3
    # A finding about no file (a listener, a container).
    assert reason_for(s, inner, Finding("listeners", "tcp", Status.FAIL, Severity.HIGH, "m")).startswith(
        "the finding names no file")


def test_lifecycle_and_resolved_events_are_not_attributed(sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    s.emit(lifecycle_event(EventName.AGENT_STARTED, "started"))
    s.emit(event_for_finding(EventName.DRIFT_RESOLVED, FINDING, outcome="resolved"))
    s.stop()
    assert [e.name for e in inner.events] == [EventName.AGENT_STARTED, EventName.DRIFT_RESOLVED]


def test_a_fight_is_not_attributed_twice_per_drift_forever(sandbox: Sandbox,
                                                           sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    for _ in range(30):
        s.emit(event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected"))
    flap = event_for_finding(EventName.DRIFT_FLAPPING, FINDING, outcome="flapping")
    s.emit(flap)
    inner.attributed(flap.id)  # flapping is always attributed: it names the fighter
    s.stop()
    assert sum(e.name is EventName.DRIFT_ATTRIBUTED for e in inner.events) == 11
    assert s.stats.skipped == 20


def test_stop_finishes_what_is_queued(sandbox: Sandbox, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(drift)
    s.stop()
    assert inner.attributed(drift.id, timeout=0.01)


@pytest.mark.parametrize(("text", "want"), [
    ("0::/system.slice/docker-" + "a" * 64 + ".scope\n", "a" * 64),
    ("12:pids:/docker/" + "b" * 64 + "\n1:name=systemd:/docker/" + "b" * 64 + "\n", "b" * 64),
    ("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "c" * 64 + ".scope\n", "c" * 64),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("0::/init.scope\n", None),
    ("garbage", None),
])
def test_container_id_from_cgroup(text: str, want: str | None) -> None:
    assert container_id_from_cgroup(text) == want


def test_container_of_a_process_that_still_runs(sandbox: Sandbox, proc: Path,
                                                sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    cid = "d" * 64
    tick = os.sysconf("SC_CLK_TCK")
    boot = int(time.time()) - 1000
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {boot}\n")
    # 4321 started 500 s after boot (before the record); 4322 is a pid reused 2 s ago (after it).
    for pid, started in ((4321, 500), (4322, 998)):
        (proc / str(pid)).mkdir()
        fields = ["S"] + ["0"] * 18 + [str(started * tick)] + ["0"] * 10
        (proc / str(pid) / "stat").write_text(f"{pid} (sh) {' '.join(fields)}\n")
        (proc / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    ids = []
    for serial, pid in ((20, 4321), (21, 4322)):
        append(sandbox, chmod_record(serial, time.time_ns() - 5_000_000_000, f"{sandbox.root}/run/docker.sock",
                                     pid=pid))
        drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
        s.emit(drift)
        ids.append(drift.id)
        inner.attributed(drift.id)
    assert inner.attributed(ids[0]).attributes["container.id"] == cid
    assert "container.id" not in inner.attributed(ids[1]).attributes


def test_a_change_through_a_hard_link_is_attributed(sandbox: Sandbox, sink: tuple[AttributionSink, ListSink]) -> None:
    s, inner = sink
    sock = sandbox.path("/run/docker.sock")
    link = sandbox.path("/run/other-name")
    os.link(sock, link)
    st = sock.stat()
    record = chmod_record(30, time.time_ns() - 10_000_000, str(link), pid=777).replace(
        "inode=12 dev=fe:00", f"inode={st.st_ino} dev={os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}")
    append(sandbox, record)
    drift = event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected")
    s.emit(drift)
    assert inner.attributed(drift.id).attributes["process.pid"] == 777


def test_the_policy_key_turns_it_on_and_off(sandbox: Sandbox, proc: Path) -> None:
    from nodeguard.attribution import attribution_for
    from nodeguard.host import HostRoot
    from nodeguard.policy import PolicyError, load_policy, parse_policy

    host, inner = HostRoot(sandbox.root), ListSink()
    s = attribution_for(host, proc, load_policy(), inner)
    assert s is not None and s.settings.wait_ms == 500 and s.settings.audit_log is None
    assert s.settings.rules_dirs == ("/etc/audit/rules.d",)
    s.stop()
    head = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  agent:\n    attribution: "
    off = parse_policy(head + "{enabled: false}\n", "<test>")
    assert attribution_for(host, proc, off, inner) is None
    custom = parse_policy(head + "{auditLog: /srv/audit.log, waitMs: 50}\n", "<test>")
    s = attribution_for(host, proc, custom, inner)
    assert s is not None and (s.settings.audit_log, s.settings.wait_ms) == ("/srv/audit.log", 50)
    s.stop()
    for bad in ("{waitMs: 60000}", "{auditLog: relative.log}", "{waitMS: 5}"):
        with pytest.raises(PolicyError):
            parse_policy(head + bad + "\n", "<test>")


def attribution_probe(sb: Sandbox, proc: Path, policy: Policy) -> object:
    """What the attribution companion makes of three drifts of the socket (the behaviour probe the
    policy-key test uses for `spec.agent.attribution.*`): None when off, else per drift the actor
    source, the reason up to its first colon, and whether it took a second or more."""
    from nodeguard.attribution import attribution_for
    from nodeguard.host import HostRoot

    log = sb.path("/var/log/audit/audit.log")  # the default log exists and is empty
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    inner = ListSink()
    s = attribution_for(HostRoot(sb.root), proc, policy, inner)
    if s is None:
        return None
    try:
        for _ in range(3):
            s.emit(event_for_finding(EventName.DRIFT_DETECTED, FINDING, outcome="detected"))
    finally:
        s.stop(timeout=10)
    return [(e.attributes["nodeguard.actor.source"], str(e.attributes["nodeguard.actor.reason"]).split(":")[0],
             float(str(e.attributes["nodeguard.actor.latency_ms"])) >= 1000)
            for e in inner.events if e.name is EventName.DRIFT_ATTRIBUTED]


@pytest.mark.parametrize(("change", "what"), [
    ("{enabled: false}", "off"),
    ("{auditLog: /srv/elsewhere.log}", "log"),
    ("{waitMs: 1500}", "wait"),
    ("{maxPerFindingPerMinute: 1}", "limit"),
])
def test_each_policy_key_changes_what_attribution_does(sandbox: Sandbox, proc: Path, change: str, what: str) -> None:
    from nodeguard.policy import load_policy, parse_policy

    head = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  agent:\n    attribution: "
    before = attribution_probe(sandbox, proc, load_policy())
    after = attribution_probe(sandbox, proc, parse_policy(head + change + "\n", "<test>"))
    assert before == [("unavailable", "no audit rule covers /var/run/docker.sock", False)] * 3
    assert before != after
    if what == "log":
        assert after == [("unavailable", "the audit log is unreadable", False)] * 3
    elif what == "wait":
        assert after == [("unavailable", "no audit rule covers /var/run/docker.sock", True)] * 3
    elif what == "limit":
        assert after == before[:1]
