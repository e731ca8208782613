"""The policy's defaults have one source: the embedded YAML. The models carry no second copy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

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
    (model, name) for model in (FileRequirement, FirewallPort) for name in model.model_fields}


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if model in seen:
        return seen
    seen.add(model)
    for info in model.model_fields.values():
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _models(arg, seen)
    return seen


def _owner(model: type[BaseModel], name: str) -> type[BaseModel]:
    return next(base for base in model.__mro__ if name in getattr(base, "__annotations__", {}))


def test_no_policy_model_has_a_default_of_its_own() -> None:
    models = _models(Policy, set())
    assert len(models) > 20  # every control's model was reached
    with_default = sorted(
        f"{model.__name__}.{name}" for model in models for name, info in model.model_fields.items()
        if (info.default is not PydanticUndefined or info.default_factory is not None)
        and (_owner(model, name), name) not in ALLOWED)
    assert with_default == []


def test_the_embedded_default_names_every_setting() -> None:
    # Loading it validates it with every field required: a setting missing from the YAML fails here.
    policy = load_policy()
    assert policy.metadata.name == "cis-default"
    assert "allowedCgroupParents" in default_policy_text()


def test_the_chart_example_does_not_disagree() -> None:
    assert (REPO / "config/policy.yaml").read_text(encoding="utf-8") == default_policy_text()
