"""The policy's defaults have one source: the embedded YAML. The models carry no second copy."""

from __future__ import annotations

from pathlib import Path

import msgspec
import msgspec.inspect

from nodeguard.policy import (
    ControlPolicy,
    FileRequirement,
    FirewallPort,
    Policy,
    default_policy_text,
    load_policy,
)

REPO = Path(__file__).resolve().parents[2]
# Not policy values (see the comment above nodeguard.policy._Strict): "unset, inherit" and list items.
ALLOWED = {(ControlPolicy, "mode"), (ControlPolicy, "rules")} | {
    (model, f.name) for model in (FileRequirement, FirewallPort) for f in msgspec.structs.fields(model)}


def _models(t: msgspec.inspect.Type, seen: set[type[msgspec.Struct]]) -> set[type[msgspec.Struct]]:
    """Every Struct type reachable from `t`: fields, list items, dict values, optionals."""
    if isinstance(t, msgspec.inspect.StructType):
        if t.cls in seen:
            return seen
        seen.add(t.cls)
        for f in t.fields:
            _models(f.type, seen)
    elif isinstance(t, msgspec.inspect.ListType):
        _models(t.item_type, seen)
    elif isinstance(t, msgspec.inspect.DictType):
        _models(t.value_type, seen)
    elif isinstance(t, msgspec.inspect.UnionType):
        for arm in t.types:
            _models(arm, seen)
    return seen


def _owner(model: type[msgspec.Struct], name: str) -> type[msgspec.Struct]:
    return next(base for base in model.__mro__ if name in getattr(base, "__annotations__", {}))


def test_no_policy_model_has_a_default_of_its_own() -> None:
    models = _models(msgspec.inspect.type_info(Policy), set())
    assert len(models) > 20  # every control's model was reached
    with_default = sorted(
        f"{model.__name__}.{f.name}" for model in models for f in msgspec.structs.fields(model)
        if not f.required and (_owner(model, f.name), f.name) not in ALLOWED)
    assert with_default == []


def test_the_embedded_default_names_every_setting() -> None:
    # Loading it validates it with every field required: a setting missing from the YAML fails here.
    policy = load_policy()
    assert policy.metadata.name == "cis-default"
    assert "allowedCgroupParents" in default_policy_text()


def test_the_chart_example_does_not_disagree() -> None:
    assert (REPO / "config/policy.yaml").read_text(encoding="utf-8") == default_policy_text()
