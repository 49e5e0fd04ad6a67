"""Light, batch-wise augmentation with torch only: random translation (pad + crop) and horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _pad(height: int) -> int:
    return max(1, height // 8)


def augmentations(kind: str | None, input_shape: Sequence[int]) -> int:
    """How many distinct versions of one sample of ``input_shape`` ``augment`` draws from (1: none)."""
    if not kind or len(input_shape) != 3:
        return 1
    return (2 * _pad(input_shape[1]) + 1) ** 2 * (2 if kind == "crop_flip" else 1)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly shift every image by up to max(1, H // 8) pixels (zero padding); "crop_flip" also flips half.

    Returns the batch and which version each sample got (an index below ``augmentations``), so that a frozen
    model's output on it can be remembered (``distill.CachedTeacher``). 1-D signals (N, C, L) are returned
    unchanged (version 0).
    """
    if x.ndim != 4:
        return x, torch.zeros(len(x), dtype=torch.long, device=x.device)
    n, c, h, w = x.shape
    pad = _pad(h)
    rand_device = generator.device if generator is not None else x.device

    def randint(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=rand_device).to(x.device)

    dy, dx = randint(2 * pad + 1), randint(2 * pad + 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    row_idx = torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)
    col_idx = torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)
    rows = padded.gather(2, row_idx.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    out = rows.gather(3, col_idx.view(n, 1, 1, w).expand(n, c, h, w))
    version = dy * (2 * pad + 1) + dx
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator, device=rand_device).to(x.device) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
        version = version + flip.long() * (2 * pad + 1) ** 2
    return out, version
