"""Torch-Pruning 1.6 (DepGraph): L1 or L2 (group norm) magnitude, or Taylor importance, uniform or global.

Variants are ``<importance>-<scope>``. The pruner removes channels in small iterative steps (its own linear
ratio schedule) and stops at the first step whose network netfit counts at or under the MACs limit, so the
result sits just under the budget. The classifier's output is left alone. Global pruning is isomorphic (groups
ranked only against groups of the same structure), as Torch-Pruning recommends: plain global ranking cut the
early layers of the 1-D ResNet to one channel (61% after fine-tuning at 50% MACs, 92% isomorphic).
"""

from __future__ import annotations

from itertools import cycle

import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

STEPS = 400  # each step removes 1/400 of 99% of the channels: fine enough to land close under the limit
MAX_RATIO = 0.99

IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
}


def prune(job) -> nn.Module:
    criterion, scope = job.variant.split("-")
    model = job.model
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        model,
        job.example,
        importance=IMPORTANCE[criterion](),
        pruning_ratio=MAX_RATIO,
        iterative_steps=STEPS,
        global_pruning=scope == "global",
        isomorphic=scope == "global",  # rank only structurally alike groups together (TP's advice for global)
        ignored_layers=[classifier],
    )
    batches = cycle(job.train_batches)
    for _ in range(STEPS):
        if job.macs(model) <= job.limit:
            return model
        if criterion == "taylor":  # Taylor importance reads the gradients of a real loss, fresh each step
            x, y = next(batches)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        pruner.step()
    if job.macs(model) > job.limit:
        raise RuntimeError(f"torch-pruning could not reach {job.limit:,.0f} MACs at pruning ratio {MAX_RATIO}")
    return model
