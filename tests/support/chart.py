"""The Helm chart rendered by Helm's own engine, in-process (helm-python-sdk: Helm v4 as a library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "nodeguard"
RELEASE = "ng"
NAMESPACE = "nodeguard"


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """{template path: [objects]}, as `helm template` would print them; NOTES.txt as one text object."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    out: dict[str, list[dict[str, Any]]] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            out[path] = [{"kind": "NOTES", "text": text}]
            continue
        out[path] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [o for docs in render(values).values() for o in docs if o.get("kind") != "NOTES"]


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} objects named *{name_suffix}"
    return found[0]


def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def host_mounts(daemonset: dict[str, Any]) -> dict[str, str]:
    """{mountPath in the container: hostPath on the node} for every hostPath volume."""
    pod = daemonset["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    return {m["mountPath"]: host_paths[m["name"]] for m in container(daemonset)["volumeMounts"]
            if m["name"] in host_paths}
