"""Whether two networks compute the same function: the check behind every function-preserving transformation."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


def max_difference(a: nn.Module, b: nn.Module, input_shape: Sequence[int], batch: int = 8) -> float:
    """Largest absolute output difference of two models on the same random batch, in eval mode, on CPU copies:
    whether a transformation kept the function is a property of the weights, which a GPU's TF32 convolutions
    would blur by about 1e-3 (measured on an H200)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen)
    with torch.no_grad():
        return float((_on_cpu(a)(x) - _on_cpu(b)(x)).abs().max())


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` in eval mode on the CPU: itself where it is there already, else a copy (the original stays put)."""
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    return model.eval() if on_cpu else copy.deepcopy(model).cpu().eval()
