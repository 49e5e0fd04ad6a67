"""NNI 3.0: L1-norm, L2-norm or FPGM filter pruning of every conv, made dense by ModelSpeedup.

NNI's ``sparse_ratio`` is a per-layer channel ratio, not a MAC ratio, and residual-coupled channels keep the
union of their masks, so the ratio that meets a MACs limit is found by bisection: the smallest ratio whose
sped-up network netfit counts at or under the limit. ModelSpeedup gets a ``torch.fx`` graph because NNI's own
tracer fails on torch 2.13 (see ../shared/design/peers.md).
"""

from __future__ import annotations

import copy

import torch
from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner
from nni.compression.speedup import ModelSpeedup
from torch import nn

PRUNERS = {"l1": L1NormPruner, "l2": L2NormPruner, "fpgm": FPGMPruner}
BISECTIONS = 12  # ratio resolution 0.99 / 2**12
MAX_RATIO = 0.99


def pruned(model: nn.Module, ratio: float, variant: str, example: torch.Tensor) -> nn.Module:
    """A dense copy of ``model`` with ``ratio`` of every conv's filters removed by the variant's criterion."""
    model = copy.deepcopy(model)
    if ratio <= 0:
        return model
    config = [{"op_types": ["Conv1d", "Conv2d"], "sparse_ratio": ratio}]
    pruner = PRUNERS[variant](model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    ModelSpeedup(model, example, masks, graph_module=torch.fx.symbolic_trace(model)).speedup_model()
    return model.eval()


def prune(job) -> nn.Module:
    low, high = 0.0, MAX_RATIO  # invariant: `high` meets the limit (checked first), `low` does not
    best = pruned(job.model, high, job.variant, job.example)
    if job.macs(best) > job.limit:
        raise RuntimeError(f"nni {job.variant} cannot reach {job.limit:,.0f} MACs even at sparse_ratio {high}")
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        candidate = pruned(job.model, middle, job.variant, job.example)
        if job.macs(candidate) <= job.limit:
            high, best = middle, candidate
        else:
            low = middle
    return best
