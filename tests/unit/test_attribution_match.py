"""Which audit event made a drift: syscall filter, names, window, the agent's own writes."""

from __future__ import annotations

from nodeguard.attribution.match import actor_of, changed_names, find_actor, is_change, syscall_name
from nodeguard.attribution.records import AuditEvent, parse_text

T0 = 1796004212


def event(serial: int, *, ms: int = 0, sec: int = T0, syscall: str = "268", pid: int = 4242, success: str = "yes",
          names: tuple[str, ...] = ("/x/run/docker.sock",), cwd: str = "/", a2: str = "1b6", enriched: str = "",
          auid: str = "1000", nametype: str = "NORMAL") -> AuditEvent:
    head = f"msg=audit({sec}.{ms:03d}:{serial}):"
    lines = [f"type=SYSCALL {head} arch=c000003e syscall={syscall} success={success} exit=0 a0=ffffff9c a1=1 "
             f"a2={a2} a3=0 items={len(names)} ppid=1 pid={pid} auid={auid} uid=0 comm=\"tool\" "
             f"exe=\"/usr/bin/tool\" key=\"k\"{enriched}",
             f"type=CWD {head} cwd=\"{cwd}\""]
    lines += [f"type=PATH {head} item={i} name=\"{n}\" inode=1 dev=fe:00 nametype={nametype}"
              for i, n in enumerate(names)]
    lines.append(f"type=PROCTITLE {head} proctitle=746F6F6C002D78")
    (ev,) = parse_text("\n".join(lines).encode())
    return ev


def test_syscall_names_from_enriched_or_from_the_arch_table() -> None:
    assert syscall_name(event(1)) == "fchmodat"  # RAW: x86_64 268
    assert syscall_name(event(1, enriched="\x1dSYSCALL=chmod")) == "chmod"
    assert syscall_name(event(1, syscall="316")) == "renameat2"


def test_only_successful_changes_count() -> None:
    assert is_change(event(1))
    assert not is_change(event(1, success="no"))  # a refused chmod changed nothing
    assert not is_change(event(1, syscall="4"))  # stat: a read (a rule with -p r logs it)
    # openat: flags in a2; read-only is a read, O_WRONLY / O_CREAT|O_TRUNC a write.
    assert not is_change(event(1, syscall="257", a2="0"))
    assert is_change(event(1, syscall="257", a2="1"))
    assert is_change(event(1, syscall="257", a2="241"))


def test_names_are_made_absolute_and_parents_skipped() -> None:
    assert changed_names(event(1, names=("docker.sock",), cwd="/x/run")) == ["/x/run/docker.sock"]
    assert changed_names(event(1, names=("/x/run/../run/docker.sock",))) == ["/x/run/docker.sock"]
    assert changed_names(event(1, nametype="PARENT")) == []
    # Hex-encoded name (it has a space).
    ev = parse_text(b'type=PATH msg=audit(1.000:1): item=0 name=2F6120622F63 nametype=NORMAL')[0]
    assert changed_names(ev) == ["/a b/c"]


def test_latest_change_in_the_window_wins_and_own_pid_is_skipped() -> None:
    target = "/x/run/docker.sock"
    events = [event(1, ms=100, pid=1), event(2, ms=200, pid=2), event(3, ms=300, pid=3, names=("/x/other",)),
              event(4, ms=400, pid=99), event(5, ms=900, pid=5)]
    start, end = T0 * 10**9, T0 * 10**9 + 500 * 10**6
    got = find_actor(events, lambda n: n == target, start, end, frozenset({99}))
    assert got is not None and got.pid == 2  # 4 is the agent itself, 5 came after the drift was seen
    got = find_actor(events, lambda n: n == target, start, end)
    assert got is not None and got.pid == 99
    assert find_actor(events, lambda n: n == target, end + 10**9, end + 2 * 10**9) is None


def test_actor_fields() -> None:
    a = actor_of(event(7, pid=321, enriched='\x1dAUID="alice"'))
    assert (a.pid, a.ppid, a.exe, a.comm, a.uid, a.auid) == (321, 1, "/usr/bin/tool", "tool", 0, 1000)
    assert a.command_line == "tool -x" and a.keys == ("k",) and a.enriched_auid_name == "alice"
    assert a.event_id == f"{T0}.000:7"
    assert actor_of(event(8, auid="4294967295")).auid is None  # never logged in: no login uid


def test_a_hard_link_is_matched_by_inode() -> None:
    ev = parse_text(b'type=SYSCALL msg=audit(1.000:1): arch=c000003e syscall=90 success=yes pid=8 auid=0\n'
                    b'type=PATH msg=audit(1.000:1): item=0 name="/elsewhere/link" inode=4242 dev=fe:01 '
                    b'nametype=NORMAL\n')
    assert find_actor(ev, lambda n: False, 0, 2 * 10**9) is None
    got = find_actor(ev, lambda n: False, 0, 2 * 10**9, inode=(0xfe, 1, 4242))
    assert got is not None and got.pid == 8 and got.syscall == "chmod"
    assert find_actor(ev, lambda n: False, 0, 2 * 10**9, inode=(0xfe, 0, 4242)) is None
