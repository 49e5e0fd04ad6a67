"""The layer kinds whose channels netfit follows (convs, norms), and the size of the layer dimension a
channel group claims. Shared by the tracer, pruning, growth and the elastic supernet; and the batch norm of a
batch whose shares belong to different networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def dim_size(module: nn.Module, role: str) -> int | None:
    """Channels of ``module`` along ``role``'s dimension ("out", "in", "dw" or "norm"); None if it has none."""
    if role == "out":
        return getattr(module, "out_channels", getattr(module, "out_features", None))
    if role in ("in", "dw"):
        return getattr(module, "in_channels", getattr(module, "in_features", None))
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return getattr(module, "num_features", getattr(module, "num_channels", None))


def share_batch_norm(
    x: torch.Tensor, parts: list[slice], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``x`` normalised share by share (``parts``: consecutive slices covering the batch), each on its own batch
    statistics, running statistics untouched: what a training-mode batch norm computes for each share alone.
    The shares are taken with ``split``, whose backward is one ``cat`` of their gradients: indexing each share
    (``x[part]``) back-propagated a zero tensor of the whole batch per share, then their sum (a quarter of the
    batch norms' time in a MobileNetV2 search step), and in the default memory format whatever ``x``'s was."""
    pieces = x.split([part.stop - part.start for part in parts])
    return torch.cat([F.batch_norm(piece, None, None, weight, bias, True, 0.0, eps) for piece in pieces])
