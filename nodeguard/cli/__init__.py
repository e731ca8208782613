"""The `nodeguard` command: check (one-shot audit), run (the agent), policy, version."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from nodeguard import settings
from nodeguard._version import __version__
from nodeguard.cli.events import events_app
from nodeguard.cli.flags import CONTEXT_SETTINGS, Command, DocArgument, Group, group, setting_option
from nodeguard.exit_codes import ExitCode
from nodeguard.health import DEFAULT_MAX_AGE

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nodeguard.api_prefetch import ForkedDaemonReader
    from nodeguard.host import HostRoot
    from nodeguard.policy import Policy

# Each command imports what it needs when it runs: `version`, `health` (the pod's probe), `policy
# validate` and `events verify` load none of docker, kubernetes, opentelemetry, pyroute2,
# cryptography or iptc (tests/unit/test_cli_imports.py holds them to it); `check` loads no
# opentelemetry (its export settings are read by `run` alone).


class _LazyGroup(Group):
    """The `firewall` commands are built (and their netfilter modules imported) only when asked for."""

    _LAZY = {"firewall": "nodeguard.cli.firewall:firewall_app"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LAZY and cmd_name not in self.commands:
            import importlib

            module, _, attr = self._LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


app = _LazyGroup(
    name="nodeguard",
    help="Hold a Docker host to a written security policy: audit it once (check) or keep it there (run).",
    no_args_is_help=True,
    context_settings=CONTEXT_SETTINGS,
)
policy_app = group("policy", "Work with policy files.")
app.add_command(policy_app, "policy")
app.add_command(events_app, "events")
cis_app = group("cis", "The CIS Docker Benchmark and what nodeguard does about each recommendation.")
app.add_command(cis_app, "cis")


def _err(headline: str, rest: str = "") -> None:
    """One message on stderr: the headline red on a terminal (click strips the colour elsewhere), the rest as is."""
    click.echo(click.style(headline, fg="red") + rest, err=True)


def _exit(code: ExitCode) -> NoReturn:
    raise click.exceptions.Exit(int(code))


OUTPUT_FORMATS = ("table", "json", "sarif", "junit", "ocsf")
FAIL_ON = ("low", "medium", "high", "critical")


def _load_policy_or_exit(path: Path | None) -> Policy:
    from nodeguard.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        _err("policy rejected", "\n" + exc.render())
        _exit(ExitCode.USAGE)


def _host_or_exit(path: Path) -> HostRoot:
    from nodeguard.host import HostPathError, HostRoot

    try:
        return HostRoot(path)
    except HostPathError as exc:
        _err(exc.strerror or str(exc))
        _exit(ExitCode.USAGE)


def _ids(values: Iterable[str] | None) -> list[str]:
    """`--check 2.2,2.14 --check icc` -> ["2.2", "2.14", "icc"]."""
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


def _rules_or_exit(flag: str, values: Iterable[str] | None) -> set[tuple[str, str]] | None:
    from nodeguard.catalog import rules_matching

    ids = _ids(values)
    if not ids:
        return None
    found, unknown = rules_matching(ids)
    if unknown:
        _err(f"{flag}: unknown id {', '.join(repr(u) for u in unknown)}", "; give a CIS id (2.2, 1.1), a rule "
             "id (icc, daemon-config/icc) or a control name; `nodeguard cis list` shows them")
        _exit(ExitCode.USAGE)
    return found


def write_output(path: Path, text: str | Iterable[str]) -> None:
    """Write the whole report or nothing: a temporary file in the same folder, fsynced, renamed over."""
    folder = path.parent
    import tempfile  # only for --output: ~5 ms (random, shutil) that a report to stdout never needs

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines([text] if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@app.command(cls=Command)
@setting_option(settings.HOST_ROOT)
@setting_option(settings.POLICY)
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS), default="table", show_default=True,
              help="table for people; json, sarif (2.1.0), junit (XML) or ocsf (JSON lines) for tools.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="Write the report to this file (whole or not at all) instead of stdout.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="low", show_default=True,
              help="Exit 1 only for a failing rule of this severity or above (low: any failing rule).")
@click.option("--check", "select", multiple=True,
              help="Run only these checks: CIS ids (2.2, or a section: 1.1), rule ids (icc, daemon-config/icc) or "
                   "control names; comma-separated or repeated.")
@click.option("--skip", multiple=True, help="Leave these checks out (same ids as --check).")
@click.option("--only", multiple=True, help="Run only this control (repeatable); `nodeguard cis list` names them.")
@click.option("--failed", "failed_only", is_flag=True, help="Table: show failing rules only.")
@click.option("--remediation", is_flag=True, help="Table: how to fix each failing rule.")
@click.option("--verbose", "-v", is_flag=True, help="Table: one row per skipped check, not one line per reason.")
def check(host_root: Path, policy: Path | None, output_format: str, output: Path | None, fail_on: str,
          select: tuple[str, ...], skip: tuple[str, ...], only: tuple[str, ...], failed_only: bool, remediation: bool,
          verbose: bool) -> None:
    """Audit the host once. Exit 0: nothing fails (at --fail-on); 1: a rule fails; 2: usage or policy error.

    With no Docker engine under the host root (and no --only/--check), one line says so, exit 0.
    """
    # Forked before anything heavy is imported (by nodeguard.__main__ when it can, before click):
    # it imports the Docker SDK while this process loads the policy and the controls.
    from nodeguard.api_prefetch import ForkedDaemonReader, take_early

    reader = take_early()
    if reader is None and (not only or "runtime" in only):
        reader = ForkedDaemonReader.start()
    try:
        _check(host_root, policy, output_format, output, fail_on, select, skip, only, failed_only, remediation,
               verbose, reader)
    finally:
        if reader is not None:
            reader.close()


def _check(host_root: Path, policy: Path | None, output_format: str, output: Path | None, fail_on: str,
           select: tuple[str, ...], skip: tuple[str, ...], only: tuple[str, ...], failed_only: bool,
           remediation: bool, verbose: bool, reader: ForkedDaemonReader | None) -> None:
    from nodeguard.catalog import control_names

    pol = _load_policy_or_exit(policy)
    known = set(control_names())
    for name in only or []:
        if name not in known:
            _err(f"unknown control {name!r}", f"; known: {', '.join(sorted(known))}")
            _exit(ExitCode.USAGE)
    selected = _rules_or_exit("--check", select)
    skipped = _rules_or_exit("--skip", skip) or set()
    host = _host_or_exit(host_root)
    if output is not None and not output.parent.is_dir():
        _err(f"--output: {output.parent} is not a folder")
        _exit(ExitCode.USAGE)
    if reader is not None:
        from nodeguard.selection import controls_to_run

        if "runtime" in controls_to_run(pol, wanted=set(only) or None, select=selected, skip=skipped):
            reader.request_for(host, pol)  # the daemon is read while the controls are imported
        else:
            reader.close()
            reader = None

    from nodeguard.audit import AuditReport, docker_engine_evidence, run_audit
    from nodeguard.events.resource import host_name, machine_id
    from nodeguard.report import RunInfo
    from nodeguard.structs import Severity

    info = RunInfo(str(host.root), host_name(host.root))
    explicit = bool(only or selected)
    extra: dict[str, Any] = {}
    if not explicit and not docker_engine_evidence(host, pol):
        # Docker's built-in defaults would "fail" and every file check would skip: say it once.
        message = (f"no Docker engine under {host.root} (no dockerd binary, socket, daemon.json or unit): "
                   "nothing to check")
        report = AuditReport(started=time.time(), ended=time.time())
        if output_format == "table":
            _emit(output, message + "\n")
            _exit(ExitCode.OK)
        extra = {"docker_engine": False, "message": message}
    else:
        report = run_audit(host, pol, only=list(only) or None, select=selected, skip=skipped, daemon_reader=reader)
    host_attrs = {"host.name": info.host_name}
    mid = machine_id(host.root)
    if mid:
        host_attrs["host.id"] = mid
    _emit(output, _render(report, info, output_format, host_attrs, extra, show_passed=not failed_only,
                          verbose=verbose, remediation=remediation))
    # `low` keeps the first behaviour: any failing rule fails the run, an info-severity one included.
    failing = report.failed if fail_on == "low" else report.failed_at(Severity(fail_on))
    _exit(ExitCode.FAILED if failing else ExitCode.OK)


def _emit(output: Path | None, text: str | Iterable[str]) -> None:
    if output is None:
        sys.stdout.writelines([text] if isinstance(text, str) else text)
        return
    try:
        write_output(output, text)
    except OSError as exc:
        _err(f"--output {output}: {exc.strerror or exc}")
        _exit(ExitCode.USAGE)


def _render(report: Any, info: Any, fmt: str, host_attrs: dict[str, str], extra: dict[str, Any], *,
            show_passed: bool, verbose: bool, remediation: bool) -> str | Iterable[str]:
    import json

    from nodeguard import report as rep

    if fmt == "json":
        # In pieces: a 100,000-member group's report is never one string (nor one dict) in memory.
        return rep.iter_json(report, info, extra)
    if fmt == "sarif":
        return json.dumps(rep.to_sarif(report, info), indent=2, default=str) + "\n"
    if fmt == "junit":
        return rep.to_junit(report, info)
    if fmt == "ocsf":
        return rep.to_ocsf_lines(report, host_attrs)
    import io

    from rich.console import Console

    buf = io.StringIO()
    # Rendered to a string so --output gets the same table; the terminal's width when it is one.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or None
    console = Console(file=buf, width=width, force_terminal=sys.stdout.isatty())
    rep.render_table(report, console, show_passed=show_passed, verbose=verbose, remediation=remediation)
    return buf.getvalue()


@cis_app.command("list", cls=Command)
@click.option("--format", "output_format", type=click.Choice(("table", "json")), default="table", show_default=True,
              help="table or json.")
def cis_list(output_format: str) -> None:
    """Every CIS Docker Benchmark v1.6.0 recommendation (sections 1-3) and every other nodeguard rule:
    its title, and whether nodeguard enforces it, reports it, or does not check it (and why)."""
    import json

    from nodeguard.cis import catalog_rows

    rows = catalog_rows()
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    # Plain lines, not a table: titles are long, and a line per fact greps well.
    for row in rows:
        click.echo(f"{row['id']:<8} {row['nodeguard']:<12} {row['title']}")
        detail = ", ".join(row["rules"]) or "-"
        click.echo(f"{'':<8} {'':<12} by {detail}" + (f" ({row['why']})" if row.get("why") else ""))
    counts = {k: sum(1 for r in rows if r["nodeguard"] == k) for k in ("enforce", "report", "not checked")}
    click.echo(f"{len(rows)} checks: {counts['enforce']} enforced, {counts['report']} reported, "
               f"{counts['not checked']} not checked")


@policy_app.command("validate", cls=Command)
@click.argument("file", type=click.Path(path_type=Path), cls=DocArgument, doc="The policy file to check.")
def policy_validate(file: Path) -> None:
    """Explain what is wrong with a policy file: file, line, field and why. Exit 0 valid, 2 invalid."""
    _load_policy_or_exit(file)
    click.echo(f"{file}: valid")


@policy_app.command("show", cls=Command)
@setting_option(settings.POLICY)
def policy_show(policy: Path | None) -> None:
    """Print the effective policy (the file merged over the embedded default) as JSON."""
    import msgspec

    pol = _load_policy_or_exit(policy)
    # Keys as written in a policy file (camelCase), in the models' order.
    click.echo(msgspec.json.format(msgspec.json.encode(pol), indent=2).decode())


def _least_privilege_or_exit(host_root: Path, policy: Path | None, state_dir: Path) -> None:
    """Refuse inputs others could change; then keep only the capabilities the agent needs.

    Runs before any thread starts (exporters, watchers): capabilities are per thread.
    """
    from nodeguard.privileges import (
        AGENT_CAPABILITIES,
        PrivilegeError,
        UnsafePath,
        check_not_writable_by_others,
        drop_capabilities,
    )

    log = logging.getLogger("nodeguard.privileges")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (host_root, state_dir, *([policy] if policy is not None and policy.exists() else [])):
        try:
            check_not_writable_by_others(path)
        except UnsafePath as exc:
            _err("refused:", f" {exc}")
            _exit(ExitCode.USAGE)
    try:
        after = drop_capabilities(AGENT_CAPABILITIES)
    except PrivilegeError as exc:
        log.warning("capabilities not dropped (%s); running with what the process has", exc)
        return
    missing = sorted(set(AGENT_CAPABILITIES) - set(after.permitted))
    log.info("capabilities kept: %s", ", ".join(sorted(after.permitted)) or "none")
    if missing:
        log.warning("capabilities the agent needs but was not given: %s (their remediations will fail)",
                    ", ".join(missing))


def _event_folders_safe_or_exit(*targets: str | None) -> None:
    """Refuse an events or OCSF file in a folder others can write to: they could plant a link or a FIFO there."""
    from nodeguard.privileges import UnsafePath, check_not_writable_by_others

    for target in targets:
        if not target or target == "-":
            continue
        folder = Path(os.path.abspath(target)).parent
        try:
            check_not_writable_by_others(folder)
        except UnsafePath as exc:
            _err("refused:", f" {exc}")
            _exit(ExitCode.USAGE)


_EXPORT = "Event export"


@app.command(cls=Command)
@setting_option(settings.HOST_ROOT)
@setting_option(settings.POLICY)
@setting_option(settings.MODE)
@setting_option(settings.EVENTS_FILE)
@setting_option(settings.STATE_DIR)
@setting_option(settings.LOG_LEVEL)
@setting_option(settings.METRICS_BIND_ADDRESS)
# The export flags stay None when not given: ExportOptions.from_env reads their variables.
@setting_option(settings.OTLP_ENDPOINT, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_PROTOCOL, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_HEADERS, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_CERTIFICATE, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_CLIENT_KEY, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_CLIENT_CERTIFICATE, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_INSECURE, resolve=False, panel=_EXPORT)
@setting_option(settings.OTLP_TIMEOUT, resolve=False, panel=_EXPORT)
@setting_option(settings.OCSF_FILE, resolve=False, panel=_EXPORT)
@setting_option(settings.SPOOL_MAX_BYTES, resolve=False, panel=_EXPORT)
@setting_option(settings.AGGREGATE_SECONDS, resolve=False, panel=_EXPORT)
@setting_option(settings.METRICS, resolve=False, panel=_EXPORT)
def run(
    host_root: Path, policy: Path | None, mode: str | None, events_file: str, state_dir: Path, log_level: str,
    metrics_bind_address: str | None, otlp_endpoint: str | None, otlp_protocol: settings.OtlpProtocol | None,
    otlp_headers: str | None, otlp_certificate: Path | None, otlp_client_key: Path | None,
    otlp_client_certificate: Path | None, otlp_insecure: bool | None, otlp_timeout: float | None,
    ocsf_file: str | None, spool_max_bytes: int | None, aggregate_seconds: float | None, metrics: bool | None,
) -> None:
    """Run the agent: evaluate everything, then watch the host; report drift (observe) or revert it (enforce).

    Stops cleanly on SIGTERM/SIGINT. A change made while the agent was down is reported at start.
    """
    from nodeguard.agent import run_agent
    from nodeguard.engine import EngineOptions
    from nodeguard.events import options as ev_opts
    from nodeguard.events.pipeline import build_pipeline
    from nodeguard.events.spool import SpoolBusy
    from nodeguard.policy import PolicyError
    from nodeguard.structs import Mode

    logging.getLogger().setLevel(log_level.upper())
    from nodeguard.events.prometheus import PrometheusEndpoint, parse_bind_address

    try:
        endpoint = PrometheusEndpoint(parse_bind_address(metrics_bind_address)) if metrics_bind_address else None
    except ValueError as exc:
        _err(f"--metrics-bind-address: {exc}")
        _exit(ExitCode.USAGE)
    host = _host_or_exit(host_root)
    _least_privilege_or_exit(host_root, policy, state_dir)
    options = EngineOptions(host, state_dir, policy, Mode(mode) if mode else None)
    try:
        export = ev_opts.export_options_from_flags(
            host_root=host_root, events_file=events_file, otlp_endpoint=otlp_endpoint, otlp_protocol=otlp_protocol,
            otlp_headers=otlp_headers, otlp_certificate=otlp_certificate, otlp_client_key=otlp_client_key,
            otlp_client_certificate=otlp_client_certificate, otlp_insecure=otlp_insecure, otlp_timeout=otlp_timeout,
            ocsf_file=ocsf_file, spool_max_bytes=spool_max_bytes, aggregate_seconds=aggregate_seconds, metrics=metrics)
    except ValueError as exc:  # an OTEL_*/NODEGUARD_* variable that does not parse
        _err(f"event export settings: {exc}")
        _exit(ExitCode.USAGE)
    _event_folders_safe_or_exit(export.events_file, export.ocsf_file)
    try:
        # Events are spooled durably under the state dir, then exported (OTLP, --events-file, --ocsf-file).
        sink = build_pipeline(export, state_dir, metric_readers=[endpoint.reader] if endpoint else ())
    except SpoolBusy as exc:
        _err(str(exc))
        _exit(ExitCode.USAGE)
    try:
        if endpoint is not None:
            endpoint.start()
    except OSError as exc:
        sink.close()
        _err(f"--metrics-bind-address {endpoint.address if endpoint else ''}: {exc.strerror or exc}")
        _exit(ExitCode.USAGE)
    from nodeguard.events.kube import kube_sink_from_env

    # In a cluster, each node's state also shows as a Node condition and Node Events.
    kube = kube_sink_from_env(state_dir=state_dir)
    try:
        run_agent(options, [sink] if kube is None else [sink, kube])
    except PolicyError as exc:
        _err("policy rejected and no last good policy to fall back to", "\n" + exc.render())
        _exit(ExitCode.USAGE)
    finally:
        if endpoint is not None:
            endpoint.close()


@app.command(cls=Command)
def version() -> None:
    """Print nodeguard's version."""
    click.echo(__version__)


@app.command(cls=Command)
@setting_option(settings.STATE_DIR, help="The agent's state dir, where it writes its heartbeat.")
@click.option("--max-age", type=click.FloatRange(min=1), default=DEFAULT_MAX_AGE, show_default=True,
              help="Oldest heartbeat (seconds) still healthy.")
def health(state_dir: Path, max_age: float) -> None:
    """Exit 0 when the running agent's heartbeat is fresh, 1 otherwise: the pod's exec probe."""
    from nodeguard.health import check_heartbeat

    result = check_heartbeat(state_dir, max_age)
    click.echo(result.message)
    _exit(ExitCode.OK if result.ok else ExitCode.FAILED)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
