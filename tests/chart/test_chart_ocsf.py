"""The chart's `events.ocsf.enabled`: OCSF findings on a file of their own, JSON lines still on stdout."""

from __future__ import annotations

from tests.support.chart import container, objects, one


def test_ocsf_is_off_by_default_and_on_its_own_file_when_enabled() -> None:
    default = container(one(objects(), "DaemonSet"))
    assert "NODEGUARD_OCSF_FILE" not in {e["name"] for e in default["env"]}
    enabled = container(one(objects({"events": {"ocsf": {"enabled": True}}}), "DaemonSet"))
    env = {e["name"]: e.get("value") for e in enabled["env"]}
    # In the state dir's hostPath: on the node, /var/lib/nodeguard/ocsf.jsonl, for a log shipper.
    assert env["NODEGUARD_OCSF_FILE"] == "/host/var/lib/nodeguard/ocsf.jsonl"
    assert any(m["mountPath"] == "/host/var/lib/nodeguard" for m in enabled["volumeMounts"])
    args = enabled["args"]
    assert args[args.index("--events-file") + 1] == "-"  # the JSON-lines events stay on stdout
