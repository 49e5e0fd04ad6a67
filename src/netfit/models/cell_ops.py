"""The operations of cell search spaces (DARTS-style cells of DNAD and SpiderNet), for 1-D and 2-D data.

Every operation maps ``C`` channels to ``C`` channels and keeps the spatial size at stride 1 or halves it at
stride 2 (``ceil(n / 2)``, so odd sizes such as 7x7 still reduce). ``make_op(name, ndim, C, stride)`` builds one;
``OPS`` lists the names. ``none`` is the zero operation: a node input that contributes nothing and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .staged import bn_nd, conv_nd

__all__ = ["DARTS_OPS", "OPS", "FactorizedReduce", "Zero", "make_op", "relu_conv_bn"]


def relu_conv_bn(ndim: int, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """ReLU -> conv (no bias) -> BN, the preprocessing unit of DARTS cells."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        conv_nd(ndim, cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        bn_nd(ndim, cout),
    )


def _dil_conv(ndim: int, cin: int, cout: int, kernel: int, stride: int, dilation: int) -> nn.Sequential:
    """ReLU -> depthwise (dilated) conv -> pointwise conv -> BN."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.ReLU(inplace=False),
        conv_nd(ndim, cin, cin, kernel, stride=stride, padding=padding, dilation=dilation, groups=cin, bias=False),
        conv_nd(ndim, cin, cout, 1, bias=False),
        bn_nd(ndim, cout),
    )


def _sep_conv(ndim: int, channels: int, kernel: int, stride: int) -> nn.Sequential:
    """Two stacked dilation-1 depthwise-separable units; only the first strides (as in DARTS)."""
    return nn.Sequential(
        *_dil_conv(ndim, channels, channels, kernel, stride, 1),
        *_dil_conv(ndim, channels, channels, kernel, 1, 1),
    )


def _pool(ndim: int, kind: str, stride: int) -> nn.Module:
    if kind == "avg":
        cls = nn.AvgPool1d if ndim == 1 else nn.AvgPool2d
        return cls(3, stride=stride, padding=1, count_include_pad=False)
    cls = nn.MaxPool1d if ndim == 1 else nn.MaxPool2d
    return cls(3, stride=stride, padding=1)


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape (no compute, no parameters)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        index = (..., *[slice(None, None, self.stride)] * (x.dim() - 2))
        return torch.zeros_like(x[index])


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convs, concatenated (the skip of a reduction edge)."""

    def __init__(self, ndim: int, cin: int, cout: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = conv_nd(ndim, cin, cout // 2, 1, stride=2, bias=False)
        self.conv_b = conv_nd(ndim, cin, cout - cout // 2, 1, stride=2, bias=False)
        self.bn = bn_nd(ndim, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        a = self.conv_a(x)
        # The second conv sees the input shifted by one position; padding keeps odd sizes aligned with conv_a.
        shifted = nn.functional.pad(x[(..., *[slice(1, None)] * self.ndim)], [0, 1] * self.ndim)
        return self.bn(torch.cat([a, self.conv_b(shifted)], dim=1))


def _skip(ndim: int, channels: int, stride: int) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(ndim, channels, channels)


_Builder = Callable[[int, int, int], nn.Module]  # (ndim, channels, stride) -> module

_BUILDERS: dict[str, _Builder] = {
    "none": lambda ndim, c, s: Zero(s),
    "skip_connect": _skip,
    "avg_pool_3x3": lambda ndim, c, s: _pool(ndim, "avg", s),
    "max_pool_3x3": lambda ndim, c, s: _pool(ndim, "max", s),
    "sep_conv_3x3": lambda ndim, c, s: _sep_conv(ndim, c, 3, s),
    "sep_conv_5x5": lambda ndim, c, s: _sep_conv(ndim, c, 5, s),
    "sep_conv_7x7": lambda ndim, c, s: _sep_conv(ndim, c, 7, s),
    "dil_conv_3x3": lambda ndim, c, s: _dil_conv(ndim, c, c, 3, s, 2),
    "dil_conv_5x5": lambda ndim, c, s: _dil_conv(ndim, c, c, 5, s, 2),
    "conv_1x1": lambda ndim, c, s: relu_conv_bn(ndim, c, c, 1, s),
    "conv_3x3": lambda ndim, c, s: relu_conv_bn(ndim, c, c, 3, s),
}

OPS: tuple[str, ...] = tuple(_BUILDERS)
"""Every operation name ``make_op`` knows."""

DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""The eight operations of the DARTS paper."""


def make_op(name: str, ndim: int, channels: int, stride: int = 1) -> nn.Module:
    """Build operation ``name`` for ``ndim``-D data (1 or 2) on ``channels`` channels at ``stride`` (1 or 2)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPS)}")
    if ndim not in (1, 2) or stride not in (1, 2) or channels < 2:
        raise ValueError(f"ndim must be 1 or 2, stride 1 or 2, channels >= 2 (got {ndim}, {stride}, {channels})")
    return _BUILDERS[name](ndim, channels, stride)
