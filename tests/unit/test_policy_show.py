"""`nodeguard policy show`: the effective policy as JSON, with the keys and the order a policy file uses."""

from __future__ import annotations

import json
from pathlib import Path

from nodeguard.policy import API_VERSION, KIND, load_policy
from tests.support.cli import run_nodeguard


def test_show_prints_the_effective_policy_as_a_file_would_write_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(f"apiVersion: {API_VERSION}\nkind: {KIND}\nspec:\n  agent: {{resyncSeconds: 30}}\n"
                    "  controls: {firewall: {ports: [{port: 2376, allow: ['10.1.2.3/8']}]}}\n")
    proc = run_nodeguard("policy", "show", "--policy", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('{\n  "apiVersion": "nodeguard.io/v1alpha1",\n  "kind": "NodeGuardPolicy",\n')
    shown = json.loads(proc.stdout)
    assert list(shown) == ["apiVersion", "kind", "metadata", "spec"]
    # A control's shared settings first, then its own, in the order the models name them.
    assert list(shown["spec"]["controls"]["daemonConfig"])[:4] == ["mode", "rules", "path", "allowedInsecureRegistries"]
    assert shown["spec"]["agent"]["resyncSeconds"] == 30.0
    # Values as validated: the network normalised, the list item's defaults filled in.
    assert shown["spec"]["controls"]["firewall"]["ports"] == [{"port": 2376, "allow": ["10.0.0.0/8"], "action": "drop"}]
    # What it prints is itself a policy file (JSON is YAML): read back, the same policy.
    again = tmp_path / "shown.json"
    again.write_text(proc.stdout)
    assert load_policy(again) == load_policy(path)
