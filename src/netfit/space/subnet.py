"""Sub-networks of a seed: a width per traced channel group and, for staged nets, blocks per stage.

Both baselines (uniform, random) and the materialisation of searched architectures use this one space, so
the only difference between methods is which point of it they pick. Channels are inherited from the seed by
L1 importance (channels that do not vary on a probe batch of training inputs last); blocks are kept from
the front of each stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import BudgetInfeasibleError
from ..models import StagedNet, arch_of, build_model
from .channels import ChannelGroup, trace_channel_groups
from .cost_formula import calibrated_formula
from .importance import channel_scores, keep_top
from .inherit import inherit_weights
from .prune import slice_channels

CostFn = Callable[[nn.Module], float]


class SubnetSpace:
    """Widths of the prunable channel groups of ``model`` (and its depth per stage when it is a StagedNet);
    channels are ranked on ``probe`` inputs where given (``channel_activity``), else by weights alone.

    Example:
        >>> space = SubnetSpace(seed_model, (1, 8, 8))
        >>> half = space.materialize(space.scaled_widths(0.5))
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], probe: torch.Tensor | None = None) -> None:
        self.model, self.input_shape = model.eval(), tuple(input_shape)
        example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        self.groups: list[ChannelGroup] = trace_channel_groups(model, example)
        self.prunable = [g for g in self.groups if g.prunable]
        self.importance = channel_scores(model, self.prunable, probe)
        self.depths: list[int] | None = [len(s) for s in model.stages] if isinstance(model, StagedNet) else None
        self._formula: tuple | None = None  # (gated groups, formula, offset), traced when first asked for

    def formula_price(self, metric: str) -> Callable[[dict[int, int]], float] | None:
        """A width choice's MACs or params at full depth by the cost formula, no network built (exact on the
        built-in models; a user layer it prices wrongly makes it approximate); None for measured metrics."""
        if metric not in ("macs", "params"):
            return None
        if self._formula is None:
            gated = [g for g in self.prunable if g.size > 1]
            self._formula = (gated, *calibrated_formula(self.model, self.input_shape, self.groups, gated, [])[1:])
        gated, formula, offset = self._formula

        def price(widths: dict[int, int]) -> float:
            width = torch.tensor([[float(widths.get(g.id, g.size)) for g in gated]], dtype=torch.float64)
            return float(formula(width, width.new_zeros(1, 0))[metric][0]) + offset[metric]

        return price

    def full_widths(self) -> dict[int, int]:
        return {g.id: g.size for g in self.prunable}

    def scaled_widths(self, ratio: float | dict[int, float]) -> dict[int, int]:
        """Width of every prunable group at ``ratio`` of its full size (one ratio, or one per group id)."""
        return {
            g.id: max(1, min(g.size, round((ratio if isinstance(ratio, float) else ratio[g.id]) * g.size)))
            for g in self.prunable
        }

    def materialize(self, widths: dict[int, int] | None = None, depths: Sequence[int] | None = None) -> nn.Module:
        """A plain dense sub-network with inherited weights: most important channels, leading blocks."""
        keep = {
            gid: keep_top(self.importance[gid], n)
            for gid, n in (widths or {}).items()
            if n < self.groups_by_id[gid].size
        }
        model = slice_channels(self.model, self.groups, keep) if keep else self.model
        if depths is not None and list(depths) != self.depths:
            model = truncate_depth(model, depths)
        return model

    @property
    def groups_by_id(self) -> dict[int, ChannelGroup]:
        return {g.id: g for g in self.groups}

    def fit_width(
        self,
        cost: CostFn,
        limit: float,
        ratios: dict[int, float] | None = None,
        depths: Sequence[int] | None = None,
        steps: int = 16,
        formula: Callable[[dict[int, int]], float] | None = None,
    ) -> tuple[float, nn.Module, float]:
        """Largest common scale s of the widths (``s * ratios`` per group, default 1) whose network costs <= limit.

        Returns (s, sub-network, its cost). Raises ``BudgetInfeasibleError`` with the reachable range when even
        one channel per group is too expensive. With a ``formula`` (``formula_price``, full depth only) the trials
        are priced by it and one network is built, its cost checked (within the limit, and as the formula priced
        it); should the formula be off, every trial is built and measured after all.
        """
        if formula is not None:
            if depths is not None:
                raise ValueError("the width formula prices full-depth networks: no depths with it")
            fitted = self.fit_by_formula(cost, limit, formula, ratios, steps=steps)
            if fitted is not None:
                return fitted
        widest: list = [None, -1]  # the widest network within the limit built so far, and its channel count

        def price(widths: dict[int, int]) -> float:
            model = self.materialize(widths, depths)
            value = cost(model)
            if value <= limit and sum(widths.values()) > widest[1]:  # widths grow with the scale
                widest[:] = [model, sum(widths.values())]
            return value

        scale, _, value = self.fit_scale(price, limit, ratios, steps)
        return scale, widest[0], value

    def fit_by_formula(
        self,
        cost: CostFn,
        limit: float,
        formula: Callable[[dict[int, int]], float],
        ratios: dict[int, float] | None = None,
        depths: Sequence[int] | None = None,
        refine: Callable[[dict[int, int]], dict[int, int]] | None = None,
        steps: int = 16,
    ) -> tuple[float, nn.Module, float] | None:
        """``fit_width``'s bisection priced by ``formula`` (a width choice's cost at ``depths``, no network built),
        its widths then passed through ``refine`` (e.g. a top-up priced by the same formula), and ONE network built:
        (s, network, its cost), or None where the formula cannot be trusted for this fit (it judged the budget
        below the space's floor, or priced the built network otherwise than ``cost`` counts it, or the network is
        over the limit): the caller then counts every trial (``fit_width`` without a formula)."""
        try:
            scale, widths, _ = self.fit_scale(formula, limit, ratios, steps)
        except BudgetInfeasibleError:  # an approximate formula may misjudge the space's floor
            return None
        widths = refine(widths) if refine is not None else widths
        model = self.materialize(widths, depths)
        value = cost(model)
        return (scale, model, value) if value <= limit and formula_agrees(formula(widths), value) else None

    def fit_scale(
        self,
        price: Callable[[dict[int, int]], float],
        limit: float,
        ratios: dict[int, float] | None = None,
        steps: int = 16,
    ) -> tuple[float, dict[int, int], float]:
        """``fit_width`` for any ``price`` of a width choice (a cost formula needs no network built): the largest
        scale s whose widths ``scaled_widths(s * ratios)`` price <= limit, by bisection; (s, widths, price).
        Each distinct width choice is priced once (whole channels: later scales mostly repeat lo's or hi's)."""
        ratios = ratios or {g.id: 1.0 for g in self.prunable}
        top = 1.0 / min(ratios.values()) if ratios else 1.0  # past this every group is at full width
        prices: dict[tuple, float] = {}

        def at(s: float) -> tuple[dict[int, int], float]:
            widths = self.scaled_widths({g: min(1.0, s * r) for g, r in ratios.items()})
            key = tuple(sorted(widths.items()))
            if key not in prices:
                prices[key] = price(widths)
            return widths, prices[key]

        widths, value = at(top)
        if value <= limit:
            return top, widths, value
        low_widths, low_value = at(0.0)
        if low_value > limit:
            raise BudgetInfeasibleError(
                f"even one channel per group costs {low_value:.4g} > limit {limit:.4g}; the reachable range of "
                f"this space is {low_value:.4g} .. {value:.4g}"
            )
        lo, hi, best = 0.0, top, (0.0, low_widths, low_value)
        for _ in range(steps):
            mid = (lo + hi) / 2
            widths, value = at(mid)
            if value <= limit:
                lo, best = mid, (mid, widths, value)
            else:
                hi = mid
        return best


def formula_agrees(priced: float, counted: float) -> bool:
    """Whether a cost formula priced a network as the cost model counts it (integer costs: to rounding); where
    it does not, a fit by the formula may lie anywhere below the budget, so the caller counts instead."""
    return abs(priced - counted) <= 1e-9 * max(abs(counted), 1.0)


def truncate_depth(model: nn.Module, depths: Sequence[int]) -> nn.Module:
    """Keep the first ``depths[i]`` blocks of stage i of a StagedNet (built-in or ``staged_graph``); weights
    inherited by name."""
    arch = arch_of(model)
    if len(depths) != len(arch["stages"]) or any(
        not 1 <= d <= len(s["blocks"]) for d, s in zip(depths, arch["stages"])
    ):
        raise ValueError(f"depths {list(depths)} do not fit stages of {[len(s['blocks']) for s in arch['stages']]}")
    for stage, d in zip(arch["stages"], depths):
        stage["blocks"] = stage["blocks"][:d]
    sub = build_model(arch).to(next(model.parameters()).device)
    inherit_weights(sub, model)
    return sub.eval()
