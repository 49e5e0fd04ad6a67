"""Batch-norm recalibration: the running statistics a sub-network needs before it is evaluated or fine-tuned.

A sub-network cut out of a trained (super)network inherits the running means and variances its batch norms
had inside the larger network. Every layer after the first cut sees fewer input channels or skipped blocks, so
its pre-norm activations have other statistics, and normalising them with the inherited ones can push the
network to chance accuracy even though its weights are fine. OFA, BigNAS and DNA therefore re-estimate the
statistics on a few hundred training samples (no gradient, no weight change) before judging a sub-network.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

RECALIBRATION_SAMPLES = 512  # enough for stable estimates on the built-in data; a few batches


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norms normalise with batch statistics but leave their running statistics alone (momentum 0), so
    extra passes (sub-networks of a supernet, soft mixtures) do not mix their statistics into the ones the
    networks are evaluated with."""
    norms = _norms(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def recalibration_batches(n: int, samples: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """The sample indices ``recalibrate_norms`` feeds, batch by batch: a seeded draw of ``samples`` of ``n``,
    without batches of one (batch statistics need two samples)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples]
    return [batch for batch in order.split(batch_size) if len(batch) > 1]


@torch.no_grad()
def recalibrate_norms(
    model: nn.Module, data: Any, samples: int = RECALIBRATION_SAMPLES, batch_size: int = 128, seed: int = 0
) -> int:
    """Re-estimate every batch norm's running statistics of ``model`` on ``samples`` training samples.

    The statistics are reset and then accumulated as an exact average over the batches (momentum None), with
    the rest of the model in eval mode (dropout off) and no gradients. The samples are a seeded draw, so every
    process of a distributed run (and a resumed run) computes the same statistics. Norms the forward pass does
    not reach keep their statistics. Returns the number of batch norms recalibrated (0: nothing to do, the
    model is left untouched).
    """
    norms = _norms(model)
    if not norms:
        return 0
    x_all, _ = data.train.tensors
    device = next(model.parameters()).device
    was_training = model.training
    saved = [(m.momentum, copy.deepcopy(m.state_dict())) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches seen
        m.train()
    try:
        for batch in recalibration_batches(len(x_all), samples, batch_size, seed):
            model(data.prepare(x_all[batch].to(device), train=False))
    finally:
        for m, (momentum, state) in zip(norms, saved):
            m.momentum = momentum
            if m.num_batches_tracked == 0:  # not on the forward path (e.g. blocks past an exit): left as it was
                m.load_state_dict(state)
        model.train(was_training)
    return len(norms)


__all__ = ["RECALIBRATION_SAMPLES", "frozen_norm_statistics", "recalibrate_norms", "recalibration_batches"]
