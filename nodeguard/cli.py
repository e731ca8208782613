"""The `nodeguard` command: check (one-shot audit), run (the agent), policy, version."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from nodeguard._version import __version__
from nodeguard.audit import run_audit
from nodeguard.cli_events import events_app
from nodeguard.cli_firewall import firewall_app
from nodeguard.controls import control_names
from nodeguard.events import options as ev_opts
from nodeguard.host import HostPathError, HostRoot
from nodeguard.policy import Policy, PolicyError, load_policy
from nodeguard.report import render_table, to_json
from nodeguard.structs import Mode

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="nodeguard",
    help="Hold a Docker host to a written security policy: audit it once (check) or keep it there (run).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Work with policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(firewall_app, name="firewall")
app.add_typer(events_app, name="events")

# soft_wrap: one "file:line: field: why" per line, whatever the terminal width, so it can be grepped.
err = Console(stderr=True, soft_wrap=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


HostRootOpt = Annotated[
    Path,
    typer.Option("--host-root", envvar="NODEGUARD_HOST_ROOT",
                 help="Where the host's filesystem is: / from a shell, /host in a pod.", show_default=True),
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", envvar="NODEGUARD_POLICY",
                 help="Policy YAML; names only what it changes from the embedded CIS default."),
]


def _load_policy_or_exit(path: Path | None) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        err.print(f"[red]policy rejected[/]\n{exc.render()}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


def _host_or_exit(path: Path) -> HostRoot:
    try:
        return HostRoot(path)
    except HostPathError as exc:
        err.print(f"[red]{exc.strerror}[/]")
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def check(
    host_root: HostRootOpt = Path("/"),
    policy: PolicyOpt = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="table for people, json for tools.")] = (
        OutputFormat.table),
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"Run only this control (repeatable): {', '.join(control_names())}.")] = None,
    failed_only: Annotated[bool, typer.Option("--failed", help="Table: show failing rules only.")] = False,
) -> None:
    """Audit the host once against the policy. Exit 0: nothing fails; 1: a rule fails; 2: usage or policy error."""
    pol = _load_policy_or_exit(policy)
    known = set(control_names())
    for name in only or []:
        if name not in known:
            err.print(f"[red]unknown control {name!r}[/]; known: {', '.join(sorted(known))}")
            raise typer.Exit(EXIT_USAGE)
    host = _host_or_exit(host_root)
    report = run_audit(host, pol, only=only)
    if output_format is OutputFormat.json:
        sys.stdout.write(json.dumps(to_json(report, str(host.root)), indent=2, default=str) + "\n")
    else:
        render_table(report, Console(), show_passed=not failed_only)
    raise typer.Exit(EXIT_FAILED if report.failed else EXIT_OK)


@policy_app.command("validate")
def policy_validate(
    file: Annotated[Path, typer.Argument(help="The policy file to check.")],
) -> None:
    """Explain what is wrong with a policy file: file, line, field and why. Exit 0 valid, 2 invalid."""
    _load_policy_or_exit(file)
    typer.echo(f"{file}: valid")


@policy_app.command("show")
def policy_show(policy: PolicyOpt = None) -> None:
    """Print the effective policy (the file merged over the embedded default) as JSON."""
    pol = _load_policy_or_exit(policy)
    typer.echo(pol.model_dump_json(by_alias=True, indent=2))


class RunMode(StrEnum):
    observe = "observe"
    enforce = "enforce"


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
            err.print(f"[red]refused:[/] {exc}")
            raise typer.Exit(EXIT_USAGE) from None
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


@app.command()
def run(
    host_root: HostRootOpt = Path("/"),
    policy: PolicyOpt = None,
    mode: Annotated[RunMode | None, typer.Option(
        "--mode", envvar="NODEGUARD_MODE",
        help="Override the policy's spec.mode for every control (rules set explicitly keep theirs).")] = None,
    events_file: Annotated[str, typer.Option(
        "--events-file", envvar="NODEGUARD_EVENTS_FILE",
        help="Append each event as one JSON line to this file; - for stdout.")] = "-",
    state_dir: Annotated[Path, typer.Option(
        "--state-dir", envvar="NODEGUARD_STATE_DIR",
        help="Last observed state, last good files, quarantined files.")] = Path("/var/lib/nodeguard"),
    log_level: Annotated[str, typer.Option("--log-level", envvar="NODEGUARD_LOG_LEVEL",
                                           help="debug, info, warning, error.")] = "info",
    otlp_endpoint: ev_opts.OtlpEndpointOpt = None,
    otlp_protocol: ev_opts.OtlpProtocolOpt = None,
    otlp_headers: ev_opts.OtlpHeadersOpt = None,
    otlp_certificate: ev_opts.OtlpCertificateOpt = None,
    otlp_client_key: ev_opts.OtlpClientKeyOpt = None,
    otlp_client_certificate: ev_opts.OtlpClientCertificateOpt = None,
    otlp_insecure: ev_opts.OtlpInsecureOpt = None,
    otlp_timeout: ev_opts.OtlpTimeoutOpt = None,
    ocsf_file: ev_opts.OcsfFileOpt = None,
    spool_max_bytes: ev_opts.SpoolMaxBytesOpt = None,
    aggregate_seconds: ev_opts.AggregateSecondsOpt = None,
    metrics: ev_opts.MetricsOpt = None,
    metrics_bind_address: Annotated[str | None, typer.Option(
        "--metrics-bind-address", envvar="NODEGUARD_METRICS_BIND_ADDRESS",
        help="Serve Prometheus metrics on HOST:PORT (plain HTTP, no auth; off by default).")] = None,
) -> None:
    """Run the agent: evaluate everything, then watch the host; report drift (observe) or revert it (enforce).

    Stops cleanly on SIGTERM/SIGINT. A change made while the agent was down is reported at start.
    """
    from nodeguard.agent import run_agent
    from nodeguard.engine import EngineOptions
    from nodeguard.events.pipeline import build_pipeline
    from nodeguard.events.spool import SpoolBusy

    logging.getLogger().setLevel(log_level.upper())
    from nodeguard.events.prometheus import PrometheusEndpoint, parse_bind_address

    try:
        endpoint = PrometheusEndpoint(parse_bind_address(metrics_bind_address)) if metrics_bind_address else None
    except ValueError as exc:
        err.print(f"[red]--metrics-bind-address: {exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    host = _host_or_exit(host_root)
    _least_privilege_or_exit(host_root, policy, state_dir)
    options = EngineOptions(host, state_dir, policy, Mode(mode.value) if mode else None)
    try:
        export = ev_opts.export_options_from_flags(
            host_root=host_root, events_file=events_file, otlp_endpoint=otlp_endpoint, otlp_protocol=otlp_protocol,
            otlp_headers=otlp_headers, otlp_certificate=otlp_certificate, otlp_client_key=otlp_client_key,
            otlp_client_certificate=otlp_client_certificate, otlp_insecure=otlp_insecure, otlp_timeout=otlp_timeout,
            ocsf_file=ocsf_file, spool_max_bytes=spool_max_bytes, aggregate_seconds=aggregate_seconds, metrics=metrics)
    except ValueError as exc:  # an OTEL_*/NODEGUARD_* variable that does not parse
        err.print(f"[red]event export settings: {exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    try:
        # Events are spooled durably under the state dir, then exported (OTLP, --events-file, --ocsf-file).
        sink = build_pipeline(export, state_dir, metric_readers=[endpoint.reader] if endpoint else ())
    except SpoolBusy as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    try:
        if endpoint is not None:
            endpoint.start()
    except OSError as exc:
        sink.close()
        err.print(f"[red]--metrics-bind-address {endpoint.address if endpoint else ''}: {exc.strerror or exc}[/]")
        raise typer.Exit(EXIT_USAGE) from None
    from nodeguard.kube import kube_sink_from_env

    # In a cluster, each node's state also shows as a Node condition and Node Events.
    kube = kube_sink_from_env(state_dir=state_dir)
    try:
        run_agent(options, [sink] if kube is None else [sink, kube])
    except PolicyError as exc:
        err.print(f"[red]policy rejected and no last good policy to fall back to[/]\n{exc.render()}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    finally:
        if endpoint is not None:
            endpoint.close()


@app.command()
def version() -> None:
    """Print nodeguard's version."""
    typer.echo(__version__)


@app.command()
def health(
    state_dir: Annotated[Path, typer.Option("--state-dir", envvar="NODEGUARD_STATE_DIR",
                                            help="The agent's state dir, where it writes its heartbeat.")] = (
        Path("/var/lib/nodeguard")),
    max_age: Annotated[float, typer.Option("--max-age", min=1, help="Oldest heartbeat (seconds) still healthy.")] = (
        180.0),
) -> None:
    """Exit 0 when the running agent's heartbeat is fresh, 1 otherwise: the pod's exec probe."""
    from nodeguard.health import check_heartbeat

    result = check_heartbeat(state_dir, max_age)
    typer.echo(result.message)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
