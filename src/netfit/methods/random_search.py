"""Baseline ``random``: random architectures of the same space, each scaled to sit right at the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..distill import CachedTeacher
from ..errors import NetfitError
from ..space.subnet import SubnetSpace
from .base import METHODS, Candidate, Seed, Target
from .common import cost_fn, finetune, inherited_accuracy, probe_inputs, require_reachable
from .uniform import _slug


@METHODS.register("random")
@dataclass
class RandomSearch:
    """Random search over per-group widths (and blocks per stage), at the budget, each candidate fine-tuned.

    Each sample draws a random width ratio per channel group in [min_ratio, 1] (and a random depth per stage for
    built-in staged models), then scales all widths by the one factor that brings the cost right under the
    budget, so random candidates are as large as the budget allows and differ from uniform only in shape.

    Options:
        samples: candidates per budget; each is fine-tuned for the full epochs.
        min_ratio: smallest relative width ratio drawn per group.
        depth: also sample the number of blocks per stage.
        kd, kd_weight: distil from the seed while fine-tuning.
    """

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "random per-group widths/depths scaled to the budget + inherited channels + fine-tune"
    samples: int = 3
    min_ratio: float = 0.25
    depth: bool = True
    kd: bool = False
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.samples < 1 or not 0 < self.min_ratio <= 1:
            raise NetfitError("random needs samples >= 1 and 0 < min_ratio <= 1")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        space = SubnetSpace(seed.model, seed.input_shape, probe_inputs(data, seed.model))
        teacher = CachedTeacher(seed.model) if self.kd else None  # one cache for every sample's fine-tune
        candidates = []
        for target in targets:
            require_reachable(space, run, target, seed, depths=[1] * len(space.depths) if space.depths else None)
            rng = run.rng(f"random-{target.budget.spec}")
            for k in range(self.samples):
                cid = f"random-{_slug(target.budget.spec)}-{k}"
                ratios = {g.id: float(rng.uniform(self.min_ratio, 1.0)) for g in space.prunable}
                depths = None
                if self.depth and space.depths:
                    depths = [int(rng.integers(1, n + 1)) for n in space.depths]
                    if cost_fn(run, target)(space.materialize(space.scaled_widths(0.0), depths)) > target.limit:
                        depths = None  # this depth cannot meet the budget at any width: sample widths only
                formula = space.formula_price(target.metric) if depths is None else None
                scale, model, _ = space.fit_width(cost_fn(run, target), target.limit, ratios, depths, formula=formula)
                info = {
                    "width_ratios": {str(g): round(min(1.0, scale * r), 4) for g, r in ratios.items()},
                    "depths": depths or space.depths,
                }
                run.log.write("subnet", id=cid, **info)
                info["val_acc_inherited"] = inherited_accuracy(model, data, run, cid)
                model = finetune(
                    model, data, run, cid, teacher, self.kd_weight, start_accuracy=info["val_acc_inherited"]
                )
                candidates.append(Candidate(cid, model, target, info))
        return candidates
