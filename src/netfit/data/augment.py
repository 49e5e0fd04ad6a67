"""Light, batch-wise augmentation with torch only: random translation (pad + crop) and horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly shift every image by up to max(1, H // 8) pixels (zero padding); "crop_flip" also flips half.

    1-D signals (N, C, L) are returned unchanged.
    """
    if x.ndim != 4:
        return x
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    rand_device = generator.device if generator is not None else x.device

    def randint(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=rand_device).to(x.device)

    dy, dx = randint(2 * pad + 1), randint(2 * pad + 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    row_idx = torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)
    col_idx = torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)
    rows = padded.gather(2, row_idx.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    out = rows.gather(3, col_idx.view(n, 1, 1, w).expand(n, c, h, w))
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator, device=rand_device).to(x.device) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out
