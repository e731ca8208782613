"""sshd_config parsing the way sshd reads it: Include, Match, comments, first value wins."""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodeguard.controls.base import Context
from nodeguard.controls.host_checks import HostControl
from nodeguard.formats import sshd_config
from nodeguard.formats.sshd_config import SshdConfig, parse, split_args, split_line
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy
from nodeguard.structs import Finding, Status
from tests.fuzz.targets import TARGETS
from tests.support.sandbox import Sandbox


def parse_in(sb: Sandbox) -> SshdConfig:
    host = HostRoot(sb.root)

    def read(path: str) -> str | None:
        try:
            return host.read_text(path)
        except OSError:
            return None

    return parse(read, host.listdir)


def sshd_findings(sb: Sandbox) -> dict[str, Finding]:
    ctx = Context(HostRoot(sb.root), load_policy())
    control = HostControl()
    return {f.rule: f for f in control.evaluate(control.observe(ctx), ctx.policy) if f.rule.startswith("sshd-")}


def test_line_syntax() -> None:
    assert split_line("  PasswordAuthentication   no  ") == ("passwordauthentication", ["no"])
    assert split_line("PermitRootLogin=no") == ("permitrootlogin", ["no"])
    assert split_line("PermitRootLogin = yes # trailing comment") == ("permitrootlogin", ["yes"])
    assert split_line("# PasswordAuthentication yes") is None
    assert split_line("   ") is None
    assert split_args('"/etc/ssh/my dir/*.conf" other') == ["/etc/ssh/my dir/*.conf", "other"]


def test_first_value_wins_and_an_early_include_beats_the_main_file(sandbox: Sandbox) -> None:
    sandbox.write("/etc/ssh/sshd_config", """\
# Debian puts its drop-ins first
Include /etc/ssh/sshd_config.d/*.conf
PasswordAuthentication yes
PermitRootLogin yes
PermitRootLogin no
""")
    sandbox.write("/etc/ssh/sshd_config.d/10-hardening.conf", "passwordauthentication no\n")
    sandbox.write("/etc/ssh/sshd_config.d/20-later.conf", "PasswordAuthentication yes\n")
    sandbox.write("/etc/ssh/sshd_config.d/.hidden.conf", "PubkeyAuthentication no\n")
    sandbox.write("/etc/ssh/sshd_config.d/README", "PubkeyAuthentication no\n")
    cfg = parse_in(sandbox)
    assert cfg.effective("PasswordAuthentication") == "no"
    assert cfg.global_setting("PasswordAuthentication").file == "/etc/ssh/sshd_config.d/10-hardening.conf"
    assert cfg.effective("PermitRootLogin") == "yes"  # the first of two lines
    assert cfg.effective("PubkeyAuthentication") == "yes"  # sshd's default: neither README nor a dot-file
    found = sshd_findings(sandbox)
    assert found["sshd-password-auth"].status is Status.PASS
    assert found["sshd-root-login"].status is Status.FAIL
    assert found["sshd-root-login"].details["source"] == "/etc/ssh/sshd_config:4"


def test_relative_include_is_relative_to_etc_ssh_and_matches_do_not_leak(sandbox: Sandbox) -> None:
    sandbox.write("/etc/ssh/sshd_config", """\
Include conf.d/*.conf
Match User deploy
    PasswordAuthentication yes
Match all
PermitRootLogin prohibit-password
""")
    # A Match inside an included file ends with that file: the main file's next lines are global again.
    sandbox.write("/etc/ssh/conf.d/a.conf", "Match Address 10.0.0.0/8\n  PermitRootLogin yes\n")
    sandbox.write("/etc/ssh/conf.d/b.conf", "PasswordAuthentication no\nPubkeyAuthentication yes\n")
    cfg = parse_in(sandbox)
    assert cfg.files == ["/etc/ssh/sshd_config", "/etc/ssh/conf.d/a.conf", "/etc/ssh/conf.d/b.conf"]
    assert cfg.global_setting("PasswordAuthentication").match is None
    assert cfg.effective("PasswordAuthentication") == "no"
    assert [(o.match, o.value) for o in cfg.match_overrides("PasswordAuthentication")] == [("User deploy", "yes")]
    assert cfg.effective("PermitRootLogin") == "prohibit-password"  # from `Match all`
    found = sshd_findings(sandbox)
    pw = found["sshd-password-auth"]
    assert pw.status is Status.PASS and "Match User deploy sets yes" in pw.message
    root = found["sshd-root-login"]
    assert root.status is Status.PASS and root.details["match_overrides"][0]["match"] == "Address 10.0.0.0/8"


def test_settings_inside_match_never_count_as_global(sandbox: Sandbox) -> None:
    sandbox.write("/etc/ssh/sshd_config", """\
Match Group admins
  PasswordAuthentication no
  PermitRootLogin no
""")
    found = sshd_findings(sandbox)
    # Outside the Match block nothing is set: sshd's defaults apply to everyone else.
    assert found["sshd-password-auth"].status is Status.FAIL
    assert found["sshd-password-auth"].observed == "yes"
    assert found["sshd-root-login"].status is Status.PASS  # the default prohibit-password


def test_include_inside_match_is_conditional(sandbox: Sandbox) -> None:
    sandbox.write("/etc/ssh/sshd_config", "Match User ci\n  Include /etc/ssh/ci.conf\nPubkeyAuthentication no\n")
    sandbox.write("/etc/ssh/ci.conf", "PasswordAuthentication no\n")
    cfg = parse_in(sandbox)
    assert cfg.global_setting("PasswordAuthentication") is None
    assert cfg.match_overrides("PasswordAuthentication")[0].match == "User ci"
    assert cfg.global_setting("PubkeyAuthentication") is None  # still inside `Match User ci`


def test_include_loops_stop_and_missing_files_are_noted(sandbox: Sandbox) -> None:
    sandbox.write("/etc/ssh/sshd_config", "Include /etc/ssh/loop.conf /etc/ssh/missing.conf\n")
    sandbox.write("/etc/ssh/loop.conf", "Include /etc/ssh/loop.conf\n")
    cfg = parse_in(sandbox)
    assert any("deeper than 16" in p for p in cfg.problems)
    assert any("missing.conf: included but missing" in p for p in cfg.problems)


def test_no_sshd_is_a_skip(sandbox: Sandbox) -> None:
    assert not Path(sandbox.path("/etc/ssh")).exists()
    found = sshd_findings(sandbox)
    assert {f.status for f in found.values()} == {Status.SKIP}


@settings(max_examples=40, deadline=None)
@given(width=st.integers(2, 6), n_files=st.integers(1, 4))
@example(width=3, n_files=1)  # the fuzz finding: sshd_config includes itself three times
def test_sshd_config_self_including_fan_out_is_bounded(width: int, n_files: int) -> None:
    """Files that include each other `width` times a line would be parsed width**16 times without a
    budget (the depth limit alone stops at 16); the budget is MAX_INCLUDED_FILES parses in all."""
    names = ["/etc/ssh/sshd_config"] + [f"/etc/ssh/sshd_config.d/{i}.conf" for i in range(1, n_files)]
    files = {name: "Include " + " ".join(names[(i + k) % n_files] for k in range(width)) + "\nX y\n"
             for i, name in enumerate(names)}
    reads: list[str] = []

    def read(path: str) -> str | None:
        reads.append(path)
        return files.get(path)

    cfg = sshd_config.parse(read, lambda folder: [])
    budget = sshd_config.MAX_INCLUDED_FILES
    # Every file is read once per parse, and there are no more parses than the budget.
    assert len(reads) == len(cfg.files) <= budget
    # Parses and problems (too deep) use the budget up, plus the one note that it ran out; then nothing.
    assert len(cfg.files) + len(cfg.problems) == budget + 1
    overflow = [p for p in cfg.problems if f"more than {budget} included files" in p]
    assert overflow == [cfg.problems[-1]]
    assert all("deeper than 16" in p for p in cfg.problems[:-1])
    assert len(cfg.settings) == len(cfg.files)  # each parse read its one `X y`, none twice in one parse
    # The fuzz target's own check, on the original finding.
    TARGETS["sshd_config"](b"Include /etc/ssh/sshd_config /etc/ssh/sshd_config /etc/ssh/sshd_config\nX y\n")
