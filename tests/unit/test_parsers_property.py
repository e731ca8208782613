"""Every parser of host input, under hypothesis: any input ends in a result or a clear error.

Two kinds of examples per parser: raw bytes/text (what a hostile or broken host can put in a
file), and structured inputs built from the format's own pieces (colons, commas, flags, YAML
keys) so the examples reach the deep branches. Where the format allows it, a round-trip
property checks the answer too, not only the absence of a crash. Hangs are caught by
pytest-timeout and by the fuzz run's per-input limit (tests/unit/test_fuzz_smoke.py).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nodeguard import dockerd, policy
from nodeguard.controls import daemon_config, socket
from nodeguard.host import accounts
from tests.fuzz.targets import TARGETS

pytestmark = pytest.mark.timeout(120)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to these formats, plus digits that are not ASCII ("²".isdigit() is True
# but int("²") raises) and separators Python's splitlines() honours but the formats do not.
SPECIAL = ":,#=-/\\\"' \t\n\r\x00\x0b\x0c\x1c\x85\u2028²\u0661\u0663"
field_text = st.text(alphabet=st.sampled_from("abc019" + SPECIAL), max_size=12) | st.text(max_size=8)


# -- every target on raw bytes --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_accepts_any_bytes(name: str) -> None:
    target = TARGETS[name]

    @FAST
    @given(st.binary(max_size=512))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_accepts_any_text(name: str) -> None:
    target = TARGETS[name]

    @FAST
    @given(st.text(max_size=256))
    def run(text: str) -> None:
        target(text.encode("utf-8", "surrogatepass"))

    run()


# -- /etc/passwd, /etc/group, /etc/gshadow -------------------------------------------------------

account_line = st.lists(field_text, min_size=0, max_size=8).map(":".join)
account_file = st.lists(account_line, max_size=12).map("\n".join)


@FAST
@given(account_file)
@example("u:x:²:0:")
@example("g:x:" + "9" * 5000 + ":")
def test_account_parsers_never_raise(text: str) -> None:
    problems: list[str] = []
    accounts.parse_passwd(text, problems)
    accounts.parse_group(text, problems)
    accounts.parse_gshadow(text, problems)
    assert all(isinstance(p, str) for p in problems)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789-", min_size=1, max_size=12)


@FAST
@given(st.dictionaries(names, st.tuples(st.integers(0, 2**32 - 2), st.lists(names, max_size=5)), max_size=20))
def test_group_round_trip(groups: dict[str, tuple[int, list[str]]]) -> None:
    text = "".join(f"{n}:x:{gid}:{','.join(m)}\n" for n, (gid, m) in groups.items())
    parsed = accounts.parse_group(text)
    assert {n: (g.gid, list(g.members)) for n, g in parsed.items()} == groups


@FAST
@given(st.dictionaries(names, st.tuples(st.integers(0, 2**32 - 2), st.integers(0, 2**32 - 2)), max_size=20))
def test_passwd_round_trip(users: dict[str, tuple[int, int]]) -> None:
    text = "".join(f"{n}:x:{uid}:{gid}:gecos:/home/{n}:/bin/sh\n" for n, (uid, gid) in users.items())
    parsed = accounts.parse_passwd(text)
    assert {n: (u.uid, u.gid) for n, u in parsed.items()} == users


@FAST
@given(st.text(max_size=40))
def test_account_ids_from_policy_names_never_raise(name: str) -> None:
    db = accounts.AccountDB()
    db.uid_of(name)
    db.gid_of(name)


# -- daemon.json and its hosts ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@FAST
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8), st.sampled_from([None, 0, 2, "\t"]))
def test_daemon_json_round_trip(obj: dict[str, Any], indent: int | str | None) -> None:
    # Python's json writes inf as `Infinity`, which neither Go nor dockerd reads: finite numbers only.
    value, error = daemon_config.parse_daemon_json(json.dumps(obj, indent=indent).encode())
    assert error is None and value == obj


@FAST
@given(st.binary(max_size=200) | st.text(alphabet='{}[]",:0123456789.eE+-tfrnulsa \\\n\xe9\x00', max_size=200)
       .map(lambda t: t.encode("utf-8", "surrogateescape")))
def test_daemon_json_parser_never_raises(raw: bytes) -> None:
    """Its docstring promises (object, None) or (None, why) for any bytes at all."""
    value, error = daemon_config.parse_daemon_json(raw)
    assert (value is None) != (error is None)


@pytest.mark.parametrize("raw", [b"[" * 200_000, b'{"a":' * 200_000, b"\xff", b"null", b'"x"', b"1e999999",
                                 b'{"a": ' + b"9" * 5000 + b"}", b'{"a": ' + b"[" * 9999 + b"]" * 9999 + b"}"])
def test_daemon_json_hostile_shapes_are_clear_errors(raw: bytes) -> None:
    value, error = daemon_config.parse_daemon_json(raw)
    assert (value is None) != (error is None)


host_strings = st.builds(
    lambda scheme, host, sep, port, path: f"{scheme}{host}{sep}{port}{path}",
    st.sampled_from(["tcp://", "unix://", "fd://", "", "ssh://", "TCP://"]),
    st.sampled_from(["0.0.0.0", "[::]", "[::1", "127.0.0.1", "", "host", "[fe80::1%eth0]", "a:b:c"]),
    st.sampled_from([":", "", "::"]),
    st.text(alphabet="0123456789²\u0661 :-", max_size=6) | st.just("9" * 5000),
    st.sampled_from(["", "/", "/path", "?x"]))


@FAST
@given(host_strings | st.text(max_size=40), st.booleans())
@example("tcp://h:²", False)
@example("tcp://[::]:" + "9" * 5000, True)
def test_parse_host_never_raises(raw: str, tls: bool) -> None:
    e = daemon_config.parse_host(raw, tls)
    if e.scheme == "tcp":
        assert isinstance(e.port, int) and 0 <= e.port <= 99999


@FAST
@given(st.integers(0, 65535), st.sampled_from(["0.0.0.0", "127.0.0.1", "[::]", "[2001:db8::1]"]), st.booleans())
def test_parse_host_reads_the_port(port: int, host: str, tls: bool) -> None:
    e = daemon_config.parse_host(f"tcp://{host}:{port}", tls)
    assert (e.scheme, e.port) == ("tcp", port)
    assert e.host == host.strip("[]")


# -- dockerd's command line ----------------------------------------------------------------------

flag_names = st.sampled_from(sorted(dockerd.LIST_FLAGS | dockerd.BOOL_FLAGS | {"config-file", "group", "pidfile"}))


@FAST
@given(st.lists(st.sampled_from(["-H", "-G", "-D", "--", "-", "--icc=false", "-Htcp://x:1", "="]) | field_text,
                max_size=12))
def test_parse_flags_never_raises(args: list[str]) -> None:
    flags = dockerd.parse_flags(["dockerd", *args])
    dockerd.DaemonProcess(1, ["dockerd", *args], "scan", flags).config_values()


@FAST
@given(st.lists(st.tuples(flag_names, st.text(alphabet="abc:/.019", min_size=1, max_size=8)), max_size=8))
def test_parse_flags_keeps_every_value_given_with_equals(pairs: list[tuple[str, str]]) -> None:
    flags = dockerd.parse_flags(["dockerd", *[f"--{n}={v}" for n, v in pairs]])
    for name, value in pairs:
        assert value in flags[name]


# -- the socket's ACL xattr ---------------------------------------------------------------------

acl_entries = st.lists(st.tuples(st.sampled_from([1, 2, 4, 8, 0x10, 0x20, 0x40, 0xFFFF]), st.integers(0, 0xFFFF),
                                 st.integers(0, 2**32 - 1)), max_size=16)


@FAST
@given(acl_entries)
def test_parse_acl_round_trip(entries: list[tuple[int, int, int]]) -> None:
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    parsed = socket.parse_acl(blob)
    assert [p.perms for p in parsed] == [perm & 0o7 for _, perm, _ in entries]


@FAST
@given(st.binary(max_size=64))
def test_parse_acl_is_a_result_or_a_value_error(blob: bytes) -> None:
    try:
        socket.parse_acl(blob)
    except ValueError as exc:
        assert str(exc)


# -- the policy --------------------------------------------------------------------------------

KEYS = ["apiVersion", "kind", "metadata", "spec", "mode", "controls", "rules", "daemonConfig", "socket",
        "dockerGroup", "firewall", "ports", "port", "allow", "allowedMembers", "fileMode", "agent", "labels",
        "resyncSeconds", "path", "extra", "owner"]
yaml_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                | st.sampled_from(["off", "observe", "enforce", "0660", "660", "192.0.2.0/24", "nodeguard.io/v1alpha1",
                                   "NodeGuardPolicy", "user:x:rw-", "::", ""]) | st.text(max_size=8))
yaml_docs = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner,
                                                                max_size=5),
    max_leaves=30)


@FAST
@given(yaml_docs)
def test_parse_policy_raises_only_policy_error(doc: Any) -> None:
    base = {"apiVersion": "nodeguard.io/v1alpha1", "kind": "NodeGuardPolicy"}
    for candidate in (doc, {**base, "spec": doc}, {**base, "spec": {"controls": doc}}):
        text = yaml.safe_dump(candidate, allow_unicode=True)
        try:
            policy.parse_policy(text, "prop.yaml")
        except policy.PolicyError as exc:
            assert exc.problems and str(exc).startswith("prop.yaml")


@pytest.mark.parametrize("text", [
    "[" * 20_000,
    "- " * 20_000 + "x",
    "a:\n" + "".join(" " * i + "a:\n" for i in range(1, 600)),
    "&a [*a]",
    "!!python/object:os.system {}",
    "spec: !!binary AAAA",
    "? [a]\n: b",
    "\ufeffapiVersion: x",
    "x: \"\\ud800\"",
])
def test_parse_policy_hostile_yaml_is_a_policy_error(text: str) -> None:
    with pytest.raises(policy.PolicyError):
        policy.parse_policy(text, "hostile.yaml")


# -- sshd_config with Include and Match ----------------------------------------------------------

sshd_lines = st.lists(
    st.sampled_from(["Include /etc/ssh/sshd_config", "Include sshd_config.d/*.conf", "Include *", "Match all",
                     "Match User alice", "PasswordAuthentication no", "PasswordAuthentication=yes",
                     'PermitRootLogin "no"', "Include sshd_config.d/0.conf sshd_config.d/0.conf", "#x", ""])
    | field_text, max_size=8).map("\n".join)


@FAST
@given(st.lists(sshd_lines, min_size=1, max_size=4))
def test_sshd_config_with_includes_never_raises_or_explodes(files: list[str]) -> None:
    TARGETS["sshd_config"]("\0".join(files).encode("utf-8", "surrogatepass"))


# The self-including fan-out, bounded by sshd_config.MAX_INCLUDED_FILES: tests/unit/test_sshd_config.py.


# -- the enforce path's JSON patch keeps everything but the patched keys -----------------------


@FAST
@given(st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=6),
       st.dictionaries(st.sampled_from(["icc", "live-restore", "hosts", "log-opts", "a", ""]), json_values,
                       max_size=3),
       st.sampled_from([None, 2, "\t"]), st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
def test_apply_patch_keeps_the_rest(obj: dict[str, Any], patch: dict[str, Any], indent: Any,
                                    seps: tuple[str, str]) -> None:
    from nodeguard.daemon_json import apply_patch

    text = json.dumps(obj, indent=indent, separators=seps)
    assert json.loads(apply_patch(text, patch)) == {**obj, **patch}
