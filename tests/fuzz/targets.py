"""One fuzz target per parser of host input: bytes in, a result or one of the parser's clear errors out.

Each target decodes the fuzzer's bytes the way the agent gets that input (a file's bytes, a command
line split on NULs, an xattr blob, a folder of sshd_config drop-ins), calls the parser, and checks
what came back. Any other exception is a crash; libFuzzer's -timeout and -rss_limit_mb catch hangs
and unbounded memory. Used by the atheris scripts (`fuzz_<target>.py`), by the short CI run
(tests/unit/test_fuzz_smoke.py) and by the hypothesis tests (tests/unit/test_parsers_property.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeguard import dockerd, policy
from nodeguard.controls import daemon_config, host_layout, socket
from nodeguard.formats import gojson, nss_files, sshd_config
from nodeguard.host import HostRoot, accounts, shadow
from tests.fuzz.attribution_targets import audit_log

Target = Callable[[bytes], None]


def _text(data: bytes) -> str:
    # surrogateescape: keeps every byte, as the agent's readers do for /etc files
    return data.decode("utf-8", "surrogateescape")


def daemon_json(data: bytes) -> None:
    value, error = daemon_config.parse_daemon_json(data)
    assert (value is None) != (error is None)
    if value is not None:
        assert isinstance(value, dict)
        # What the controls do next with a parsed object must not crash either.
        cfg: dict[str, Any] = value
        daemon_config.hosts_of(cfg)
        daemon_config.tls_enabled(cfg)


def daemon_host(data: bytes) -> None:
    tls = bool(data[:1]) and data[0] & 1 == 1
    endpoint = daemon_config.parse_host(_text(data[1:]), tls)
    assert endpoint.port is None or isinstance(endpoint.port, int)


def passwd(data: bytes) -> None:
    problems: list[str] = []
    users = accounts.parse_passwd(_text(data), problems)
    assert all(isinstance(u.uid, int) and isinstance(u.gid, int) for u in users.values())


def group(data: bytes) -> None:
    problems: list[str] = []
    groups = accounts.parse_group(_text(data), problems)
    assert all(isinstance(g.gid, int) and "" not in g.members for g in groups.values())


def gshadow(data: bytes) -> None:
    out = accounts.parse_gshadow(_text(data), [])
    assert all(isinstance(a, tuple) and isinstance(m, tuple) for a, m in out.values())


def dockerd_flags(data: bytes) -> None:
    argv = ["dockerd", *_text(data).split("\0")]
    flags = dockerd.parse_flags(argv)
    proc = dockerd.DaemonProcess(1, argv, "scan", flags)
    proc.config_values()


def socket_acl(data: bytes) -> None:
    try:
        entries = socket.parse_acl(data)
    except ValueError:
        return
    for e in entries:
        e.render({})


def policy_yaml(data: bytes) -> None:
    with contextlib.suppress(policy.PolicyError):
        policy.parse_policy(data.decode("utf-8", "replace"), "fuzz.yaml")


def sshd(data: bytes) -> None:
    # NUL-separated files: sshd_config, then drop-ins /etc/ssh/sshd_config.d/<n>.conf
    texts = _text(data).split("\0")
    files = {"/etc/ssh/sshd_config": texts[0]}
    files.update({f"/etc/ssh/sshd_config.d/{i}.conf": t for i, t in enumerate(texts[1:])})

    def list_dir(folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/", 1)[0] for p in files if p.startswith(prefix)})

    cfg = sshd_config.parse(files.get, list_dir)
    assert len(cfg.files) <= sshd_config.MAX_INCLUDED_FILES + 1


def mountinfo(data: bytes) -> None:
    for entry in host_layout.parse_mountinfo(_text(data)):
        assert isinstance(entry.mount_point, str)


_AUDIT_ROOT: HostRoot | None = None


def audit_rules(data: bytes) -> None:
    from nodeguard.controls.audit_rules import parse_audit_rules

    global _AUDIT_ROOT
    if _AUDIT_ROOT is None:
        # One small sandbox root, reused by every run (libFuzzer exits without Python's clean-up).
        root = Path(tempfile.gettempdir()) / "ng-fuzz-audit-root"
        (root / "etc/docker").mkdir(parents=True, exist_ok=True)
        if not (root / "etc/loop").is_symlink():
            os.symlink("/etc", root / "etc/loop")  # something for the resolver to follow
        _AUDIT_ROOT = HostRoot(root)
    chunks = [(f"/etc/audit/rules.d/{i}.rules", t) for i, t in enumerate(_text(data).split("\0"))]
    watches, _problems = parse_audit_rules(chunks, _AUDIT_ROOT)
    assert all(isinstance(w.path, str) for w in watches)


def daemon_json_patch(data: bytes) -> None:
    """The enforce path: a valid daemon.json as an admin formatted it, patched key by key."""
    from nodeguard.daemon_json import apply_patch

    value, _ = daemon_config.parse_daemon_json(data)
    if not value:
        return
    # As the remediation does: bytes that are not UTF-8 survive the patch as they came.
    text = data.decode("utf-8", "surrogateescape")
    patch = {"icc": False, "live-restore": True, next(iter(value)): None}
    out = apply_patch(text, patch)
    # Read back as dockerd reads it (json.loads would recurse on a 1500-deep value).
    assert daemon_config.parse_daemon_json(out.encode("utf-8", "surrogateescape")) == ({**value, **patch}, None)


def go_json(data: bytes) -> None:
    """dockerd's JSON reader: a value or GoJSONError, whatever the depth, digits or bytes."""
    with contextlib.suppress(gojson.GoJSONError):
        _value, end = gojson.decode(_text(data))
        assert 0 < end <= len(_text(data))


def group_membership(data: bytes) -> None:
    """glibc's view of /etc/group, then nodeguard's removal: afterwards nobody is granted docker's gid."""
    text = _text(data)
    entries, _rejected = nss_files.group_lines(text)
    gids = nss_files.docker_gids(entries, "docker")
    granted = {m for e in entries if e.init_gid in gids for m in e.init_members}
    after = shadow.rewrite_group(text, "docker", frozenset(granted))
    entries_after, _ = nss_files.group_lines(after)
    gids_after = nss_files.docker_gids(entries_after, "docker")
    assert not {m for e in entries_after if e.init_gid in gids_after for m in e.init_members}
    # Only member lists changed: as many lines, the same names in the same order.
    assert after.count("\n") == text.count("\n")


def tls_material(data: bytes) -> None:
    """A file named by tlscacert/tlscert/tlskey: certificates or a key, PEM or DER, or TLSFileError."""
    from nodeguard.tls_material import TLSFileError, load_certificates, load_private_key

    for load in (load_certificates, load_private_key):
        with contextlib.suppress(TLSFileError):
            load(data)


TARGETS: dict[str, Target] = {
    "daemon_json": daemon_json,
    "daemon_host": daemon_host,
    "passwd": passwd,
    "group": group,
    "gshadow": gshadow,
    "dockerd_flags": dockerd_flags,
    "socket_acl": socket_acl,
    "policy": policy_yaml,
    "sshd_config": sshd,
    "mountinfo": mountinfo,
    "audit_rules": audit_rules,
    "daemon_json_patch": daemon_json_patch,
    "tls_material": tls_material,
    "audit_log": audit_log,
    "go_json": go_json,
    "group_membership": group_membership,
}

CORPUS = Path(__file__).resolve().parent / "corpus"


def all_targets() -> Target:
    """One target for all (libFuzzer fuzzes one function per process): the first byte picks the parser."""
    names = sorted(TARGETS)

    def one_of_all(data: bytes) -> None:
        if data:
            TARGETS[names[data[0] % len(names)]](data[1:])

    return one_of_all


def seeds_folder(name: str, work: Path) -> Path:
    """The checked-in seeds of `name`; for "all", every target's seeds prefixed with its selector byte."""
    if name != "all":
        return CORPUS / name
    folder = work / "seeds"
    folder.mkdir(exist_ok=True)
    for index, target in enumerate(sorted(TARGETS)):
        for seed in sorted((CORPUS / target).iterdir()):
            (folder / f"{target}-{seed.name}").write_bytes(bytes([index]) + seed.read_bytes())
    return folder
