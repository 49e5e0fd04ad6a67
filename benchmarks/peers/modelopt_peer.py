"""NVIDIA ModelOpt 0.47 FastNAS: sensitivity-scored channel search under a FLOPs constraint.

FastNAS measures every searchable width's effect on a score (here: accuracy on held-out batches), then picks
the widths that keep the most score under the constraint. Its FLOPs are 2 x conv/linear MACs, the same
convention as netfit's, but netfit's count decides: if the result lands over the limit, the constraint is
tightened by the overshoot and the search runs again. The default channel/feature divisor of 32 leaves the
small networks here almost nothing to search, so it is lowered to 4 (../shared/design/peers.md).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import modelopt.torch.prune as mtp
import torch
from torch import nn

DIVISOR = 4
RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 21))
TRIES = 3


def _rules() -> dict:
    conv = {"channels_ratio": RATIOS, "kernel_size": (), "channel_divisor": DIVISOR}
    feature = {"features_ratio": RATIOS, "feature_divisor": DIVISOR}
    rules = {f"nn.{kind}": conv for kind in ("Conv1d", "Conv2d")}
    return rules | {f"nn.{kind}": feature for kind in ("Linear", "BatchNorm1d", "BatchNorm2d")}


@torch.no_grad()
def _accuracy(model: nn.Module, batches) -> float:
    model.eval()
    right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def prune(job) -> nn.Module:
    constraint = 2 * job.limit
    for _ in range(TRIES):
        with tempfile.TemporaryDirectory() as tmp:
            model, _ = mtp.prune(
                copy.deepcopy(job.model),
                mode=[("fastnas", _rules())],
                constraints={"flops": constraint},
                dummy_input=job.example,
                config={
                    "data_loader": job.train_batches,
                    "collect_func": lambda batch: batch[0],
                    "score_func": lambda m: _accuracy(m, job.val_batches),
                    "checkpoint": str(Path(tmp) / "search.pth"),
                },
            )
        macs = job.macs(model)
        if macs <= job.limit:
            return model
        constraint *= job.limit / macs * 0.99
    raise RuntimeError(f"modelopt fastnas stayed above {job.limit:,.0f} MACs after {TRIES} searches")
