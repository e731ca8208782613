"""One `check` pass against a real dockerd in a network namespace reads daemon.json once and dumps
netfilter once, although the daemon-config, daemon-files, runtime, host and listeners controls all
use the daemon's configuration and the firewall and listeners controls both judge nodeguard's chains."""

from __future__ import annotations

import pytest

from tests.support.dockerd import running_dockerd
from tests.support.netns import in_netns, netns
from tests.support.passcount import one_check_pass
from tests.support.sandbox import Sandbox

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.dockerd]


def test_one_check_pass_reads_daemon_json_once_and_dumps_netfilter_once(sandbox: Sandbox) -> None:
    with netns("observe") as ns, \
            running_dockerd(sandbox, {"icc": False, "live-restore": True}, netns=ns,
                            hosts=["tcp://127.0.0.1:23750"]) as d:
        assert d.info()["LiveRestoreEnabled"] is True
        seen = in_netns(ns, one_check_pass, str(sandbox.root))
    assert seen["errors"] == {}
    assert {"daemon-config", "daemon-files", "runtime", "firewall", "listeners", "host"} <= set(seen["controls"])
    assert seen["reads"][seen["daemon_json"]] == 1, seen["reads"]
    assert seen["reads"][seen["pid_file"]] == 1, seen["reads"]
    assert seen["reads"]["/etc/group"] == 1, seen["reads"]
    assert seen["dumps"] == 1
    # The shared observations were the real ones: the daemon was found by its flags, and both
    # netfilter controls judged the namespace's (empty) netfilter.
    by_rule = {(f["control"], f["rule"], f.get("subject")): f for f in seen["findings"]}
    tcp = by_rule[("daemon-config", "tcp-host-tls", None)]
    assert tcp["status"] == "fail" and tcp["details"]["source"] == "flag"
    assert by_rule[("firewall", "backend-available", None)]["status"] == "pass"
    unguarded = by_rule[("listeners", "listener-firewalled", "127.0.0.1:23750")]
    assert unguarded["status"] == "fail"
