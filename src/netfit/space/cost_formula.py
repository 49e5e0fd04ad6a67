"""The cost model's formula over an elastic supernet's gated widths and block keeps, as a few tensor operations.

Every conv/linear layer costs ``macs_coef * C_in * C_out`` MACs (``C`` for a depthwise conv) and
``params_coef * C_in * C_out`` (+ bias) parameters, a norm ``params_coef * C`` parameters, each scaled by the keep
value of the block holding it; ``C_in`` and ``C_out`` are affine in the gated groups' widths. ``CostFormula``
holds those coefficients as matrices, so the cost of R architectures (0/1 or expected widths) is one batched
evaluation: DNA's architecture pass asks it for every budget's expected network at every step, where a Python
loop over layers and budgets used to cost as much as a tenth of the step (in its forward and its backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..cost import count_cost
from .layers import CONVS, dim_size

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


@dataclass
class CostLayer:
    """One conv/linear/norm layer as the cost model sees it: cost = macs_coef * C_in * C_out (+ params)."""

    kind: str  # "dense" (conv/linear), "depthwise" (cost ~ C) or "norm" (2 params per channel)
    macs_coef: float
    params_coef: float
    bias: bool
    ins: list[tuple[int, int]] = field(default_factory=list)  # (gate, repeat) feeding the input dim
    in_fixed: int = 0
    outs: list[tuple[int, int]] = field(default_factory=list)
    out_fixed: int = 0
    block: int | None = None  # index of the skippable block holding the layer
    module: str = ""  # its name in the model
    in_shape: tuple[int, ...] = ()  # one sample's input shape in the supernet


def layer_channels(layer: CostLayer, width: Sequence) -> tuple:
    """A layer's input and output channels when gated group i keeps ``width[i]`` channels."""
    cin = layer.in_fixed + sum(width[g] * r for g, r in layer.ins)
    cout = layer.out_fixed + sum(width[g] * r for g, r in layer.outs)
    return cin, cout


class CostFormula:
    """The formula of ``layers`` over ``num_gates`` gated widths and the skippable blocks' keeps, batched over rows.

    ``formula(width, keep)`` with ``width`` of shape (R, num_gates) and ``keep`` (R, blocks) returns MACs and
    params of shape (R,), uncalibrated, in the dtype of ``width`` (float64 keeps integer costs exact); with
    per-layer latency ``coefs`` (a, b) also ``latency``: sum over kept layers of a + b * channels."""

    def __init__(self, layers: Sequence[CostLayer], num_gates: int) -> None:
        def affine(side: str) -> tuple[torch.Tensor, torch.Tensor]:
            matrix = torch.zeros(len(layers), num_gates, dtype=torch.float64)
            for i, layer in enumerate(layers):
                for g, repeat in layer.ins if side == "in" else layer.outs:
                    matrix[i, g] += repeat
            fixed = [layer.in_fixed if side == "in" else layer.out_fixed for layer in layers]
            return matrix, torch.tensor(fixed, dtype=torch.float64)

        def column(values) -> torch.Tensor:
            return torch.tensor([float(v) for v in values], dtype=torch.float64)

        self.in_matrix, self.in_fixed = affine("in")
        self.out_matrix, self.out_fixed = affine("out")
        self.norm = column(layer.kind == "norm" for layer in layers)
        self.depthwise = column(layer.kind == "depthwise" for layer in layers)
        self.macs_coef = column(0.0 if layer.kind == "norm" else layer.macs_coef for layer in layers)
        self.params_coef = column(layer.params_coef for layer in layers)
        self.bias = column(layer.bias for layer in layers)
        self.block = torch.tensor([0 if layer.block is None else layer.block + 1 for layer in layers])

    def __call__(
        self, width: torch.Tensor, keep: torch.Tensor, coefs: Sequence[tuple[float, float] | None] | None = None
    ) -> dict[str, torch.Tensor]:
        def as_width(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=width.device, dtype=width.dtype)

        cin = width @ as_width(self.in_matrix).T + as_width(self.in_fixed)  # (R, layers)
        cout = width @ as_width(self.out_matrix).T + as_width(self.out_fixed)
        depthwise, norm = as_width(self.depthwise), as_width(self.norm)
        # a layer outside every skippable block is always kept (column 0)
        scale = torch.cat([keep.new_ones(len(keep), 1), keep], 1).to(width)[:, self.block.to(width.device)]
        channels = depthwise * cout + (1 - depthwise) * cin * cout  # what MACs scale with
        dense_params = as_width(self.params_coef) * channels + as_width(self.bias) * cout
        params = norm * as_width(self.params_coef) * cout + (1 - norm) * dense_params
        cost = {"macs": (scale * as_width(self.macs_coef) * channels).sum(1), "params": (scale * params).sum(1)}
        if coefs is not None:
            a, b = (as_width(torch.tensor([c[k] if c else 0.0 for c in coefs], dtype=torch.float64)) for k in (0, 1))
            cost["latency"] = (scale * (a + b * channels)).sum(1)
        return cost


def calibrated_formula(
    model: nn.Module, input_shape: Sequence[int], groups: Sequence, gated: Sequence, blocks: Sequence[tuple[int, int]]
) -> tuple[list[CostLayer], CostFormula, dict[str, float]]:
    """The formula of ``model``'s layers over the ``gated`` groups' widths (in that order) and the skippable
    ``blocks``' keeps, with the offset that calibrates it to the cost model at full size (what it does not see is
    counted as fixed there): (layers, formula, offset per metric)."""
    layers = trace_layers(model, input_shape, groups, {g.id: i for i, g in enumerate(gated)}, blocks)
    formula = CostFormula(layers, len(gated))
    full = count_cost(model, input_shape)
    width = torch.tensor([[float(g.size) for g in gated]], dtype=torch.float64)
    raw = formula(width, torch.ones(1, len(blocks), dtype=torch.float64))
    return layers, formula, {"macs": full.macs - float(raw["macs"][0]), "params": full.params - float(raw["params"][0])}


def trace_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    groups: Sequence,
    gate_of: dict[int, int],
    blocks: Sequence[tuple[int, int]],
) -> list[CostLayer]:
    """The conv/linear/norm layers of ``model`` with their cost coefficients and the gates (indices in ``gate_of``)
    of the channel ``groups`` feeding them; ``blocks`` are the (stage, index) of the skippable blocks."""
    members: dict[tuple[str, str], list[tuple[int | None, int, int]]] = {}
    for g in groups:
        for m in g.members:
            members.setdefault((m.module, m.role), []).append((gate_of.get(g.id), g.size * m.repeat, m.repeat))
    shapes, in_shapes = _io_shapes(model, input_shape)
    block_of = {f"stages.{s}.{j}.": k for k, (s, j) in enumerate(blocks)}
    layers = []
    for name, module in model.named_modules():
        if name not in shapes or not isinstance(module, (*CONVS, nn.Linear, *NORMS)):
            continue
        block = next((k for prefix, k in block_of.items() if name.startswith(prefix)), None)
        if isinstance(module, NORMS):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                continue
            layer = CostLayer("norm", 0.0, 2.0 if module.bias is not None else 1.0, False, block=block)
            _fill(layer, "out", members.get((name, "norm"), []), dim_size(module, "norm"))
            layers.append(layer)
            continue
        out = shapes[name]
        conv = isinstance(module, CONVS)
        cout = module.out_channels if conv else module.out_features
        positions = out.numel() / cout
        kernel = math.prod(module.kernel_size) if conv else 1
        depthwise = (name, "dw") in members
        conv_groups = module.groups if conv and not depthwise else 1
        layer = CostLayer(
            "depthwise" if depthwise else "dense",
            positions * kernel / conv_groups,
            kernel / conv_groups,
            module.bias is not None,
            block=block,
            module=name,
            in_shape=in_shapes[name],
        )
        if depthwise:
            _fill(layer, "out", members[(name, "dw")], cout)
        else:
            _fill(layer, "in", members.get((name, "in"), []), dim_size(module, "in"))
            _fill(layer, "out", members.get((name, "out"), []), cout)
        layers.append(layer)
    return layers


def _fill(layer: CostLayer, side: str, parts: list[tuple[int | None, int, int]], size: int) -> None:
    gated = [(g, r) for g, _, r in parts if g is not None]
    fixed = size - sum(span for g, span, _ in parts if g is not None)
    if side == "in":
        layer.ins, layer.in_fixed = gated, fixed
    else:
        layer.outs, layer.out_fixed = gated, fixed


def _io_shapes(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, torch.Size], dict[str, tuple]]:
    """Output shapes (with batch 1) and one-sample input shapes of the conv/linear/norm layers."""
    shapes: dict[str, torch.Size] = {}
    in_shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            shapes.setdefault(name, out.shape)
            in_shapes.setdefault(name, tuple(args[0].shape[1:]))

        return hook

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (*CONVS, nn.Linear, *NORMS))]
    handles = [m.register_forward_hook(record(name)) for name, m in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return shapes, in_shapes
