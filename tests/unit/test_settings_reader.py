"""The export settings reader: one place reads each variable; a flag beats it, it beats the default."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from nodeguard import settings
from nodeguard.events.options import SETTINGS, ExportOptions, OtlpProtocol, export_options_from_flags


def test_flag_beats_variable_beats_default() -> None:
    env = {"NODEGUARD_AGGREGATE_SECONDS": "7", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    assert ExportOptions.from_env({}).aggregate_seconds == ExportOptions().aggregate_seconds
    assert ExportOptions.from_env(env).aggregate_seconds == 7.0
    o = export_options_from_flags(host_root=Path("/"), events_file="-", aggregate_seconds=0, env=env)
    assert o.aggregate_seconds == 0 and o.otlp_endpoint == "http://env:4318"
    o = export_options_from_flags(host_root=Path("/"), events_file="-", otlp_endpoint="http://flag:4318", env=env)
    assert o.otlp_endpoint == "http://flag:4318"


def test_the_signal_specific_variable_wins_on_the_flags_path_too() -> None:
    # typer (the CLI's first parser) read OTEL_EXPORTER_OTLP_PROTOCOL itself and handed it over as a flag, beating
    # OTEL_EXPORTER_OTLP_LOGS_PROTOCOL; there is one reader now, and it reads the logs one first.
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc"}
    assert export_options_from_flags(host_root=Path("/"), events_file="-", env=env).otlp_protocol is OtlpProtocol.GRPC
    assert ExportOptions.from_env(env).otlp_protocol is OtlpProtocol.GRPC


@pytest.mark.parametrize(("var", "value"), [
    ("NODEGUARD_SPOOL_MAX_BYTES", "1024"),  # below the flag's own minimum (65536)
    ("NODEGUARD_SPOOL_MAX_BYTES", "lots"),
    ("NODEGUARD_AGGREGATE_SECONDS", "-1"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "maybe"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "brotli"),
])
def test_a_variable_that_does_not_parse_is_refused_by_name(var: str, value: str) -> None:
    with pytest.raises(ValueError, match=var):
        ExportOptions.from_env({var: value})


def test_booleans_take_click_s_spellings() -> None:
    for word, expected in (("1", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("off", False)):
        assert ExportOptions.from_env({"OTEL_EXPORTER_OTLP_INSECURE": word}).otlp_insecure is expected


def _commands(group: click.Group, ctx: click.Context) -> list[click.Command]:
    found: list[click.Command] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found += _commands(command, ctx) if isinstance(command, click.Group) else [command]
    return found


def test_no_flag_reads_a_variable_itself() -> None:
    """Every option of every command (firewall's too) leaves its variable to the one reader."""
    from nodeguard.cli import app

    ctx = click.Context(app)
    commands = _commands(app, ctx)
    assert {c.name for c in commands} >= {"check", "run", "health", "show", "apply", "remove", "verify"}
    readers = {(c.name, p.name): p.envvar for c in commands for p in c.params if p.envvar}
    assert readers == {}
    run = app.commands["run"]
    helps = " ".join(getattr(p, "help", None) or "" for p in run.params)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "NODEGUARD_SPOOL_MAX_BYTES",
                 "NODEGUARD_HOST_ROOT", "NODEGUARD_EVENTS_FILE", "NODEGUARD_STATE_DIR"):
        assert name in helps  # --help still names the variables


def test_every_flag_is_declared_once_with_its_variables() -> None:
    """A flag named by a setting is built from it: the same variables in its help, the same default."""
    from nodeguard.cli import app

    by_flag = {s.flag.split("/")[0]: s for s in settings.SETTINGS if s.flag}
    ctx = click.Context(app)
    seen = set()
    for command in _commands(app, ctx):
        for param in command.params:
            s = next((by_flag[o] for o in param.opts if o in by_flag), None)
            if s is None:
                continue
            seen.add(s.flag)
            assert all(var in (getattr(param, "help", None) or "") for var in s.env), (command.name, s.field)
    assert seen == {s.flag for s in settings.SETTINGS if s.flag}


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "/var/lib/nodeguard"),
    ([], {"NODEGUARD_STATE_DIR": "{tmp}/env"}, "{tmp}/env"),
    (["--state-dir", "{tmp}/flag"], {"NODEGUARD_STATE_DIR": "{tmp}/env"}, "{tmp}/flag"),
])
def test_state_dir_flag_beats_variable_beats_default(args: list[str], env: dict[str, str], expected: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`nodeguard health` and the probe `python -m nodeguard.health` resolve --state-dir alike."""
    from click.testing import CliRunner

    from nodeguard.cli import app
    from nodeguard.health import main as probe

    args = [a.format(tmp=tmp_path) for a in args]
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    expected = expected.format(tmp=tmp_path)
    monkeypatch.delenv("NODEGUARD_STATE_DIR", raising=False)
    result = CliRunner().invoke(app, ["health", *args], env=env)
    assert result.exit_code == 1 and f"{expected}/" in result.output, result.output
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    assert probe(args) == 1
    assert f"{expected}/" in capsys.readouterr().out


def test_a_bad_variable_of_a_cli_setting_is_a_usage_error() -> None:
    from click.testing import CliRunner

    from nodeguard.cli import app

    result = CliRunner().invoke(app, ["run", "--host-root", "/nonexistent"], env={"NODEGUARD_MODE": "bogus"})
    assert result.exit_code == 2 and "NODEGUARD_MODE" in result.output, result.output


def test_readme_names_every_variable_the_reader_reads() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| variable | flag of `nodeguard run` | meaning |", 1)[1].split("\n\n", 1)[0]
    assert set(SETTINGS) <= set(settings.SETTINGS)
    for setting in settings.SETTINGS:
        for var in setting.env:
            short = var.replace("OTEL_EXPORTER_OTLP_", "_") if "_LOGS_" in var or "_METRICS_" in var else var
            assert var in table or short in table, var
