"""The memory layout a training uses: channels_last for images on CPU where it is safe and faster, the default
layout everywhere else and after training."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .config import TrainConfig

logger = logging.getLogger("netfit")


def channels_last(
    config: TrainConfig, device: torch.device, input_shape: Sequence[int], model: nn.Module | None = None
) -> bool:
    """Whether training ``model`` with ``config`` on ``device`` uses the channels_last layout: for images (C, H, W)
    only, by default on CPU (``TrainConfig.channels_last``), and never on CPU for a model with a strided 1x1
    convolution (``strided_pointwise``)."""
    wanted = config.channels_last if config.channels_last is not None else device.type == "cpu"
    if not (wanted and len(input_shape) == 3):
        return False
    if device.type == "cpu" and model is not None and strided_pointwise(model):
        if config.channels_last:
            name = type(model).__name__
            logger.warning("channels_last is unsafe on CPU for %s (a strided 1x1 convolution): default layout", name)
        return False
    return True


def strided_pointwise(model: nn.Module) -> bool:
    """Whether ``model`` has a 1x1 convolution with a stride (a ResNet's projection shortcut). oneDNN's
    channels_last backward of one with fewer than 8 input channels corrupts the heap on CPU (torch 2.13: a [2, 4,
    1, 1] stride-2 convolution on 8 x [4, 8, 8], the input or the weight in channels_last, aborts the process), and
    sliced and pruned sub-networks of any ResNet get there; the default layout is safe."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) for m in model.modules())


@contextmanager
def channels_last_layout(model: nn.Module, on: bool) -> Iterator[None]:
    """``model``'s 4-D weights in the channels_last layout inside the block (``on``), in the default layout
    after it: the layout is training's business; what comes after (export, slicing, cost and latency
    measurement) sees the default one."""
    if not on:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)
