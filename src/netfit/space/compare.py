"""Whether two networks compute the same function: the check behind every function-preserving transformation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def max_difference(a: nn.Module, b: nn.Module, input_shape: Sequence[int], batch: int = 8) -> float:
    """Largest absolute output difference of two models on the same random batch, in eval mode."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen).to(next(a.parameters()).device)
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())
