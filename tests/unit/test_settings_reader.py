"""The export settings reader: one place reads each variable; a flag beats it, it beats the default."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

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
    # typer used to read OTEL_EXPORTER_OTLP_PROTOCOL itself and hand it over as a flag, beating
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


def test_booleans_take_the_spellings_typer_took() -> None:
    for word, expected in (("1", True), ("yes", True), ("on", True), ("0", False), ("false", False), ("off", False)):
        assert ExportOptions.from_env({"OTEL_EXPORTER_OTLP_INSECURE": word}).otlp_insecure is expected


def test_no_run_flag_reads_an_export_variable_itself() -> None:
    from nodeguard.cli import app

    command = typer.main.get_command(app)
    run = command.commands["run"]  # type: ignore[attr-defined]
    variables = {var for s in SETTINGS for var in s.env}
    # --host-root and --events-file stay with typer: the CLI needs them before the export settings
    # exist, and hands them over as flags, so the reader never reads them on this path.
    readers = {p.name: p.envvar for p in run.params if p.envvar in variables}
    assert readers == {"host_root": "NODEGUARD_HOST_ROOT", "events_file": "NODEGUARD_EVENTS_FILE"}
    helps = " ".join(p.help or "" for p in run.params)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "NODEGUARD_SPOOL_MAX_BYTES"):
        assert name in helps  # --help still names the variables


def test_readme_names_every_variable_the_reader_reads() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| variable | flag of `nodeguard run` | meaning |", 1)[1].split("\n\n", 1)[0]
    for setting in SETTINGS:
        for var in setting.env:
            short = var.replace("OTEL_EXPORTER_OTLP_", "_") if "_LOGS_" in var or "_METRICS_" in var else var
            assert var in table or short in table, var
