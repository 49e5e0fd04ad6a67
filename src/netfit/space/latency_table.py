"""A per-layer latency table of an elastic supernet, measured on the target device, for latency budgets.

Every conv/linear layer is timed ALONE (a fresh layer of the same kind, kernel, stride and input size) at a few
fractions of its supernet width, with the budget's own backend and device, and fitted with
``t = a + b * channels`` (channels = C_in x C_out, or C for a depthwise conv: the quantity its MACs scale
with). The intercept is what MACs miss: a layer's fixed launch and memory cost, which makes shallow networks
and large-resolution layers cost more latency per MAC than deep narrow ones. The sum over the layers a network
keeps is then calibrated (least squares, scale and offset) against whole networks of the space measured the
same way, which absorbs what the table does not time (activations, additions, pooling, norms).

The expected latency of the soft architecture uses the same formula with expected widths and block keep
probabilities, so it is differentiable like the expected MACs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cost_formula import layer_channels

Timer = Callable[[nn.Module, Sequence[int]], float]  # (module, one sample's input shape) -> latency in ms
FRACTIONS = (0.25, 0.5, 1.0)


@dataclass
class LatencyTable:
    """``coefs[i]`` = (a, b) of layer i of ``ElasticNet.layers`` (None: not timed, e.g. norms); the network's
    latency is ``offset + scale * sum(keep_i * (a_i + b_i * channels_i))``."""

    coefs: list[tuple[float, float] | None]
    scale: float = 1.0
    offset: float = 0.0

    def summary(self) -> dict:
        return {"timed_layers": sum(c is not None for c in self.coefs), "scale": self.scale, "offset_ms": self.offset}

    def to_dict(self) -> dict:
        return {"coefs": self.coefs, "scale": self.scale, "offset": self.offset}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        return cls([tuple(c) if c is not None else None for c in d["coefs"]], float(d["scale"]), float(d["offset"]))


def measure_table(net, timer: Timer, fractions: Sequence[float] = FRACTIONS) -> LatencyTable:
    """Time every conv/linear layer of ``net`` (an ``ElasticNet``) alone at ``fractions`` of its width,
    calibrate the table against the smallest, a middle and the largest network of the space, and install it
    (``net.cost`` then includes ``latency_ms``)."""
    full = [g.size for g in net.gated]
    coefs: list[tuple[float, float] | None] = []
    for layer in net.layers:
        module = net.model.get_submodule(layer.module)
        if layer.kind == "norm" or not _timeable(module, layer.kind):
            coefs.append(None)
            continue
        points = []
        for f in fractions:
            cin, cout = (int(c) for c in layer_channels(layer, [max(1, round(f * n)) for n in full]))
            channels = cout if layer.kind == "depthwise" else cin * cout
            points.append((channels, timer(*_standalone(module, layer, cin, cout))))
        coefs.append(_fit_line(points))
    net.latency_table = table = LatencyTable(coefs)
    middle = net.largest()
    middle.units = [max(1, n // 2) for n in middle.units]
    archs = [net.smallest(), middle, net.largest()]
    sums = [float(net.cost(a, calibrated=False)["latency_ms"]) for a in archs]
    measured = [timer(net.materialize(a), net.input_shape) for a in archs]
    table.offset, table.scale = _fit_line(list(zip(sums, measured)))
    if table.scale == 0.0:  # noise swamped the differences: keep the table's shape, match the mean
        table.offset, table.scale = 0.0, sum(measured) / max(sum(sums), 1e-12)
    return table


def _timeable(module: nn.Module, kind: str) -> bool:
    """Linear layers and zero-padded convs that are plain (groups 1) or depthwise as the space gates them;
    other grouped convs are left to the calibration."""
    if isinstance(module, nn.Linear):
        return True
    conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros"
    return conv and (module.groups == 1 or kind == "depthwise")


def _standalone(module: nn.Module, layer, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh layer like ``module`` with ``cin`` -> ``cout`` channels, and its one-sample input shape."""
    if isinstance(module, nn.Linear):
        return nn.Linear(cin, cout, bias=module.bias is not None), (*layer.in_shape[:-1], cin)
    depthwise = layer.kind == "depthwise"
    fresh = type(module)(
        cout if depthwise else cin,
        cout,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=cout if depthwise else 1,
        bias=module.bias is not None,
    )
    return fresh, (cout if depthwise else cin, *layer.in_shape[1:])


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares t = a + b * c with a, b >= 0: timing noise must not make a layer cheaper when wider, nor
    a network's latency negative (a < 0: refit through the origin; b < 0: the mean)."""
    c = torch.tensor([p[0] for p in points], dtype=torch.float64)
    t = torch.tensor([p[1] for p in points], dtype=torch.float64)
    spread = float(((c - c.mean()) ** 2).sum())
    b = float(((c - c.mean()) * (t - t.mean())).sum() / spread) if spread > 0 else 0.0
    a = float(t.mean()) - b * float(c.mean())
    if b <= 0.0:
        return float(t.mean()), 0.0
    if a < 0.0:
        return 0.0, float((c * t).sum() / (c * c).sum())
    return a, b


__all__ = ["FRACTIONS", "LatencyTable", "Timer", "measure_table"]
