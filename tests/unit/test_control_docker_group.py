"""docker-group: members in group and gshadow (members and admins), primary-GID users, whole-name allow-lists."""

from __future__ import annotations

import os

import pytest

from nodeguard.controls.docker_group import DockerGroupControl, DockerGroupObservation
from nodeguard.structs import Finding, Status
from tests.support.rules import observe, one, policy_from, run
from tests.support.sandbox import DOCKER_GID, Sandbox, usermod_add

CTL = DockerGroupControl()


def set_line(sb: Sandbox, host_path: str, name: str, line: str | None) -> None:
    """Replace (or with None, drop) the entry of `name` in a colon-separated account file."""
    lines = [ln for ln in sb.read(host_path).splitlines() if ln.split(":")[0] != name]
    if line is not None:
        lines.append(line)
    sb.write(host_path, "\n".join(lines) + "\n", 0o640 if "shadow" in host_path else 0o644)


def members(found: list[Finding]) -> dict[str, Status]:
    return {f.subject: f.status for f in found if f.rule == "member-allowed" and f.subject}


def test_an_empty_docker_group_passes(sandbox: Sandbox) -> None:
    found = run(CTL, sandbox)
    assert [(f.rule, f.status) for f in found] == [("member-allowed", Status.PASS), ("primary-group", Status.PASS),
                                                   ("single-entry", Status.PASS), ("group-password", Status.PASS)]
    assert one(found, "member-allowed").cis == "1.1.2"


def test_group_members_outside_the_allow_list_fail(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/group", "docker", f"docker:x:{DOCKER_GID}:alice, bob")
    found = run(CTL, sandbox, policy_from("spec: {controls: {dockerGroup: {allowedMembers: [alice]}}}"))
    assert members(found) == {"alice": Status.PASS, "bob": Status.FAIL}
    bob = one(found, "member-allowed", "bob")
    assert (bob.observed, bob.expected, bob.details["sources"]) == ("bob", ["alice"], ["group"])


def test_gshadow_members_and_admins_count(sandbox: Sandbox) -> None:
    # gshadow: name:password:admins:members. An admin can add members with gpasswd: as good as one.
    set_line(sandbox, "/etc/gshadow", "docker", "docker:!:alice:bob")
    found = run(CTL, sandbox)
    assert members(found) == {"alice": Status.FAIL, "bob": Status.FAIL}
    assert one(found, "member-allowed", "alice").details["sources"] == ["gshadow-admin"]
    assert one(found, "member-allowed", "bob").details["sources"] == ["gshadow"]


def test_a_member_listed_in_both_files_is_one_finding(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/group", "docker", f"docker:x:{DOCKER_GID}:bob")
    set_line(sandbox, "/etc/gshadow", "docker", "docker:!::bob")
    found = run(CTL, sandbox)
    assert one(found, "member-allowed", "bob").details["sources"] == ["group", "gshadow"]


def test_users_with_docker_as_primary_group_fail(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/passwd", "ci", f"ci:x:1500:{DOCKER_GID}:CI:/home/ci:/bin/sh")
    set_line(sandbox, "/etc/passwd", "svc", f"svc:x:1501:{DOCKER_GID}:svc:/:/bin/sh")
    found = run(CTL, sandbox, policy_from("spec: {controls: {dockerGroup: {allowedMembers: [svc]}}}"))
    primary = {f.subject: f.status for f in found if f.rule == "primary-group"}
    assert primary == {"ci": Status.FAIL, "svc": Status.PASS}
    # They never appear in the member list, yet they are in the group.
    assert members(found) == {}
    assert one(found, "primary-group", "ci").path == "/etc/passwd"


def test_allow_list_matches_whole_names(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/group", "docker", f"docker:x:{DOCKER_GID}:bob,bobby,bo")
    found = run(CTL, sandbox, policy_from("spec: {controls: {dockerGroup: {allowedMembers: [bobby]}}}"))
    assert members(found) == {"bob": Status.FAIL, "bobby": Status.PASS, "bo": Status.FAIL}


def test_a_missing_group_is_skipped(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/group", "docker", None)
    set_line(sandbox, "/etc/gshadow", "docker", None)
    found = run(CTL, sandbox)
    assert {f.status for f in found} == {Status.SKIP}
    assert {f.rule for f in found} == {"member-allowed", "primary-group", "single-entry", "group-password"}
    assert "no group 'docker'" in found[0].message


def test_a_missing_etc_group_is_skipped(sandbox: Sandbox) -> None:
    sandbox.path("/etc/group").unlink()
    found = run(CTL, sandbox)
    assert {f.status for f in found} == {Status.SKIP}
    assert "/etc/group does not exist" in found[0].message


def test_an_unreadable_etc_group_is_named_as_such(sandbox: Sandbox) -> None:
    sandbox.path("/etc/group").unlink()
    os.mkfifo(sandbox.path("/etc/group"))  # chmod 000 is no obstacle to root; a FIFO is
    found = run(CTL, sandbox)
    assert {f.status for f in found} == {Status.SKIP}
    assert "/etc/group: cannot read" in found[0].message
    assert "fifo" in found[0].message


def test_the_policy_names_the_group(sandbox: Sandbox) -> None:
    set_line(sandbox, "/etc/group", "dockerroot", "dockerroot:x:995:alice")
    set_line(sandbox, "/etc/group", "docker", f"docker:x:{DOCKER_GID}:bob")
    found = run(CTL, sandbox, policy_from("spec: {controls: {dockerGroup: {group: dockerroot}}}"))
    assert members(found) == {"alice": Status.FAIL}


def test_malformed_lines_do_not_stop_the_audit(sandbox: Sandbox) -> None:
    sandbox.write("/etc/group", sandbox.read("/etc/group") + "garbage\n::\nx:y:notanumber:bob\n"
                  + f"docker:x:{DOCKER_GID}:mallory\n")
    obs = observe(CTL, sandbox)
    assert isinstance(obs, DockerGroupObservation)
    assert obs.problems  # reported, not fatal
    # glibc's initgroups reads the second docker line too: mallory is in the group, and the
    # duplicate is a finding of its own.
    found = CTL.evaluate(obs, policy_from())
    assert members(found) == {"mallory": Status.FAIL}
    assert one(found, "single-entry").status is Status.FAIL


@pytest.mark.root
def test_the_real_usermod_is_seen(sandbox: Sandbox) -> None:
    usermod_add(sandbox, "alice")
    found = run(CTL, sandbox)
    alice = one(found, "member-allowed", "alice")
    assert alice.status is Status.FAIL
    assert alice.details["sources"] == ["group", "gshadow"]


def test_evaluate_is_pure() -> None:
    obs = DockerGroupObservation("docker", DOCKER_GID, {"eve": ["gshadow"]}, ["ci"])
    found = CTL.evaluate(obs, policy_from())
    assert members(found) == {"eve": Status.FAIL}
    assert one(found, "primary-group", "ci").status is Status.FAIL
    # A group only gshadow knows still has members that matter.
    orphan = DockerGroupObservation("docker", None, {"eve": ["gshadow"]})
    assert members(CTL.evaluate(orphan, policy_from())) == {"eve": Status.FAIL}
