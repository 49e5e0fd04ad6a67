"""DNA's search step: one sandwich-rule step over the elastic supernet plus the architecture pass on every
budget's expected network (``DNA.step_fn``). The options (warm-up, samples, passes, teacher) are the ``DNA``
method's; the step is here so that the method reads as its three phases."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..distill import CachedTeacher, kd_loss
from ..engine import StepFn, StepOutput
from ..engine.distributed import is_distributed
from ..engine.norms import frozen_norm_statistics
from ..space.elastic import ElasticNet
from .dna_passes import (
    batch_shares,
    draw_samples,
    fraction,
    fused_pass,
    run_subnet,
    sample_passes,
    samples_loss,
    sliced_passes,
    soft_pass,
)

if TYPE_CHECKING:
    from .dna import DNA, ArchParams

DEAD_ZONE = 0.95  # a budget T is met when the cost lies in [0.95 T, T]


def dead_zone_loss(cost: torch.Tensor, limit: float) -> torch.Tensor:
    """log(E/T) above the budget, log(0.95 T / E) below the dead zone, 0 inside it."""
    log_cost = torch.log(cost)
    return F.relu(log_cost - math.log(limit)) + F.relu(math.log(DEAD_ZONE * limit) - log_cost)


def search_step(
    opts: DNA,
    net: ElasticNet,
    arch: ArchParams,
    limits: list[float],
    metrics: list[str],
    seed: int,
    frozen: CachedTeacher | None = None,
) -> StepFn:
    """The search step for ``engine.train``: largest pass (CE; the only one updating BN statistics; with a
    ``frozen`` in-place teacher instead, its logits and no largest pass), then after warm-up the architecture
    gradient on the expected network of every budget on its share of the batch's leading ``arch_batch``
    fraction (``split_batch``; else of one budget, round-robin; run as ``soft_pass`` says), then the smallest
    and ``samples`` sub-nets sampled from every budget's chains on its share of the batch (``every_budget``;
    else from one budget's, round-robin; run as ``sample_pass`` says), distilled in place from the largest.
    ``soft_pass`` "joint": the samples run in the architecture pass's sliced passes (``sliced_passes``), the same
    gradients with one pass's fixed costs per group of budgets fewer; with ``sample_pass`` "batched", every
    network of the step, the smallest included, runs in one masked pass (``fused_pass``)."""
    warmup, samples, cost_weight, one_level = opts.warmup_epochs, opts.samples, opts.cost_weight, opts.one_level
    split_batch, every_budget, arch_every = opts.split_batch, opts.every_budget, opts.arch_every
    arch_batch, layout = opts.arch_batch, opts.pass_layout(net, limits, metrics)
    # DNA.search measures "auto"
    sample_pass = opts.sample_pass if opts.sample_pass != "auto" else "batched"
    soft_mode = opts.soft_pass if opts.soft_pass != "auto" else "batched"

    # "joint": one sliced pass per group of budgets for both passes (sliced_passes), or with batched samples one
    # masked pass for the whole step (fused_pass); sliced apart where the architecture pass's weight gradients
    # are dropped (alternating) or under torchrun
    together = soft_mode == "joint" and one_level and not is_distributed()
    joint, fused = together and sample_pass == "sliced", together and sample_pass == "batched"
    soft_mode = "sliced" if soft_mode == "joint" else soft_mode

    def step(ctx) -> StepOutput:
        row = ctx.step % len(limits)
        out_metrics = {}
        logits, loss = None, None
        if frozen is None:
            net.set_full()
            logits = ctx.model(ctx.x)
            loss = F.cross_entropy(logits, ctx.y, label_smoothing=ctx.config.label_smoothing)
            ctx.backward(loss)
            teacher = logits.detach()
        else:
            teacher = frozen(ctx.x, ctx.ids, ctx.channels_last)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + ctx.step)
        shares = batch_shares(range(len(limits)) if every_budget else [row], len(ctx.y))
        drawn = draw_samples(net, arch, shares, samples, gen)
        samples_done, arch_terms = False, None
        with frozen_norm_statistics(ctx.raw_model):
            if ctx.epoch >= warmup and ctx.step % arch_every == 0:  # alternating: its weight grads are dropped
                params = [] if one_level else list(ctx.raw_model.parameters())
                grads = [p.grad for p in params]
                for p in params:  # backward accumulates in place: park the sandwich grads out of its reach
                    p.grad = None
                turn = [ctx.step // arch_every % len(limits)]  # round-robin over the steps that run this pass
                moving = range(len(limits)) if split_batch else turn
                # the loader shuffles, so the batch's leading fraction is a random subset of it
                size = min(len(ctx.y), max(len(moving), round(arch_batch * len(ctx.y))))
                x, y = ctx.x[:size], ctx.y[:size]
                soft = batch_shares(moving, size)
                rows = [r for r, _ in soft]
                costs = net.expected_cost(arch.width[rows], arch.depth[rows])  # every row's metrics at once
                expected = [costs[metrics[r]][i] for i, r in enumerate(rows)]
                budgets = [dead_zone_loss(e, limits[r]) for e, (r, _) in zip(expected, soft)]
                budget_loss = sum(fraction(part, y) * b for (_, part), b in zip(soft, budgets))
                arch_loss = cost_weight * budget_loss
                if fused:  # in the step's one pass, below
                    arch_terms = soft, x, y, arch_loss
                else:
                    if joint:  # every budget's expected network on its share, and the samples on theirs
                        out, outs = sliced_passes(net, arch, soft, x, drawn, shares, samples, ctx.x, layout)
                        arch_loss = arch_loss + samples_loss(outs, shares, teacher, samples)
                        samples_done = True
                    else:  # every budget's expected network on its share
                        out = soft_pass(net, ctx.model, arch, soft, x, soft_mode, layout)
                    ctx.backward(F.cross_entropy(out, y) + arch_loss)
                ratios = [e.item() / limits[r] for e, (r, _) in zip(expected, soft)]
                budget_losses = [b.item() for b in budgets]
                for p, grad in zip(params, grads):
                    p.grad = grad
                if is_distributed():
                    _average_grads(arch)
                out_metrics = {
                    "budget_loss": sum(budget_losses) / len(budget_losses),
                    "expected_cost_ratio_min": min(ratios),
                    "expected_cost_ratio_max": max(ratios),
                }
            net.set_full()
            if fused:  # the expected networks (where this step moves the logits), the samples and the smallest
                soft, x, y, arch_loss = arch_terms or ([], None, None, None)
                out, outs, small = fused_pass(net, ctx.model, arch, soft, x, drawn, shares, samples, ctx.x, layout.tail)
                smallest = kd_loss(small, teacher)
                total = smallest / (1 + samples) + samples_loss(outs, shares, teacher, samples)
                ctx.backward(total + (F.cross_entropy(out, y) + arch_loss if arch_terms else 0))
            else:
                smallest = kd_loss(run_subnet(net, net.smallest(), ctx.x, ctx.model), teacher)
                ctx.backward(smallest / (1 + samples))
            loss = smallest if loss is None else loss  # what the step reports without a largest pass
            if not samples_done and not fused:
                sample_passes(net, ctx.model, drawn, shares, samples, ctx.x, teacher, ctx.backward, sample_pass, layout)
        net.set_full()
        return StepOutput(loss.detach(), logits.detach() if logits is not None else None, out_metrics)

    return step


def _average_grads(arch: ArchParams) -> None:
    import torch.distributed as dist

    for p in arch.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
