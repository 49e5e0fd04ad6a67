"""Pieces shared by methods: fine-tuning a candidate (optionally distilled from the seed) and budget checks."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..budget import check_feasible
from ..distill import LogitDistiller
from ..models import arch_of, build_model
from ..run import Run
from ..space.subnet import SubnetSpace
from .base import Seed, Target


def finetune(model: nn.Module, data: Any, run: Run, phase: str, seed: Seed, kd: bool, kd_weight: float) -> nn.Module:
    """Fine-tune a sub-network for ``run.config.epochs`` epochs, distilled from the seed when ``kd``."""
    extra = [LogitDistiller(seed.model, weight=kd_weight)] if kd else []
    return run.train(model, data, phase, extra_losses=extra).model


def from_scratch(model: nn.Module) -> nn.Module:
    """The same architecture freshly initialised (its family's own init), nothing inherited."""
    return build_model(arch_of(model))


def cost_fn(run: Run, target: Target):
    """The budget metric of a model, measured where the budget says."""
    return lambda model: run.measure(model, target.metric, device=target.budget.device, backend=target.budget.backend)


def require_reachable(space: SubnetSpace, run: Run, target: Target, seed: Seed, depths=None) -> None:
    """Clear error when the budget is below the smallest network of the space (one channel per group)."""
    smallest = cost_fn(run, target)(space.materialize(space.scaled_widths(0.0), depths))
    check_feasible(target.budget, target.limit, smallest, seed.metric_value)
