"""A host with no Docker at all (an empty host root): the audit runs and says so, never a traceback."""

from __future__ import annotations

from pathlib import Path

from nodeguard.catalog import control_names
from tests.support.cli import check_json

NO_DOCKER_CONTROLS = ("daemon-files", "socket", "docker-group")


def test_check_on_an_empty_host_root_says_there_is_no_engine(tmp_path: Path) -> None:
    rc, report = check_json(tmp_path)
    assert rc == 0
    assert report["docker_engine"] is False and report["findings"] == []
    assert "no Docker engine under" in report["message"]


def test_every_control_named_on_an_empty_host_root(tmp_path: Path) -> None:
    root = tmp_path / "host"
    root.mkdir()
    # Named explicitly, every control runs even without an engine.
    rc, report = check_json(root, *[arg for c in control_names() for arg in ("--only", c)])
    # Docker's built-in defaults still fail CIS (icc, live-restore, ...) had it been installed here.
    assert rc == 1
    findings = report["findings"]
    # No control crashed: a crash becomes a finding of rule "evaluate".
    assert not [f for f in findings if f["rule"] == "evaluate"], findings
    for control in NO_DOCKER_CONTROLS:
        mine = [f for f in findings if f["control"] == control]
        assert mine, control
        assert {f["status"] for f in mine} == {"skip"}, mine
    dj = next(f for f in findings if (f["control"], f["rule"]) == ("daemon-config", "valid-json"))
    assert (dj["status"], dj["observed"]) == ("pass", "absent")
    sock = next(f for f in findings if (f["control"], f["rule"]) == ("socket", "socket-mode"))
    assert "does not exist" in sock["message"]
    group = next(f for f in findings if f["control"] == "docker-group")
    assert "/etc/group does not exist" in group["message"]


def test_the_host_side_controls_pass_an_empty_host_root(tmp_path: Path) -> None:
    rc, report = check_json(tmp_path, *[arg for c in NO_DOCKER_CONTROLS for arg in ("--only", c)])
    assert rc == 0, report
    assert report["summary"]["fail"] == 0
    assert {f["control"] for f in report["findings"]} == set(NO_DOCKER_CONTROLS)
