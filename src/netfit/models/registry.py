"""Model registries: families (arch spec <-> module) and named models (name -> default arch spec)."""

from __future__ import annotations

import copy
from typing import Any, Protocol

from torch import nn

from .._registry import Registry
from ..errors import CheckpointError, NetfitError, UnsupportedLayerError


class Family(Protocol):
    """Builds modules from arch specs and reads specs back from live modules."""

    name: str

    def build(self, arch: dict) -> nn.Module: ...

    def describe(self, model: nn.Module) -> dict: ...


FAMILIES: Registry[Family] = Registry("model family")
MODELS: Registry[Any] = Registry("model")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor`` without losing more than 10% (the MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scale_width(width: int, mult: float) -> int:
    """A width times ``mult``: multiples of 8 for widths >= 16, else at least 1."""
    scaled = width * mult
    return make_divisible(scaled) if scaled >= 16 else max(1, round(scaled))


def default_arch(name: str, num_classes: int = 10, in_chans: int = 3, **overrides: Any) -> dict:
    """The arch spec of a registered model, with overrides (width_mult, depths, stem, ...)."""
    if name.startswith("timm:"):
        raise NetfitError("timm models have no netfit arch spec; use create_model")
    return MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **overrides)


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """Build a registered model (or ``timm:NAME``).

    Example:
        >>> model = create_model("resnet18_cifar", num_classes=10, in_chans=1, width_mult=0.5)
    """
    if name.startswith("timm:"):
        from .timm_bridge import create_timm_model

        return create_timm_model(name[5:], num_classes=num_classes, in_chans=in_chans, **overrides)
    if num_classes < 1 or in_chans < 1:
        raise NetfitError(f"num_classes and in_chans must be positive (got {num_classes}, {in_chans})")
    try:
        arch = default_arch(name, num_classes, in_chans, **overrides)
    except TypeError as e:
        raise NetfitError(f"bad option for model {name!r}: {e}") from e
    model = build_model(arch)
    model.netfit_name = name
    return model


def list_models(filter: str = "*") -> list[str]:
    return MODELS.list(filter)


def build_model(arch: dict) -> nn.Module:
    """Rebuild a model from its arch spec; an invalid spec raises ``CheckpointError`` saying what is wrong."""
    if not isinstance(arch, dict) or "family" not in arch:
        raise CheckpointError("invalid arch spec: expected a JSON object with a 'family' key")
    family = FAMILIES.get(arch["family"])
    try:
        return family.build(copy.deepcopy(arch))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"invalid arch spec for family {arch['family']!r}: {type(e).__name__}: {e}") from e


def arch_of(model: nn.Module) -> dict:
    """The arch spec of a live model, read from its layers (so a sliced model gives its own spec)."""
    family = getattr(model, "family", "")
    if family and family in FAMILIES:
        return FAMILIES.get(family).describe(model)
    if "graph" in FAMILIES:
        return FAMILIES.get("graph").describe(model)
    raise UnsupportedLayerError(f"{type(model).__name__} has no arch spec; only built-in and fx-traceable models do")


def require_positive(arch: dict, *paths: str) -> None:
    """Check that the named integer fields of a spec are positive."""
    for path in paths:
        value = arch
        for key in path.split("."):
            value = value[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{path} must be a positive integer, got {value!r}")
