"""DNA's network for each budget: a searched budget's most probable architecture fitted to the budget from the
search's logits, and a budget above the seed widened as ``uniform`` widens it (``DNA.search`` fine-tunes both)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..space.elastic import ElasticNet
from .base import Seed, Target
from .common import cost_fn, widest_widening

if TYPE_CHECKING:
    from .dna import ArchParams


def searched_network(
    net: ElasticNet, arch: ArchParams, row: int, target: Target, seed: Seed, run
) -> tuple[nn.Module, dict]:
    """The most probable architecture of budget ``row``: its widths scaled together to the largest network
    within the budget, then topped up channel by channel into the dead zone. MACs and params are priced by
    the space's cost formula (no network built per trial) and the one network built is checked against the
    cost model; where the formula is off (a layer it does not price), and for measured metrics, every trial
    network is built and measured."""
    ratios, rounded = net.most_probable(arch.width[row], arch.depth[row])
    cost = cost_fn(run, target)
    formula = target.metric in ("macs", "params")

    def price(widths: dict[int, int], depths) -> float:
        if formula:
            return net.cost_at(widths, depths)[target.metric]
        return cost(net.space.materialize(widths, depths))

    depths = rounded.depths
    if depths not in (None, net.min_depths) and price(net.space.scaled_widths(0.0), depths) > target.limit:
        depths = list(net.min_depths)  # the chosen depth is too deep for the budget at any width
    fitted = None
    if formula:
        fill = lambda w: top_up(net, w, depths, target.metric, target.limit, ratios)  # noqa: E731
        fitted = net.space.fit_by_formula(cost, target.limit, lambda w: price(w, depths), ratios, depths, fill)
    scale, model, value = fitted or net.space.fit_width(cost, target.limit, ratios, depths)
    info = {
        "depths": depths,
        "width_scale": round(scale, 4),
        "expected_widths": {str(g): round(r, 4) for g, r in ratios.items()},
        "budget_fill": round(value / target.limit, 4),
        **growth_vs_seed(model, seed.model),
    }
    return model, info


def widened_network(seed: Seed, target: Target, run) -> tuple[nn.Module, dict]:
    """A budget above the seed, by default: the seed's widest uniform widening within it, as ``uniform``'s."""
    scale, model, value = widest_widening(seed, run, target)
    info = {"widened": True, "width_mult": round(scale, 4), "budget_fill": round(value / target.limit, 4)}
    return model, info | growth_vs_seed(model, seed.model)


def top_up(net: ElasticNet, widths: dict[int, int], depths, metric: str, limit: float, ratios: dict) -> dict:
    """Add channels one at a time, always to the group furthest below its searched share that stays within budget
    (every group's trial priced in one batched call: the greedy walk adds hundreds of channels on MobileNetV2)."""
    widths = dict(widths)
    sizes = {g.id: g.size for g in net.gated}
    while True:
        order = sorted(
            (g for g in sizes if widths[g] < sizes[g]), key=lambda g: widths[g] / max(ratios[g] * sizes[g], 1e-9)
        )
        if not order:
            return widths
        costs = net.costs_at([{**widths, g: widths[g] + 1} for g in order], depths)[metric]
        fitting = (costs <= limit).nonzero()
        if len(fitting) == 0:
            return widths
        widths[order[int(fitting[0])]] += 1


def growth_vs_seed(model: nn.Module, seed: nn.Module) -> dict:
    """How the result compares with the seed: layers with more/fewer output channels, stages with more blocks."""
    seed_modules = dict(seed.named_modules())
    wider = narrower = 0
    for name, module in model.named_modules():
        other = seed_modules.get(name)
        width = getattr(module, "out_channels", None)
        if width is None or other is None or type(other) is not type(module):
            continue
        wider += width > other.out_channels
        narrower += width < other.out_channels
    out = {"layers_wider_than_seed": wider, "layers_narrower_than_seed": narrower}
    if hasattr(model, "stages") and hasattr(seed, "stages"):
        out["stages_deeper_than_seed"] = sum(len(a) > len(b) for a, b in zip(model.stages, seed.stages))
    return out
