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


def finetune(
    model: nn.Module, data: Any, run: Run, phase: str, teacher: nn.Module | None, kd_weight: float = 1.0
) -> nn.Module:
    """Fine-tune a sub-network for ``run.config.epochs`` epochs, distilled from ``teacher`` when one is given."""
    extra = [LogitDistiller(teacher, weight=kd_weight)] if teacher is not None else []
    return run.train(model, data, phase, extra_losses=extra).model


def from_scratch(model: nn.Module) -> nn.Module:
    """The same architecture freshly initialised (its family's own init), nothing inherited."""
    return build_model(arch_of(model))


# Measured latency varies by about 1-2% between measurements of the same network; methods fit networks to a
# latency budget as if each measured this much slower, so that the final measurement still meets the budget.
LATENCY_MARGIN = 0.03


def cost_fn(run: Run, target: Target):
    """The budget metric of a model as methods should fit it: measured where the budget says, with latency
    padded by ``LATENCY_MARGIN`` (counts are exact and used as they are)."""
    pad = 1 / (1 - LATENCY_MARGIN) if target.metric == "latency_ms" else 1.0
    budget = target.budget
    return lambda model: pad * run.measure(model, target.metric, device=budget.device, backend=budget.backend)


def require_reachable(space: SubnetSpace, run: Run, target: Target, seed: Seed, depths=None) -> None:
    """Clear error when the budget is below the smallest network of the space (one channel per group)."""
    smallest = cost_fn(run, target)(space.materialize(space.scaled_widths(0.0), depths))
    check_feasible(target.budget, target.limit, smallest, seed.metric_value)
