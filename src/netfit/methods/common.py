"""Pieces shared by methods: fine-tuning a candidate (optionally distilled from the seed) and budget checks."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..budget import check_feasible
from ..distill import CachedTeacher, LogitDistiller
from ..engine import evaluate
from ..engine.norms import recalibrate_norms
from ..errors import TrainingError
from ..health import fell_far_below, near_chance
from ..models import arch_of, build_model
from ..run import Run
from ..space.grow import widen_to_fit
from ..space.subnet import SubnetSpace
from .base import Seed, Target

RETRY_LR_SCALE = 0.1  # a diverged fine-tune is retried at this fraction of its learning rate
PROBE_SAMPLES = 256  # training inputs that channel activity is measured on (space.importance.channel_activity)


def probe_inputs(data: Any, model: nn.Module, samples: int = PROBE_SAMPLES) -> torch.Tensor:
    """A fixed draw of training inputs, prepared as evaluation sees them, on ``model``'s device: what channel
    importance measures activity on (the same draw on every process of a distributed run)."""
    x_all, _ = data.train.tensors
    idx = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))[:samples]
    return data.prepare(x_all[idx].to(next(model.parameters()).device), train=False)


def finetune(
    model: nn.Module,
    data: Any,
    run: Run,
    phase: str,
    teacher: nn.Module | CachedTeacher | None,
    kd_weight: float = 1.0,
    overrides: dict[str, Any] | None = None,
    start_accuracy: float | None = None,
) -> nn.Module:
    """Fine-tune a sub-network for ``run.config.epochs`` epochs, distilled from ``teacher`` when one is given
    (a ``CachedTeacher`` shared by a method's fine-tunes computes each sample's teacher logits once);
    ``overrides`` change training settings of this phase (e.g. a warm-up for inherited weights);
    ``start_accuracy`` is the model's validation accuracy as given, when the caller already measured it.

    A fine-tune that diverges (a non-finite loss, or a validation accuracy at the end that is near chance or
    lost more than half of what the network had at the start over chance) is retried once from the same
    starting weights at ``RETRY_LR_SCALE`` x the learning rate with a one-epoch warm-up (phase ``<phase>-retry``,
    logged); the better of the two on validation is returned (a result still near chance is flagged later)."""
    extra = [LogitDistiller(teacher, weight=kd_weight)] if teacher is not None else []
    model.requires_grad_(True)  # a copy of a seed that has become a (frozen) teacher is frozen too
    start = copy.deepcopy(model)
    before = _val_accuracy(model, data, run) if start_accuracy is None else start_accuracy
    first, accuracy = None, -1.0
    try:
        first = run.train(model, data, phase, extra_losses=extra, overrides=overrides).model
        accuracy = _val_accuracy(first, data, run)
        if not (near_chance(accuracy, data.num_classes) or fell_far_below(accuracy, before, data.num_classes)):
            return first
        reason = f"validation accuracy {before:.1%} before the fine-tune, {accuracy:.1%} after"
    except TrainingError as e:
        reason = str(e)
    lr = (overrides or {}).get("lr", run.config.lr) * RETRY_LR_SCALE
    run.log.write("finetune-retry", id=phase, reason=reason, lr=lr)
    retry = {**(overrides or {}), "lr": lr, "warmup_epochs": min(1.0, float(run.config.epochs))}
    second = run.train(start, data, f"{phase}-retry", extra_losses=extra, overrides=retry).model
    return second if first is None or _val_accuracy(second, data, run) >= accuracy else first


def _val_accuracy(model: nn.Module, data: Any, run: Run) -> float:
    return evaluate(model.to(run.device), data, "val", device=run.device)["accuracy"]


def inherited_accuracy(model: nn.Module, data: Any, run: Run, cid: str) -> float:
    """Recalibrate an inherited sub-network's batch norms (its inherited statistics belong to the larger network
    it was cut from) and return its validation accuracy as it stands, before any fine-tune (logged)."""
    before = _val_accuracy(model, data, run)
    recalibrate_norms(model, data, seed=run.seed)
    accuracy = _val_accuracy(model, data, run)
    run.log.write("inherited", id=cid, val_acc=accuracy, val_acc_before_recalibration=before)
    return accuracy


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


def widest_widening(seed: Seed, run: Run, target: Target) -> tuple[float, nn.Module, float]:
    """The seed's widest uniform widening within ``target`` (copies read at weight 0, so it starts as the seed):
    (width factor, network, its cost); the network ``uniform`` and DNA give a budget above the seed."""
    return widen_to_fit(seed.model, seed.input_shape, cost_fn(run, target), target.limit, seed=run.seed)


def require_reachable(space: SubnetSpace, run: Run, target: Target, seed: Seed, depths=None) -> None:
    """Clear error when the budget is below the smallest network of the space (one channel per group)."""
    smallest = cost_fn(run, target)(space.materialize(space.scaled_widths(0.0), depths))
    check_feasible(target.budget, target.limit, smallest, seed.metric_value)
