"""The audit log parser: ENRICHED and RAW lines, hex-encoded fields, interleaved and broken records."""

from __future__ import annotations

from nodeguard.attribution.records import MAX_LINE, decode_keys, decode_string, parse_line, parse_text

GS = "\x1d"
# Lines as Debian's auditd 3.0.9 wrote them for `chmod 666 /tmp/w16x/sb/sock` (log_format = ENRICHED).
SYSCALL = ('type=SYSCALL msg=audit(1796004212.173:4): arch=c000003e syscall=268 success=yes exit=0 a0=ffffff9c '
           'a1=55bdb4a25c20 a2=1b6 a3=7f8baa4edfb8 items=1 ppid=10258 pid=10279 auid=1000 uid=0 gid=0 euid=0 '
           'suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="chmod" exe="/usr/bin/chmod" '
           f'key="ng-x"{GS}ARCH=x86_64 SYSCALL=fchmodat AUID="alice" UID="root" GID="root"')
CWD = 'type=CWD msg=audit(1796004212.173:4): cwd="/tmp/w16x"'
PATH = ('type=PATH msg=audit(1796004212.173:4): item=0 name="/tmp/w16x/sb/sock" inode=2181292 dev=fe:00 '
        f'mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 '
        f'cap_frootid=0{GS}OUID="root" OGID="root"')
PROCTITLE = ('type=PROCTITLE msg=audit(1796004212.173:4): '
             'proctitle=63686D6F6400363636002F746D702F773136782F73622F736F636B')


def test_enriched_syscall_line() -> None:
    r = parse_line(SYSCALL.encode())
    assert r is not None
    assert (r.type, r.sec, r.ms, r.serial) == ("SYSCALL", 1796004212, 173, 4)
    assert r.fields["pid"] == "10279" and r.fields["comm"] == '"chmod"' and r.fields["tty"] == "(none)"
    assert r.enriched == {"ARCH": "x86_64", "SYSCALL": "fchmodat", "AUID": '"alice"', "UID": '"root"',
                          "GID": '"root"'}
    assert r.time_ns == 1796004212_173_000_000


def test_raw_line_has_no_translation() -> None:
    r = parse_line(SYSCALL.split(GS)[0].encode())
    assert r is not None and r.enriched == {} and r.fields["key"] == '"ng-x"'


def test_hex_encoded_fields_are_decoded() -> None:
    # The kernel hex-encodes a name with a space (or a quote, a control byte, non-ASCII).
    assert decode_string("2F746D702F6120622F736F636B") == "/tmp/a b/sock"
    assert decode_string('"/plain"') == "/plain"
    assert decode_string("(null)") is None and decode_string(None) is None
    # PROCTITLE: argv joined by NULs.
    r = parse_line(PROCTITLE.encode())
    assert r is not None
    assert decode_string(r.fields["proctitle"], nul_as=" ") == "chmod 666 /tmp/w16x/sb/sock"
    # Not hex after all (odd length, not hex digits): kept as written.
    assert decode_string("ABC") == "ABC" and decode_string("xyz") == "xyz"
    # Invalid UTF-8 inside the hex: replaced, never raised.
    assert decode_string("FF2F") == "\ufffd/"


def test_several_keys_are_split() -> None:
    assert decode_keys("6100620063".replace("00", "01")) == ["a", "b", "c"]
    assert decode_keys('"docker"') == ["docker"]
    assert decode_keys("(null)") == []


def test_interleaved_records_of_many_events_are_grouped() -> None:
    other = [line.replace("173:4", "174:5").replace("10279", "777") for line in (SYSCALL, PATH, PROCTITLE)]
    text = "\n".join([SYSCALL, other[0], CWD, other[1], PATH, other[2], PROCTITLE]) + "\n"
    events = parse_text(text.encode())
    assert [e.id for e in events] == ["1796004212.173:4", "1796004212.174:5"]
    assert [r.type for r in events[0].records] == ["SYSCALL", "CWD", "PATH", "PROCTITLE"]
    assert [r.type for r in events[1].records] == ["SYSCALL", "PATH", "PROCTITLE"]
    first = events[1].first("SYSCALL")
    assert first is not None and first.fields["pid"] == "777"


def test_truncated_overlong_and_garbage_lines_are_skipped() -> None:
    assert parse_line(b"type=SYSCALL msg=audit(1796004212.1") is None  # cut inside the header
    assert parse_line(b"") is None and parse_line(b"\x00\x00\x00") is None
    assert parse_line(b"hello world") is None
    long = SYSCALL.encode() + b" x=" + b"A" * MAX_LINE
    assert parse_line(long) is None
    # Cut after the header: a record with the fields it has, no crash.
    cut = parse_line(SYSCALL[:120].encode())
    assert cut is not None and "exe" not in cut.fields
    # A user-space record quotes a whole message with single quotes.
    r = parse_line(b"type=USER_CMD msg=audit(1796004212.200:9): pid=1 uid=0 auid=1000 "
                   b"msg='cwd=\"/root\" cmd=6C73 exe=\"/usr/bin/sudo\" res=success'")
    assert r is not None and r.fields["msg"].startswith("'cwd=")


def test_millisecond_field_is_read_as_milliseconds() -> None:
    r = parse_line(b"type=CWD msg=audit(10.5:1): cwd=\"/\"")
    assert r is not None and r.time_ns == 10_500_000_000
