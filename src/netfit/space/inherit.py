"""Copy weights between models that share parameter names (depth changes of built-in models)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError


def inherit_weights(dst: nn.Module, src: nn.Module) -> dict[str, list[str]]:
    """Copy into ``dst`` every parameter/buffer of ``src`` with the same name and shape.

    A sub-network built with fewer blocks per stage keeps the leading blocks' names, so it inherits them;
    blocks only in ``dst`` keep their fresh initialisation.

    Returns:
        ``{"copied": names in both, "fresh": names only in dst, "dropped": names only in src}``.

    Raises:
        CheckpointError: a name is in both with different shapes (nothing is copied then).
    """
    dst_state, src_state = dst.state_dict(), src.state_dict()
    for name, value in dst_state.items():
        if name in src_state and src_state[name].shape != value.shape:
            raise CheckpointError(
                f"cannot inherit {name!r}: shape {tuple(src_state[name].shape)} in the source but "
                f"{tuple(value.shape)} in the destination; slice the source's channels first"
            )
    copied = [name for name in dst_state if name in src_state]
    with torch.no_grad():
        for name in copied:
            dst_state[name].copy_(src_state[name])
    return {
        "copied": copied,
        "fresh": [name for name in dst_state if name not in src_state],
        "dropped": [name for name in src_state if name not in dst_state],
    }
