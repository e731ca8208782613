"""The reconciler's decisions (nodeguard/reconcile.py), with an injected clock: no sleeping, no host."""

from __future__ import annotations

import hashlib

from nodeguard.reconcile import (
    MAX_TRACKED,
    Backoff,
    FlapTracker,
    RetryTracker,
    Transition,
    bound_events,
    finding_key,
    split_key,
    transition,
)
from nodeguard.structs import Finding, Severity, Status


def member(name: str, rule: str = "member-allowed") -> Finding:
    return Finding("docker-group", rule, Status.FAIL, Severity.CRITICAL, f"{name} in docker", subject=name)


def test_transitions_new_still_failing_resolved_quiet() -> None:
    assert transition(None, Status.FAIL) is Transition.NEW
    assert transition(False, Status.FAIL) is Transition.NEW
    assert transition(True, Status.FAIL) is Transition.STILL_FAILING
    assert transition(True, Status.PASS) is Transition.RESOLVED
    assert transition(True, Status.SKIP) is Transition.RESOLVED
    assert transition(None, Status.PASS) is Transition.QUIET
    assert transition(False, Status.PASS) is Transition.QUIET


def test_a_drift_found_at_start_with_a_baseline_happened_while_down() -> None:
    assert transition(False, Status.FAIL, startup_with_baseline=True) is Transition.WHILE_DOWN
    assert transition(None, Status.FAIL, startup_with_baseline=True) is Transition.WHILE_DOWN
    # Already failing before the restart: nothing new to say.
    assert transition(True, Status.FAIL, startup_with_baseline=True) is Transition.STILL_FAILING


def test_one_identity_control_rule_subject() -> None:
    f = member("bob")
    assert finding_key(f) == "docker-group/member-allowed/bob"
    assert split_key(finding_key(f)) == ("docker-group", "member-allowed", "bob")
    assert split_key("socket/socket-mode") == ("socket", "socket-mode", "")


def test_backoff_doubles_and_is_capped() -> None:
    b = Backoff(1.0, 5.0)
    assert [b.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert b.delay(10_000) == 5.0  # no overflow on a long fight


def test_a_cheap_revert_is_never_backed_off_and_its_fight_reported_once_per_window() -> None:
    t = FlapTracker(threshold=3, window=60.0, max_backoff=300.0)
    reports = []
    now = 1000.0
    for _ in range(60):  # one revert every 0.5 s for 30 s
        r = t.note_revert("socket/socket-mode", now, cheap=True)
        if r is not None:
            reports.append((now, r))
        assert not t.blocked("socket/socket-mode", now)
        now += 0.5
    assert len(reports) == 1
    assert reports[0][1].count == 4 and reports[0][1].backoff == 0
    # A new window: the fight is reported again, with the count seen in it.
    now = reports[0][0] + 60.0
    r = t.note_revert("socket/socket-mode", now, cheap=True)
    assert r is not None and r.count > 3


def test_an_expensive_revert_backs_off_doubling_up_to_the_cap() -> None:
    t = FlapTracker(threshold=2, window=30.0, max_backoff=3.0)
    key = "daemon-config/icc"
    now = 0.0
    delays = []
    for _ in range(4):
        report = None
        while report is None:
            report = t.note_revert(key, now, cheap=False)
            now += 0.1
        delays.append(report.backoff)
        assert t.blocked(key, now)
        ends = now - 0.1 + report.backoff  # the back-off runs from the revert that reported it
        assert t.blocked(key, ends - 1e-6) and not t.blocked(key, ends)
        now += report.backoff
        assert not t.blocked(key, now)
    assert delays == [1.0, 2.0, 3.0, 3.0]


def test_an_expensive_fight_starts_over_after_a_quiet_spell() -> None:
    t = FlapTracker(threshold=1, window=10.0, max_backoff=100.0)
    key = "daemon-config/icc"
    t.note_revert(key, 0.0, cheap=False)
    assert t.note_revert(key, 1.0, cheap=False).backoff == 1.0  # type: ignore[union-attr]
    t.note_revert(key, 3.0, cheap=False)
    assert t.note_revert(key, 4.0, cheap=False).backoff == 2.0  # type: ignore[union-attr]
    t.note_revert(key, 500.0, cheap=False)
    assert t.note_revert(key, 501.0, cheap=False).backoff == 1.0  # type: ignore[union-attr]


def test_a_failed_revert_waits_for_its_timer_not_for_a_trigger() -> None:
    r = RetryTracker(Backoff(0.1, 5.0))
    key = "docker-group/member-allowed/mallory"
    assert r.failed(key, 10.0) == (1, 10.1)
    assert r.waiting(key, 10.05)  # our own write's inotify event arriving now changes nothing
    assert not r.waiting(key, 10.1)
    assert r.failed(key, 10.1) == (2, 10.1 + 0.2)
    assert r.waiting(key, 10.1 + 0.2 - 1e-6) and not r.waiting(key, 10.1 + 0.2)
    r.succeeded(key)
    assert not r.waiting(key, 10.2) and r.attempts(key) == 0


def test_more_than_n_findings_of_a_rule_become_n_plus_a_summary() -> None:
    members = [member(f"user{i:05d}") for i in range(20_000)]
    other = member("x", rule="gshadow-member")
    shown, over = bound_events([*members[:50], other, *members[50:]], 100)
    assert len(shown) == 101 and other in shown
    assert shown[:50] == members[:50] and shown[51:] == members[50:100]  # the input order is kept
    assert len(over) == 1
    bulk = over[0]
    assert bulk.rule == ("docker-group", "member-allowed")
    s = bulk.summary()
    assert s["total"] == 20_000 and s["shown"] == 100 and s["left_out"] == 19_900
    names = sorted(f"user{i:05d}" for i in range(100, 20_000))
    assert s["left_out_sha256"] == hashlib.sha256("\n".join(names).encode()).hexdigest()
    assert s["left_out_sample"] == names[:20]


def test_n_or_fewer_findings_are_all_shown() -> None:
    members = [member(f"u{i}") for i in range(100)]
    shown, over = bound_events(members, 100)
    assert shown == members and over == []


def test_a_released_control_retries_at_once_and_keeps_its_streak() -> None:
    r = RetryTracker(Backoff(0.1, 5.0))
    for _ in range(5):
        r.failed("firewall/port-restricted/2375", 10.0)
    r.failed("socket/socket-mode/", 10.0)
    assert r.waiting("firewall/port-restricted/2375", 10.01)
    assert r.release("firewall") == ["firewall/port-restricted/2375"]
    assert not r.waiting("firewall/port-restricted/2375", 10.01)
    assert r.waiting("socket/socket-mode/", 10.01)  # another control's timer stands
    # Failing again is the same streak (one revert_failed event per streak), with its back-off.
    attempts, due = r.failed("firewall/port-restricted/2375", 10.01)
    assert attempts == 6 and due > 10.01


def test_a_back_off_that_ended_is_forgotten_when_the_tracker_is_full() -> None:
    # Memory stays bounded: a key whose back-off is over (and whose fight left the window) is pruned.
    t = FlapTracker(threshold=1, window=10.0, max_backoff=100.0)
    for i in range(MAX_TRACKED + 1):
        key = f"daemon-config/k{i}"
        t.note_revert(key, 0.0, cheap=False)
        assert t.note_revert(key, 0.5, cheap=False) is not None  # backed off until 1.5
    t.note_revert("daemon-config/late", 100.0, cheap=False)
    assert len(t._flaps) == 1
