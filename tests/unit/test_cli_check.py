"""`nodeguard check` as a user and a tool run it: JSON shape, exit codes, the table, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import check_json, run_nodeguard
from tests.support.sandbox import DOCKER_GID, Sandbox

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"
FINDING_KEYS = {"control", "rule", "cis", "status", "severity", "observed", "expected", "path"}


def add_member(sb: Sandbox, user: str) -> None:
    sb.write("/etc/group", sb.read("/etc/group").replace(f"docker:x:{DOCKER_GID}:", f"docker:x:{DOCKER_GID}:{user}"))


def test_json_shape(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", '{"icc": true}')
    rc, report = check_json(sandbox.root)
    assert rc == 1
    assert report["findings"], report
    for f in report["findings"]:
        assert set(f) >= FINDING_KEYS, f
        assert f["status"] in ("pass", "fail", "skip")
        assert f["severity"] in ("info", "low", "medium", "high", "critical")
        assert isinstance(f["control"], str) and isinstance(f["rule"], str)
        assert f["cis"] is None or isinstance(f["cis"], str)
    s = report["summary"]
    for status in ("pass", "fail", "skip"):
        assert s[status] == sum(1 for f in report["findings"] if f["status"] == status)
    assert s["total"] == len(report["findings"])
    icc = next(f for f in report["findings"] if (f["control"], f["rule"]) == ("daemon-config", "icc"))
    assert (icc["status"], icc["cis"], icc["observed"], icc["expected"], icc["path"]) == (
        "fail", "2.2", True, False, "/etc/docker/daemon.json")


def test_exit_0_when_nothing_fails(sandbox: Sandbox) -> None:
    rc, report = check_json(sandbox.root, "--only", "docker-group")
    assert rc == 0
    assert {f["control"] for f in report["findings"]} == {"docker-group"}
    assert report["summary"]["fail"] == 0


def test_exit_1_when_a_rule_fails(sandbox: Sandbox) -> None:
    add_member(sandbox, "bob")
    rc, report = check_json(sandbox.root, "--only", "docker-group")
    assert rc == 1
    assert [(f["rule"], f["subject"]) for f in report["findings"] if f["status"] == "fail"] == [
        ("member-allowed", "bob")]


def test_a_rule_switched_off_is_a_skip_not_a_failure(sandbox: Sandbox, tmp_path: Path) -> None:
    add_member(sandbox, "bob")
    pol = tmp_path / "p.yaml"
    pol.write_text(HEAD + "spec:\n  controls:\n    dockerGroup:\n      rules:\n        member-allowed: off\n")
    rc, report = check_json(sandbox.root, "--only", "docker-group", "--policy", str(pol))
    assert rc == 0
    bob = next(f for f in report["findings"] if f["subject"] == "bob")
    assert (bob["status"], bob["mode"]) == ("skip", "off")


def test_a_control_switched_off(sandbox: Sandbox, tmp_path: Path) -> None:
    add_member(sandbox, "bob")
    pol = tmp_path / "p.yaml"
    pol.write_text(HEAD + "spec:\n  controls:\n    dockerGroup:\n      mode: off\n")
    _, report = check_json(sandbox.root, "--policy", str(pol))
    assert "docker-group" not in {f["control"] for f in report["findings"]}
    # Named with --only, it runs, and every rule says it is off.
    rc, report = check_json(sandbox.root, "--policy", str(pol), "--only", "docker-group")
    assert rc == 0
    assert {(f["status"], f["mode"]) for f in report["findings"]} == {("skip", "off")}


def test_exit_2_on_a_bad_policy(sandbox: Sandbox, tmp_path: Path) -> None:
    pol = tmp_path / "bad.yaml"
    pol.write_text(HEAD + "spec:\n  mode: enforcing\n")
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--policy", str(pol))
    assert proc.returncode == 2
    assert f"{pol}:4: spec.mode:" in proc.stderr
    assert proc.stdout == ""


def test_exit_2_on_an_unknown_control(sandbox: Sandbox) -> None:
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "no-such-control")
    assert proc.returncode == 2
    assert "unknown control 'no-such-control'" in proc.stderr
    assert "docker-group" in proc.stderr  # the known ones are listed


def test_exit_2_on_a_host_root_that_does_not_exist(tmp_path: Path) -> None:
    proc = run_nodeguard("check", "--host-root", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_exit_2_on_a_bad_format(sandbox: Sandbox) -> None:
    assert run_nodeguard("check", "--host-root", str(sandbox.root), "--format", "xml").returncode == 2


def test_host_root_from_the_environment(sandbox: Sandbox) -> None:
    add_member(sandbox, "bob")
    proc = run_nodeguard("check", "--format", "json", "--only", "docker-group",
                         env={"NODEGUARD_HOST_ROOT": str(sandbox.root)})
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["host_root"] == str(sandbox.root)


def test_the_table_shows_failing_rules_in_80_columns(sandbox: Sandbox) -> None:
    add_member(sandbox, "bob")
    sandbox.write("/etc/docker/daemon.json", '{"icc": true}', 0o606)
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), columns=80)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    for check in ("docker-group/member-allowed", "daemon-config/icc", "daemon-files/daemon-json-mode"):
        line = next((ln for ln in out.splitlines() if check in ln), None)
        assert line is not None, out
        assert line.split()[0] == "fail", line
    assert "bob is in group docker" in out
    assert all(len(ln) <= 80 for ln in out.splitlines()), max(out.splitlines(), key=len)
    assert "failed," in out.splitlines()[-1]


def test_the_table_with_failed_only(sandbox: Sandbox) -> None:
    add_member(sandbox, "bob")
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "docker-group", "--failed")
    assert proc.returncode == 1
    rows = [ln.split()[0] for ln in proc.stdout.splitlines() if "docker-group/" in ln]
    assert rows == ["fail"]


@pytest.mark.parametrize(("args", "texts"), [
    ([], ["check", "run", "policy", "version"]),
    (["check"], ["--host-root", "--policy", "--format", "--only", "Exit 0"]),
    (["policy", "validate"], ["file, line, field and why"]),
    (["policy"], ["validate"]),
])
def test_help_texts(args: list[str], texts: list[str]) -> None:
    proc = run_nodeguard(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    for text in texts:
        assert text in proc.stdout, (text, proc.stdout)


def test_version() -> None:
    proc = run_nodeguard("version")
    assert proc.returncode == 0
    assert proc.stdout.strip()
