"""DNA's search step: one sandwich-rule step over the elastic supernet plus the architecture pass on every
budget's expected network (``DNA.step_fn``). The options (warm-up, samples, passes, teacher) are the ``DNA``
method's; the step is here so that the method reads as its three phases."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..cost.latency import device_sync, time_calls
from ..distill import CachedTeacher, kd_loss
from ..engine import StepFn, StepOutput
from ..engine.distributed import is_distributed
from ..engine.norms import frozen_norm_statistics
from ..space.elastic import ElasticNet

if TYPE_CHECKING:
    from .dna import DNA, ArchParams

SAMPLE_PASSES = ("batched", "sliced")  # how a step runs its sampled sub-networks (DNA.sample_pass)
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
    fraction (``split_batch``; else of one budget, round-robin), then the smallest and ``samples`` sub-nets
    sampled from every budget's chains on its share of the batch (``every_budget``; else from one budget's,
    round-robin), distilled in place from the largest."""
    warmup, samples, cost_weight, one_level = opts.warmup_epochs, opts.samples, opts.cost_weight, opts.one_level
    split_batch, every_budget, arch_every = opts.split_batch, opts.every_budget, opts.arch_every
    arch_batch = opts.arch_batch
    sample_pass = opts.sample_pass if opts.sample_pass != "auto" else "batched"  # DNA.search measures "auto"

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
            teacher = frozen(ctx.x, ctx.ids)
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
                shares = _batch_shares(moving, size)
                # every budget's expected network on its share, in one pass (per-sample gates)
                net.set_soft_rows([(arch.width[r], arch.depth[r], part) for r, part in shares])
                rows = [r for r, _ in shares]
                costs = net.expected_cost(arch.width[rows], arch.depth[rows])  # every row's metrics at once
                expected = [costs[metrics[r]][i] for i, r in enumerate(rows)]
                budgets = [dead_zone_loss(e, limits[r]) for e, (r, _) in zip(expected, shares)]
                budget_loss = sum(_fraction(part, y) * b for (_, part), b in zip(shares, budgets))
                ctx.backward(F.cross_entropy(ctx.model(x), y) + cost_weight * budget_loss)
                ratios = [e.item() / limits[r] for e, (r, _) in zip(expected, shares)]
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
            gen = torch.Generator().manual_seed(seed * 1_000_003 + ctx.step)
            shares = _batch_shares(range(len(limits)) if every_budget else [row], len(ctx.y))
            drawn = draw_samples(net, arch, shares, samples, gen)
            net.set_full()
            smallest = kd_loss(_run_subnet(net, net.smallest(), ctx.x, ctx.model), teacher)
            ctx.backward(smallest / (1 + samples))
            loss = smallest if loss is None else loss  # what the step reports without a largest pass
            sample_passes(net, ctx.model, drawn, shares, samples, ctx.x, teacher, ctx.backward, sample_pass)
        net.set_full()
        return StepOutput(loss.detach(), logits.detach() if logits is not None else None, out_metrics)

    return step


def _fraction(part: slice, batch: torch.Tensor) -> float:
    return len(batch[part]) / len(batch)


def _batch_shares(rows, size: int) -> list[tuple[int, slice]]:
    """Each budget row's share of a batch of ``size`` samples: consecutive slices of ``tensor_split``'s sizes (the
    first ``size % len(rows)`` one sample larger); rows left without a sample are dropped."""
    base, extra = divmod(size, len(rows))
    shares, start = [], 0
    for i, row in enumerate(rows):
        stop = start + base + (i < extra)
        if stop > start:
            shares.append((row, slice(start, stop)))
        start = stop
    return shares


def draw_samples(net: ElasticNet, arch: ArchParams, shares, samples: int, gen: torch.Generator) -> list:
    """``samples`` architectures drawn from each share's budget chains, as (architecture, batch slice)."""
    return [(net.sample(arch.width[r], arch.depth[r], gen), part) for r, part in shares for _ in range(samples)]


def sample_passes(net: ElasticNet, model, drawn, shares, samples: int, x, teacher, backward, mode: str) -> None:
    """The sampled sub-networks distilled from ``teacher`` and back-propagated through ``backward``: "batched"
    runs the i-th sample of every share in one masked pass; "sliced" each sample alone on its share."""
    if len(shares) > 1 and mode == "batched":
        for i in range(samples):
            net.set_hard_rows(drawn[i::samples])
            out = model(x)
            backward(sum(kd_loss(out[p], teacher[p]) * _fraction(p, teacher) for _, p in shares) / (1 + samples))
            net.set_full()
    else:
        for sub, part in drawn:
            loss = kd_loss(_run_subnet(net, sub, x[part], model), teacher[part])
            backward(loss * _fraction(part, teacher) / (1 + samples))


def time_sample_passes(
    net: ElasticNet, arch: ArchParams, x: torch.Tensor, samples: int, seed: int, amp_dtype, repeats: int = 3
) -> dict[str, float]:
    """Median seconds of one step's sample passes for every budget (forward and backward, under ``amp_dtype``
    autocast where given), batched and sliced, on the batch ``x``, each repeat with newly drawn sub-networks
    (a sliced pass pays for building a new sub-network's layers); the gradients they leave are cleared."""
    model, device = net.model, x.device
    shares = _batch_shares(range(len(arch.width)), len(x))
    gen = torch.Generator().manual_seed(seed)
    seconds = {}
    with frozen_norm_statistics(model):  # no trace left in the running statistics either
        with torch.no_grad():
            net.set_full()
            teacher = model(x).float()
        for mode in SAMPLE_PASSES:
            # new sub-networks for every call (the warm-up's included), as every step draws, drawn untimed
            draws = iter([draw_samples(net, arch, shares, samples, gen) for _ in range(repeats + 1)])

            def passes(mode=mode, draws=draws) -> None:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    sample_passes(net, model, next(draws), shares, samples, x, teacher, lambda t: t.backward(), mode)

            seconds[mode] = sorted(time_calls(passes, 1, repeats, device_sync(device)))[repeats // 2]
    model.zero_grad(set_to_none=True)
    net.set_full()
    return seconds


def choose_sample_pass(
    net: ElasticNet, arch: ArchParams, x: torch.Tensor, samples: int, seed: int, amp_dtype=None
) -> tuple[str, dict[str, float]]:
    """The faster way to run a step's sampled sub-networks on this device and batch (``time_sample_passes``):
    the two give the same outputs and gradients, and which is cheaper depends on the network and the device
    (measured: batched on the small mnist1d ResNets and on an H200, sliced on the MNIST-10k ResNet-18 on CPU)."""
    seconds = time_sample_passes(net, arch, x, samples, seed, amp_dtype)
    return min(seconds, key=seconds.__getitem__), {k: round(v, 5) for k, v in seconds.items()}


def _run_subnet(net: ElasticNet, sub, x: torch.Tensor, model) -> torch.Tensor:
    """A sub-network's logits on ``x``: sliced (its own cost) on one process; gated through the DDP wrapper
    ``model`` under torchrun, whose gradient reduction only sees passes through the wrapper."""
    if not is_distributed():
        return net.run_sliced(sub, x)
    net.set_hard(sub)
    return model(x)


def _average_grads(arch: ArchParams) -> None:
    import torch.distributed as dist

    for p in arch.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
