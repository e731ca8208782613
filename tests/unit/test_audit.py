"""One audit pass: the Docker API control runs beside the file controls; selection by rule."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, ClassVar

from nodeguard.audit import run_audit
from nodeguard.controls import Context, Control
from nodeguard.policy import Policy, load_policy
from nodeguard.structs import Finding, Mode, Rule, Severity, Status

MET = threading.Event()


class ApiSide(Control):
    """Named like the runtime control: its observation waits for the file side to have run."""

    name: ClassVar[str] = "runtime"
    policy_key: ClassVar[str] = "runtime"
    rules: ClassVar[tuple[Rule, ...]] = (Rule("privileged", "t", Severity.CRITICAL),)

    def observe(self, ctx: Context) -> Any:
        # Sequential execution would wait here for the full 10 s and then see False.
        return MET.wait(10)

    def evaluate(self, observed: Any, policy: Policy) -> list[Finding]:
        return [self.finding("privileged", Status.PASS if observed else Status.FAIL, f"overlapped={observed}")]


class FileSide(Control):
    name: ClassVar[str] = "socket"
    policy_key: ClassVar[str] = "socket"
    rules: ClassVar[tuple[Rule, ...]] = (Rule("socket-mode", "t", Severity.HIGH),
                                         Rule("socket-acl", "t", Severity.HIGH))

    def observe(self, ctx: Context) -> Any:
        MET.set()
        return None

    def evaluate(self, observed: Any, policy: Policy) -> list[Finding]:
        return [self.finding(r.id, Status.FAIL, "x") for r in self.rules]


def test_the_api_control_overlaps_the_file_controls_and_order_is_kept(tmp_path: Path) -> None:
    MET.clear()
    report = run_audit(tmp_path, load_policy(), controls=[ApiSide(), FileSide()])
    assert [r.control.name for r in report.results] == ["runtime", "socket"]
    assert report.results[0].findings[0].status is Status.PASS, report.results[0].findings
    assert report.started <= report.ended


def test_selection_runs_only_owning_controls_and_keeps_only_selected_rules(tmp_path: Path) -> None:
    MET.set()
    report = run_audit(tmp_path, load_policy(), controls=[ApiSide(), FileSide()],
                       select={("socket", "socket-acl")})
    assert [(f.control, f.rule) for f in report.findings] == [("socket", "socket-acl")]
    report = run_audit(tmp_path, load_policy(), controls=[ApiSide(), FileSide()],
                       skip={("socket", "socket-acl"), ("runtime", "privileged")})
    assert [(f.control, f.rule) for f in report.findings] == [("socket", "socket-mode")]
    assert report.failed_at(Severity.HIGH) and not report.failed_at(Severity.CRITICAL)


def test_a_mode_stamp_keeps_every_other_field() -> None:
    # Finding.with_mode lists the fields by position (dataclasses.replace costs ~15 us a finding):
    # a field added to Finding and forgotten there would be dropped silently.
    values: dict[str, object] = {"control": "socket", "rule": "socket-mode", "status": Status.FAIL,
                                 "severity": Severity.CRITICAL, "message": "m", "cis": "3.16", "observed": "0666",
                                 "expected": "0660", "path": "/run/docker.sock", "subject": "s",
                                 "mode": Mode.OBSERVE, "details": {"k": 1}}
    assert set(values) == {f.name for f in dataclasses.fields(Finding)}
    stamped = Finding(**values).with_mode(Mode.ENFORCE)  # type: ignore[arg-type]
    assert stamped == dataclasses.replace(Finding(**values), mode=Mode.ENFORCE)  # type: ignore[arg-type]
