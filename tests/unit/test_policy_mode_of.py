"""Policy.mode_of: the one answer to "is this control (or rule) off, observed or enforced"."""

from __future__ import annotations

import pytest

from nodeguard.controls import all_controls
from nodeguard.policy import parse_policy
from nodeguard.structs import Mode

HEAD = "apiVersion: nodeguard.io/v1alpha1\nkind: NodeGuardPolicy\n"


def test_mode_of_a_control_and_its_rules() -> None:
    pol = parse_policy(HEAD + """spec:
  mode: enforce
  controls:
    socket:
      mode: observe
      rules:
        socket-acl: enforce
    dockerGroup:
      mode: off
      rules:
        member-allowed: enforce
    runtime:
      rules:
        privileged: off
""")
    assert pol.mode_of("socket") is Mode.OBSERVE
    assert pol.mode_of("socket", "socket-acl") is Mode.ENFORCE
    assert pol.mode_of("socket", "socket-mode") is Mode.OBSERVE
    assert pol.mode_of("dockerGroup") is Mode.OFF
    assert pol.mode_of("dockerGroup", "member-allowed") is Mode.OFF  # a control that is off has every rule off
    assert pol.mode_of("runtime") is Mode.ENFORCE  # unset: spec.mode
    assert pol.mode_of("runtime", "privileged") is Mode.OFF
    assert pol.with_mode(Mode.OFF).mode_of("runtime") is Mode.OFF


def test_every_control_is_found_by_its_policy_key() -> None:
    pol = parse_policy(HEAD)
    for control in all_controls():
        assert pol.control(control.policy_key) is control.settings(pol)
        assert pol.mode_of(control.policy_key) is control.rule_mode(pol, "")
    with pytest.raises(KeyError):
        pol.control("noSuchControl")
