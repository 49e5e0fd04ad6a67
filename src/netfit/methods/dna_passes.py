"""How DNA's search step runs its passes over several budgets' networks, and which way is faster here.

Each step runs every budget's expected network on its share of the batch (the architecture pass, soft gates)
and sub-networks sampled from every budget's chains on their shares. Either runs "batched" (one pass of the
whole supernet with per-sample gates: one pass at the supernet's MACs) or "sliced" (one pass per share on a
sliced copy of the supernet: each at its own network's MACs, plus a pass's overhead per share). Sampled
sub-networks give the same outputs and gradients both ways; a sliced expected network leaves out the units and
blocks whose keep probability is below ``SOFT_TAIL``. Which is faster depends on the network and the device, so
``choose_passes`` times both (``DNA.sample_pass`` / ``DNA.soft_pass`` "auto").
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..cost.latency import device_sync, time_calls
from ..distill import kd_loss
from ..engine.distributed import is_distributed
from ..engine.norms import frozen_norm_statistics
from ..space.elastic import ElasticNet

if TYPE_CHECKING:
    from .dna import ArchParams

PASS_MODES = ("batched", "sliced")  # how a step runs several budgets' networks (DNA.sample_pass, DNA.soft_pass)
SOFT_TAIL = 1e-3  # a sliced expected network keeps the units and blocks kept with at least this probability


def batch_shares(rows, size: int) -> list[tuple[int, slice]]:
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


def fraction(part: slice, batch: torch.Tensor) -> float:
    return len(batch[part]) / len(batch)


def budget_sizes(net: ElasticNet, limits: list[float], metrics: list[str]) -> list[float]:
    """Each budget as a fraction of the supernet's largest network's cost in its metric: about what its
    networks cost to run, relative to the supernet (``pass_groups``)."""
    largest = net.cost(net.largest())
    return [limit / float(largest[metric]) for limit, metric in zip(limits, metrics)]


def pass_groups(rows: list[int], sizes: list[float], span: float) -> list[list[int]]:
    """Which shares (positions in ``rows``, their budget rows) a sliced pass runs together: from the largest
    budget down, each share joins the current group while its budget's size is within ``span`` of the group's
    first (so a group costs at most ``span`` x the supernet per sample above what its shares cost apart, and
    saves a pass's fixed costs per share); ``span`` 0 runs each budget on its own."""
    groups: list[list[int]] = []
    for k in sorted(range(len(rows)), key=lambda k: -sizes[rows[k]]):
        if groups and sizes[rows[groups[-1][0]]] - sizes[rows[k]] <= span:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _gather(x: torch.Tensor, parts: list[slice]) -> tuple[torch.Tensor, list[slice], torch.Tensor]:
    """The samples of ``parts`` (consecutive slices of ``x``), the parts renumbered within them, their indices."""
    index = torch.cat([torch.arange(p.start, p.stop) for p in parts]).to(x.device)
    bounds = [0, *itertools.accumulate(p.stop - p.start for p in parts)]
    return x[index], [slice(a, b) for a, b in itertools.pairwise(bounds)], index


def soft_pass(
    net: ElasticNet, model, arch: ArchParams, shares, x: torch.Tensor, mode: str, sizes: list[float], span: float
) -> torch.Tensor:
    """Every share's budget's expected network on its share of ``x`` (the logits of the whole ``x``): "batched"
    in one pass with per-sample gates, through ``model`` (the DDP wrapper under torchrun); "sliced", on one
    process, one pass per group of budgets (``pass_groups``) on the slices of the union of its networks."""
    if mode == "sliced" and not is_distributed():
        outs, order = [], []
        for group in pass_groups([r for r, _ in shares], sizes, span):
            xg, local, index = _gather(x, [shares[k][1] for k in group])
            rows = [(arch.width[shares[k][0]], arch.depth[shares[k][0]], part) for k, part in zip(group, local)]
            outs.append(net.run_soft_rows_sliced(rows, xg, SOFT_TAIL))
            order.append(index)
        return torch.cat(outs)[torch.cat(order).argsort()]
    net.set_soft_rows([(arch.width[r], arch.depth[r], part) for r, part in shares])
    return model(x)


def draw_samples(net: ElasticNet, arch: ArchParams, shares, samples: int, gen: torch.Generator) -> list:
    """``samples`` architectures drawn from each share's budget chains, as (architecture, batch slice)."""
    return [(net.sample(arch.width[r], arch.depth[r], gen), part) for r, part in shares for _ in range(samples)]


def sample_passes(
    net: ElasticNet, model, drawn, shares, samples: int, x, teacher, backward, mode: str, sizes, span: float
) -> None:
    """The sampled sub-networks distilled from ``teacher`` and back-propagated through ``backward``: "batched"
    runs the i-th sample of every share in one masked pass; "sliced" the i-th samples of each group of budgets
    (``pass_groups``) in one pass of the slices of their union (a group of one: its sub-network alone)."""
    if len(shares) > 1 and mode == "batched":
        for i in range(samples):
            net.set_hard_rows(drawn[i::samples])
            out = model(x)
            backward(sum(kd_loss(out[p], teacher[p]) * fraction(p, teacher) for _, p in shares) / (1 + samples))
            net.set_full()
        return
    if is_distributed():  # every pass through the DDP wrapper, one sub-network at a time
        for sub, part in drawn:
            loss = kd_loss(run_subnet(net, sub, x[part], model), teacher[part])
            backward(loss * fraction(part, teacher) / (1 + samples))
        return
    for i in range(samples):
        picked = [sub for sub, _ in drawn[i::samples]]  # drawn holds each share's samples in turn
        for group in pass_groups([r for r, _ in shares], sizes, span):
            parts = [shares[k][1] for k in group]
            if len(group) == 1:
                outs = [net.run_sliced(picked[group[0]], x[parts[0]])]
            else:
                xg, local, _ = _gather(x, parts)
                out = net.run_hard_rows_sliced([(picked[k], part) for k, part in zip(group, local)], xg)
                outs = [out[part] for part in local]
            loss = sum(kd_loss(o, teacher[p]) * fraction(p, teacher) for o, p in zip(outs, parts))
            backward(loss / (1 + samples))


def run_subnet(net: ElasticNet, sub, x: torch.Tensor, model) -> torch.Tensor:
    """A sub-network's logits on ``x``: sliced (its own cost) on one process; gated through the DDP wrapper
    ``model`` under torchrun, whose gradient reduction only sees passes through the wrapper."""
    if not is_distributed():
        return net.run_sliced(sub, x)
    net.set_hard(sub)
    return model(x)


def time_passes(
    net: ElasticNet,
    arch: ArchParams,
    x: torch.Tensor,
    samples: int,
    seed: int,
    amp_dtype,
    sizes: list[float],
    span: float,
    repeats: int = 3,
) -> dict[str, dict[str, float]]:
    """Median seconds of one step's sample passes and of its architecture pass for every budget (forward and
    backward, under ``amp_dtype`` autocast where given), batched and sliced, on the batch ``x``; each sample
    repeat draws new sub-networks (a sliced pass pays for building a new sub-network's layers). The gradients
    they leave are cleared and the normalisation statistics untouched: ``{"sample_pass": {mode: s}, "soft_pass":
    {mode: s}}``."""
    model, device = net.model, x.device
    shares = batch_shares(range(len(arch.width)), len(x))
    gen = torch.Generator().manual_seed(seed)
    seconds: dict[str, dict[str, float]] = {"sample_pass": {}, "soft_pass": {}}
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def median(fn) -> float:
        return sorted(time_calls(fn, 1, repeats, device_sync(device)))[repeats // 2]

    with frozen_norm_statistics(model):  # no trace left in the running statistics either
        with torch.no_grad():
            net.set_full()
            teacher = model(x).float()
        for mode in PASS_MODES:
            # new sub-networks for every call (the warm-up's included), as every step draws, drawn untimed
            draws = iter([draw_samples(net, arch, shares, samples, gen) for _ in range(repeats + 1)])

            def samples_pass(mode=mode, draws=draws) -> None:
                with autocast:
                    sample_passes(
                        net, model, next(draws), shares, samples, x, teacher, lambda t: t.backward(), mode, sizes, span
                    )

            def architecture_pass(mode=mode) -> None:
                with autocast:
                    out = soft_pass(net, model, arch, shares, x, mode, sizes, span)
                    F.cross_entropy(out, teacher.argmax(1)).backward()
                net.set_full()

            seconds["sample_pass"][mode] = median(samples_pass)
            seconds["soft_pass"][mode] = median(architecture_pass)
    model.zero_grad(set_to_none=True)
    arch.zero_grad(set_to_none=True)
    net.set_full()
    return seconds


def choose_passes(
    net: ElasticNet,
    arch: ArchParams,
    x: torch.Tensor,
    samples: int,
    seed: int,
    sizes: list[float],
    span: float,
    amp_dtype=None,
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """The faster way to run each of a step's two passes on this device and batch (``time_passes``), as
    ``{"sample_pass": mode, "soft_pass": mode}``, and the seconds measured (measured on CPU: batched on the
    small mnist1d ResNets and on MobileNetV2, sliced samples on the MNIST-10k ResNet-18; batched on an H200)."""
    seconds = time_passes(net, arch, x, samples, seed, amp_dtype, sizes, span)
    choice = {name: min(modes, key=modes.__getitem__) for name, modes in seconds.items()}
    return choice, {name: {k: round(v, 5) for k, v in modes.items()} for name, modes in seconds.items()}
