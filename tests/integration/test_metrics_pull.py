"""`nodeguard run --metrics-bind-address`: a real agent process serving Prometheus metrics, scraped
over real HTTP on the loopback of the network namespace the agent runs in (never this machine's
own), and parsed by prometheus_client's own text-format parser, the one Prometheus' Python tooling
uses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent import is_event, running_agent
from tests.support.sandbox import DOCKER_GID, Sandbox, require_root

pytestmark = [pytest.mark.root]

PORT = 9464
SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    name = f"ngm-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def scrape(netns: str, url: str = f"http://127.0.0.1:{PORT}/metrics") -> str:
    """One HTTP GET from inside the agent's network namespace, as a scraper on the node would."""
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", SCRAPE, url],
                          capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    """The one sample named `name` whose labels include `labels` (None: no such sample)."""
    hits = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) <= 1, f"{len(hits)} samples of {name} match {labels}"
    return hits[0] if hits else None


def wait_for_value(netns: str, expected: float, name: str, timeout: float = 15.0, **labels: str) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        found = samples(scrape(netns))
        if value(found, name, **labels) == expected:
            return found
        assert time.monotonic() < deadline, f"{name}{labels} = {value(found, name, **labels)}, not {expected}"
        time.sleep(0.2)


def write_policy(path: Path, mode: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # renamed over, as an editor or the kubelet would
    tmp.write_text(f"apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\nspec:\n  mode: {mode}\n")
    tmp.chmod(0o644)
    os.rename(tmp, path)


def test_open_drift_gauge_goes_from_one_to_zero_when_the_agent_reverts(sandbox: Sandbox, tmp_path: Path,
                                                                        netns: str) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir(mode=0o755)
    policy = policy_dir / "policy.yaml"
    write_policy(policy, "observe")
    sock_path = sandbox.path("/run/docker.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        os.chown(sock_path, 0, DOCKER_GID)
        sock_path.chmod(0o660)
        with running_agent(sandbox.root, tmp_path / "state", "--policy", str(policy),
                           "--metrics-bind-address", f"127.0.0.1:{PORT}",
                           # A collector that is down (nothing listens in the namespace): export failures.
                           "--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-protocol", "http/protobuf",
                           "--otlp-timeout", "1", netns=netns,
                           env={"NODE_NAME": "node-a", "POD_UID": "6f1c2a9e-0000-4000-8000-000000000001"}) as agent:
            # Bound where asked, and only there.
            listening = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", "ss", "-Hltn"],
                                       capture_output=True, text=True, check=True).stdout.split()
            assert f"127.0.0.1:{PORT}" in listening and f"0.0.0.0:{PORT}" not in listening

            mark = agent.mark()
            sock_path.chmod(0o666)  # observe mode: reported, left as it is
            agent.wait_for(is_event("nodeguard.drift.detected", "socket-mode"), after=mark)
            open_now = wait_for_value(netns, 1.0, "nodeguard_open_drifts",
                                      control="socket", rule="socket-mode", severity="critical")
            assert (value(open_now, "nodeguard_drift_events_total", nodeguard_control="socket",
                          nodeguard_outcome="detected") or 0) >= 1
            assert value(open_now, "nodeguard_drift_events_total", nodeguard_control="socket",
                         nodeguard_outcome="reverted") is None

            mark = agent.mark()
            write_policy(policy, "enforce")  # hot reload: the agent now reverts what it reported
            agent.wait_for(is_event("nodeguard.drift.reverted", "socket-mode"), after=mark)
            assert sock_path.stat().st_mode & 0o777 == 0o660
            after = wait_for_value(netns, 0.0, "nodeguard_open_drifts",
                                   control="socket", rule="socket-mode", severity="critical")
            assert value(after, "nodeguard_drift_events_total", nodeguard_control="socket",
                         nodeguard_outcome="reverted") == 1.0

            # The rest of the contract: reconcile durations, the spool's depth, and who is speaking.
            assert (value(after, "nodeguard_reconcile_duration_seconds_count", nodeguard_control="socket")
                    or 0) >= 2
            assert value(after, "nodeguard_spool_depth", nodeguard_exporter="events-file") is not None
            assert (value(after, "nodeguard_spool_depth", nodeguard_exporter="otlp") or 0) >= 1  # undelivered
            # A failed attempt is counted when it ends (the exporter's own retries run first).
            deadline = time.monotonic() + 15
            while (value(samples(scrape(netns)), "nodeguard_export_failures_total", nodeguard_exporter="otlp")
                   or 0) < 1:
                assert time.monotonic() < deadline, "no OTLP export failure counted in 15 s"
                time.sleep(0.2)
            target = value(after, "target_info", service_instance_id="node-a", k8s_node_name="node-a",
                           k8s_pod_uid="6f1c2a9e-0000-4000-8000-000000000001")
            assert target == 1.0
    text = agent.stderr()
    assert "serving Prometheus metrics on http://127.0.0.1:9464/metrics" in text


def test_a_bad_bind_address_is_refused_before_anything_starts(sandbox: Sandbox, tmp_path: Path) -> None:
    for bad, why in (("9464", "expected HOST:PORT"), ("127.0.0.1:http", "port must be a number"),
                     ("$(POD_IP):9464", "unexpanded")):
        proc = subprocess.run([sys.executable, "-m", "nodeguard", "run", "--host-root", str(sandbox.root),
                               "--state-dir", str(tmp_path / "state"), "--metrics-bind-address", bad],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert why in proc.stderr, (bad, proc.stderr)
    assert not (tmp_path / "state").exists()  # refused before the agent touched anything


def test_an_address_the_node_does_not_have_is_refused_clearly(sandbox: Sandbox, tmp_path: Path, netns: str) -> None:
    """The pod IP of another node (a stale value): bind fails, the agent says why and exits 2."""
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-m", "nodeguard", "run",
                           "--host-root", str(sandbox.root), "--state-dir", str(tmp_path / "state"),
                           "--events-file", str(tmp_path / "events.jsonl"),
                           "--metrics-bind-address", "192.0.2.1:9464"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--metrics-bind-address 192.0.2.1:9464: Cannot assign requested address" in proc.stderr
