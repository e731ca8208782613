"""`nodeguard firewall show | apply | remove`: nodeguard's own netfilter rules, by hand.

The agent keeps the rules in place; these commands are for people: see what is there and why
this backend, put the rules in place once (e.g. before the agent's first start), and take them
away on purpose (uninstall). Stopping the agent never removes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nodeguard import settings
from nodeguard.cli.flags import Command, group, setting_option
from nodeguard.exit_codes import ExitCode
from nodeguard.host import HostRoot
from nodeguard.netfilter.backend import BackendError
from nodeguard.netfilter.model import Desired
from nodeguard.netfilter.select import Selection, backend_for, legacy_usable, nft_usable, select_backend, writes_refused
from nodeguard.policy import FirewallPolicy

firewall_app = group("firewall", "nodeguard's own firewall rules: show, apply, remove.")

host_root_option = setting_option(
    settings.HOST_ROOT, help="Where the host's filesystem is (its /run/xtables.lock is used).")
policy_option = setting_option(settings.POLICY, help="Policy YAML (its firewall section).")


def _selection(host_root: Path, policy: Path | None) -> tuple[HostRoot, FirewallPolicy, Selection]:
    from nodeguard.cli import _host_or_exit, _load_policy_or_exit

    pol = _load_policy_or_exit(policy)
    host = _host_or_exit(host_root)
    fw = pol.spec.controls.firewall
    return host, fw, select_backend(fw.backend, host)


@firewall_app.command("show", cls=Command)
@host_root_option
@policy_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(host_root: Path, policy: Path | None, as_json: bool) -> None:
    """Which backend, why, and nodeguard's rules as the kernel holds them. Exit 1 when they differ from the policy."""
    _, fw, sel = _selection(host_root, policy)
    if sel.backend is None:
        click.echo(f"no firewall backend: {sel.reason}", err=True)
        raise click.exceptions.Exit(ExitCode.USAGE)
    state = sel.backend.read_state()
    desired = Desired.from_policy(fw)
    in_place = sel.backend.in_place(desired, state)
    if as_json:
        out = {"backend": sel.name, "reason": sel.reason, "where": sel.backend.describe(), "in_place": in_place,
               "error": state.error, "state": state.render(),
               "desired": [f"{c.where}: " + ", ".join(r.render() for r in c.rules)
                           for c in sel.backend.desired_chains(desired)]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        click.echo(f"backend: {sel.name} ({sel.reason})")
        click.echo(f"where:   {sel.backend.describe()}")
        if state.error:
            click.echo(f"error:   {state.error}")
        for line in state.render():
            click.echo(f"  {line}")
        click.echo("in place: yes" if in_place else "in place: NO (differs from the policy)")
    raise click.exceptions.Exit(ExitCode.OK if in_place else ExitCode.FAILED)


@firewall_app.command("apply", cls=Command)
@host_root_option
@policy_option
def apply(host_root: Path, policy: Path | None) -> None:
    """Put the policy's rules in place now (idempotent: nothing is written when they already are)."""
    host, fw, sel = _selection(host_root, policy)
    if sel.backend is None:
        click.echo(f"no firewall backend: {sel.reason}", err=True)
        raise click.exceptions.Exit(ExitCode.USAGE)
    _refuse_or_continue(host)
    try:
        changed = sel.backend.apply(Desired.from_policy(fw))
    except BackendError as exc:
        click.echo(f"{sel.name}: {exc}", err=True)
        raise click.exceptions.Exit(ExitCode.FAILED) from None
    click.echo(f"{sel.name}: {'applied' if changed else 'already in place'} ({sel.backend.describe()})")


@firewall_app.command("remove", cls=Command)
@host_root_option
@policy_option
def remove(host_root: Path, policy: Path | None) -> None:
    """Remove nodeguard's rules from every backend that holds them (uninstall). Nothing else is touched.

    Run it after the agent is gone: a running agent in enforce mode puts them back.
    """
    from nodeguard.cli import _host_or_exit, _load_policy_or_exit

    _load_policy_or_exit(policy)
    host = _host_or_exit(host_root)
    _refuse_or_continue(host)
    candidates = []
    if nft_usable_ok():
        candidates += ["nftables", "iptables-nft"]
    if legacy_usable()[0]:
        candidates.append("iptables-legacy")
    failed = False
    for name in candidates:
        backend = backend_for(name, host)
        try:
            removed = backend.remove()
        except BackendError as exc:
            # iptables-nft tools may be missing on an nft-only host: that backend holds nothing then.
            click.echo(f"{name}: not removed: {exc}", err=True)
            failed = failed or name != "iptables-nft"
            continue
        click.echo(f"{name}: {'removed ' + backend.describe() if removed else 'nothing of nodeguard there'}")
    raise click.exceptions.Exit(ExitCode.FAILED if failed else ExitCode.OK)


def nft_usable_ok() -> bool:
    from nodeguard.netfilter.libnft import shared_nft

    return nft_usable(shared_nft())[0]


def _refuse_or_continue(host: HostRoot) -> None:
    refused = writes_refused(host)
    if refused is not None:
        click.echo(refused, err=True)
        raise click.exceptions.Exit(ExitCode.USAGE)
