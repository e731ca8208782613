"""One observation per pass: each host surface is read once, shared through the context, and read
again by a new pass, by the look that verifies a revert, and after a control wrote it."""

from __future__ import annotations

import json
import os

from nodeguard.audit import run_audit
from nodeguard.controls import all_controls
from nodeguard.controls.base import Context
from nodeguard.controls.daemon_config import DaemonConfigControl
from nodeguard.host import HostPathError
from nodeguard.observations import Surface
from nodeguard.policy import load_policy
from nodeguard.structs import Mode, Status
from tests.support.passcount import CountingHost
from tests.support.rules import EMPTY_PROC
from tests.support.sandbox import Sandbox

DAEMON_JSON = "/etc/docker/daemon.json"
# Controls that dump netfilter: the machine's own here, so they run in a namespace
# (tests/integration/test_observations_netns.py) and not in this process.
NETFILTER_CONTROLS = {"firewall", "listeners"}


def test_one_check_pass_reads_daemon_json_the_pid_file_and_group_once(sandbox: Sandbox) -> None:
    sandbox.write(DAEMON_JSON, json.dumps({"icc": False, "log-level": "info", "data-root": "/var/lib/docker"}))
    policy = load_policy()
    # The data root and a mount table in the host root: the host and host-layout controls both
    # look the data root up in it.
    sandbox.path("/var/lib/docker").mkdir(parents=True, exist_ok=True)
    mountinfo = policy.spec.controls.host_layout.mountinfo
    sandbox.write(mountinfo, "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n60 22 8:2 / /var/lib/docker rw - xfs /dev/sdb1 rw\n")
    host = CountingHost(sandbox.root)
    controls = [c for c in all_controls() if c.name not in NETFILTER_CONTROLS]
    report = run_audit(host, policy, proc=EMPTY_PROC, controls=controls)
    names = [r.control.name for r in report.results]
    # Every control that needs the effective daemon configuration took part.
    assert {"daemon-config", "daemon-files", "runtime", "host", "host-layout", "host-audit"} <= set(names)
    assert [r.error for r in report.results if r.error] == []
    assert host.reads[DAEMON_JSON] == 1, host.reads
    assert host.reads[policy.spec.daemon.pid_file] == 1, host.reads
    assert host.reads["/etc/group"] == 1, host.reads
    assert host.reads[mountinfo] == 1, host.reads
    layout = next(r for r in report.results if r.control.name == "host-layout")
    assert [f.status for f in layout.findings] == [Status.PASS], layout.findings


def test_the_context_shares_a_surface_and_a_new_pass_reads_it_again(sandbox: Sandbox) -> None:
    sandbox.write(DAEMON_JSON, '{"icc": true}')
    ctx = Context(CountingHost(sandbox.root), load_policy(), EMPTY_PROC)
    first = ctx.daemon_config
    assert DaemonConfigControl().observe(ctx) is first is ctx.daemon_config
    assert ctx.observed.reads[Surface.DAEMON_CONFIG] == 1
    assert ctx.observed.reads[Surface.DAEMON] == 1  # the daemon lookup, shared too

    sandbox.write(DAEMON_JSON, '{"icc": false}')
    assert ctx.daemon_config.config == {"icc": True}  # the same pass keeps what it saw
    fresh = Context(ctx.host, ctx.policy, EMPTY_PROC)
    assert fresh.daemon_config.config == {"icc": False}


def test_a_revert_makes_the_rest_of_the_pass_read_daemon_json_again(sandbox: Sandbox) -> None:
    sandbox.write(DAEMON_JSON, '{"icc": true}\n')
    policy = load_policy().with_mode(Mode.ENFORCE)
    ctx = Context(CountingHost(sandbox.root), policy, EMPTY_PROC)
    control = DaemonConfigControl()
    observed = control.observe(ctx)
    icc = [f for f in control.evaluate(observed, policy) if f.rule == "icc"]
    assert icc[0].status is Status.FAIL
    [outcome] = control.remediate_many(ctx, icc, observed)
    assert outcome.changed and outcome.ok, outcome.message
    # A control later in the pass (daemon-files, runtime) sees the file as the revert left it.
    assert ctx.daemon_config.config == {"icc": False}
    assert ctx.observed.reads[Surface.DAEMON_CONFIG] == 2


def test_a_surface_that_cannot_be_read_is_one_error_for_every_asker(sandbox: Sandbox) -> None:
    # /etc/docker loops on itself: daemon.json cannot be reached.
    sandbox.path("/etc/docker").rmdir()
    os.symlink("/etc/docker", sandbox.path("/etc/docker"))
    ctx = Context(CountingHost(sandbox.root), load_policy(), EMPTY_PROC)
    errors = []
    for _ in range(2):
        try:
            _ = ctx.daemon_config
        except (HostPathError, OSError) as exc:
            errors.append(exc)
    assert len(errors) == 2 and errors[0] is errors[1]
    assert ctx.observed.reads[Surface.DAEMON_CONFIG] == 1
