"""Baseline ``uniform``: scale every width (or every stage's depth) of the seed by one factor to fit the budget,
down (channels inherited by L1 x activity) or, for a budget above the seed's cost, up (a function-preserving
widening or deepening)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..budget import check_feasible
from ..distill import CachedTeacher
from ..errors import NetfitError, UnsupportedLayerError
from ..space.grow import deepen_to_fit
from ..space.subnet import SubnetSpace
from .base import METHODS, Candidate, Seed, Target
from .common import (
    cost_fn,
    finetune,
    from_scratch,
    inherited_accuracy,
    probe_inputs,
    require_reachable,
    widest_widening,
)


@METHODS.register("uniform")
@dataclass
class Uniform:
    """The largest uniformly scaled sub-network within each budget, channels inherited from the seed (L1 x
    activity), then fine-tuned.

    Options:
        variant: "width" (one width multiplier for every channel group) or "depth" (one fraction of blocks kept
            in every stage; built-in staged models only).
        kd: distil from the seed while fine-tuning.
        kd_weight: weight of the distillation loss.
        inherit: start from the seed's (L1-selected) weights; False trains the same architecture from scratch,
            the baseline that shows what inheritance is worth (give it the seed's epochs too).
        grow: a budget above the seed's cost gets the widest (deepest) uniform scale-up of the seed within it,
            starting as the seed (widened channels are copies read at weight 0, added blocks are identities);
            False: the seed itself, fine-tuned further.
    """

    name: ClassVar[str] = "uniform"
    description: ClassVar[str] = "uniform width (or depth) scaling of the seed + inherited channels + fine-tune"
    variant: str = "width"
    kd: bool = False
    kd_weight: float = 1.0
    inherit: bool = True
    grow: bool = True

    def __post_init__(self) -> None:
        if self.variant not in ("width", "depth"):
            raise NetfitError(f"unknown uniform variant {self.variant!r}; use 'width' or 'depth'")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        space = SubnetSpace(seed.model, seed.input_shape, probe_inputs(data, seed.model))
        teacher = CachedTeacher(seed.model) if self.kd else None  # one cache for every budget's fine-tune
        candidates = []
        for target in targets:
            cid = f"{self.variant}-{_slug(target.budget.spec)}"
            model, info = (
                self._fit_depth(space, run, target, seed)
                if self.variant == "depth"
                else self._fit_width(space, run, target, seed)
            )
            run.log.write("subnet", id=cid, inherit=self.inherit, **info)
            if self.inherit:
                info["val_acc_inherited"] = inherited_accuracy(model, data, run, cid)
            else:
                model = from_scratch(model)
            model = finetune(
                model, data, run, cid, teacher, self.kd_weight, start_accuracy=info.get("val_acc_inherited")
            )
            candidates.append(Candidate(cid, model, target, info))
        return candidates

    def _fit_width(self, space: SubnetSpace, run, target: Target, seed: Seed):
        cost = cost_fn(run, target)
        if self.grow and cost(seed.model) < target.limit:
            scale, model, _ = widest_widening(seed, run, target)
        else:
            require_reachable(space, run, target, seed)
            scale, model, _ = space.fit_width(cost, target.limit, formula=space.formula_price(target.metric))
        return model, {"width_mult": round(scale, 4)}

    def _fit_depth(self, space: SubnetSpace, run, target: Target, seed: Seed):
        if space.depths is None:
            raise UnsupportedLayerError("the depth variant needs a built-in staged model (netfit list models)")
        cost = cost_fn(run, target)
        if self.grow and cost(seed.model) < target.limit:
            fraction, model, _ = deepen_to_fit(seed.model, cost, target.limit)
            return model, {"depths": [len(s) for s in model.stages], "depth_added": fraction}
        options = sorted({tuple(max(1, round(q / 20 * n)) for n in space.depths) for q in range(21)})
        costs = {d: cost(space.materialize(depths=d)) for d in options}
        fitting = [d for d in options if costs[d] <= target.limit]
        if not fitting:  # explains the reachable range of the depth variant
            check_feasible(target.budget, target.limit, min(costs.values()), seed.metric_value)
        depths = max(fitting, key=costs.__getitem__)
        return space.materialize(depths=depths), {"depths": list(depths)}


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in spec.replace("%", "pct")).strip("_")
