"""Reading the audit log's end: bounded, across a rotation, whole lines only, the path from auditd.conf."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nodeguard.attribution.logfile import DEFAULT_LOG, LogUnreadable, log_path_from_conf, read_tail
from nodeguard.host import HostRoot
from tests.support.auditd import chmod_record
from tests.support.sandbox import Sandbox

LOG = "/var/log/audit/audit.log"
S = 1_000_000_000


def write_log(sb: Sandbox, records: list[str], name: str = LOG) -> Path:
    path = sb.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(records))
    return path


def test_log_path_comes_from_auditd_conf(sandbox: Sandbox) -> None:
    host = HostRoot(sandbox.root)
    assert log_path_from_conf(host) == DEFAULT_LOG
    sandbox.write("/etc/audit/auditd.conf", "# log_file = /nope\nlog_format = RAW\n  log_file  =  /srv/audit.log \n")
    assert log_path_from_conf(host) == "/srv/audit.log"
    sandbox.write("/etc/audit/auditd.conf", "log_file = relative.log\n")
    assert log_path_from_conf(host) == DEFAULT_LOG


def test_reads_back_only_as_far_as_the_window(sandbox: Sandbox) -> None:
    now = time.time_ns()
    # 20,000 old records (~6 MB), then 3 within the window.
    old = [chmod_record(i, now - 3600 * S + i * 1000, "/old") for i in range(20_000)]
    new = [chmod_record(20_000 + i, now - (3 - i) * S, "/run/docker.sock") for i in range(3)]
    write_log(sandbox, old + new)
    tail = read_tail(HostRoot(sandbox.root), LOG, now - 10 * S)
    assert [e.serial for e in tail.events][-3:] == [20_000, 20_001, 20_002]
    assert tail.bytes_read <= 2 * 64 * 1024  # one or two chunks, not six megabytes
    assert not tail.truncated


def test_rotation_reads_the_end_of_the_previous_file(sandbox: Sandbox) -> None:
    now = time.time_ns()
    # auditd rotated a moment ago: the drift's record went to audit.log.1, audit.log is nearly empty.
    write_log(sandbox, [chmod_record(1, now - 5 * S, "/old"), chmod_record(2, now - 2 * S, "/run/docker.sock")],
              LOG + ".1")
    write_log(sandbox, [chmod_record(3, now - S // 2, "/etc/group")])
    tail = read_tail(HostRoot(sandbox.root), LOG, now - 3 * S)
    assert [e.serial for e in tail.events] == [1, 2, 3]
    assert tail.files == [LOG, LOG + ".1"]
    # A record older than the window in the current file: the rotated one is not opened.
    assert read_tail(HostRoot(sandbox.root), LOG, now - S // 4).files == [LOG]


def test_a_line_being_written_is_not_read(sandbox: Sandbox) -> None:
    now = time.time_ns()
    whole = chmod_record(1, now, "/run/docker.sock")
    half = chmod_record(2, now, "/run/docker.sock")[:150]  # auditd mid-write: no newline yet
    write_log(sandbox, [whole, half])
    tail = read_tail(HostRoot(sandbox.root), LOG, now - S)
    assert [e.serial for e in tail.events] == [1]


def test_a_1_gib_log_is_read_from_its_end_within_the_budget(sandbox: Sandbox) -> None:
    now = time.time_ns()
    path = sandbox.path(LOG)
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        fh.truncate(1 << 30)  # sparse: a gibibyte of NULs costs no disk and no memory
        fh.seek(0, os.SEEK_END)
        fh.write(chmod_record(7, now - S, "/run/docker.sock").encode())
    assert path.stat().st_size > 1 << 30
    budget = 1 << 20
    tail = read_tail(HostRoot(sandbox.root), LOG, now - 3600 * S, max_bytes=budget)
    assert [e.serial for e in tail.events] == [7]
    assert tail.bytes_read <= budget and tail.truncated


def test_one_endless_line_stays_within_the_budget(sandbox: Sandbox) -> None:
    now = time.time_ns()
    write_log(sandbox, [chmod_record(1, now, "/a"), "x" * (3 << 20), "\n", chmod_record(2, now, "/b")])
    tail = read_tail(HostRoot(sandbox.root), LOG, now - S, max_bytes=4 << 20)
    assert [e.serial for e in tail.events] == [1, 2]  # the overlong line is dropped, not kept


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_unreadable_log_raises_a_clear_error(sandbox: Sandbox, kind: str) -> None:
    if kind == "folder":
        sandbox.path(LOG).mkdir(parents=True)
    with pytest.raises(LogUnreadable, match=LOG):
        read_tail(HostRoot(sandbox.root), LOG, 0)


def test_a_resumed_scan_reads_only_what_was_appended(sandbox: Sandbox) -> None:
    from nodeguard.attribution.logfile import TailScan

    now = time.time_ns()
    path = write_log(sandbox, [chmod_record(i, now - 5 * S, "/old") for i in range(2000)])
    host = HostRoot(sandbox.root)
    first = TailScan(host, LOG, now - 60 * S)
    assert sum(len(c) for c in first.chunks()) == 8000 and first.bytes_read == path.stat().st_size
    with path.open("a") as fh:
        fh.write(chmod_record(5000, now, "/run/docker.sock") + chmod_record(5001, now, "/x")[:40])  # + a half line
    again = TailScan(host, LOG, now - 60 * S, resume=first.resume_point)
    records = [r for c in again.chunks() for r in c]
    assert {r.serial for r in records} == {5000}
    assert again.bytes_read < 1024
    # The half line is read next time, once whole.
    with path.open("a") as fh:
        fh.write(chmod_record(5001, now, "/x")[40:])
    third = TailScan(host, LOG, now - 60 * S, resume=again.resume_point)
    assert {r.serial for c in third.chunks() for r in c} == {5001}
    # After a rotation (another inode) the resume point is ignored: a full scan.
    path.rename(path.with_name("audit.log.1"))
    write_log(sandbox, [chmod_record(6000, now, "/y")])
    fourth = TailScan(host, LOG, now - 60 * S, resume=third.resume_point)
    assert {r.serial for c in fourth.chunks() for r in c} >= {6000, 5001, 5000}
