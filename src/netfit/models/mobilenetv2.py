"""MobileNetV2 as an arch spec.

Spec: {"family": "mobilenetv2", "num_classes", "in_chans", "ndim": 2, "stem": {"width", "stride"},
       "stages": [{"stride", "width", "expand": bool, "kernel", "blocks": [{"hidden"}...]}],
       "head": {"neck": 1280, "dropout": 0.2}}
A block is an inverted residual: (1x1 expand to "hidden" when expand) -> depthwise kxk -> 1x1 project to the
stage width, with a residual when stride 1 and in == out. Without expand, hidden equals the block input width.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import FAMILIES, MODELS, make_divisible, require_positive
from .staged import Head, StagedNet, build_stages, conv_bn

# (expansion t, width c, blocks n, stride s) of the standard network
_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
    """MBConv: (1x1 expand to ``hidden``) -> depthwise ``kernel`` -> 1x1 project, 1-D or 2-D (``ndim``)."""

    def __init__(
        self,
        cin: int,
        hidden: int,
        cout: int,
        stride: int,
        kernel: int,
        expand: bool,
        residual: bool | None = None,
        ndim: int = 2,
    ) -> None:
        super().__init__()
        if not expand and hidden != cin:
            raise ValueError(f"a block without expansion needs hidden == input width ({hidden} != {cin})")
        self.expand = nn.Sequential(*conv_bn(ndim, cin, hidden, 1), nn.ReLU6(inplace=True)) if expand else nn.Identity()
        self.depthwise = nn.Sequential(
            *conv_bn(ndim, hidden, hidden, kernel, stride, groups=hidden), nn.ReLU6(inplace=True)
        )
        self.project = conv_bn(ndim, hidden, cout, 1)
        self.use_residual = stride == 1 and cin == cout if residual is None else residual
        if self.use_residual and (stride != 1 or cin != cout):
            raise ValueError(f"a residual block needs stride 1 and equal widths (got {cin} -> {cout}, stride {stride})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(StagedNet):
    family = "mobilenetv2"


@FAMILIES.register("mobilenetv2")
class MobileNetV2Family:
    name = "mobilenetv2"

    @staticmethod
    def build(arch: dict) -> MobileNetV2:
        require_positive(arch, "num_classes", "in_chans", "stem.width", "stem.stride")
        stem = nn.Sequential(
            *conv_bn(2, arch["in_chans"], arch["stem"]["width"], 3, arch["stem"]["stride"]), nn.ReLU6(inplace=True)
        )
        stages, cin = build_stages(
            arch,
            arch["stem"]["width"],
            lambda cin, stage, block, stride, j: InvertedResidual(
                cin,
                block["hidden"] if stage["expand"] else cin,
                stage["width"],
                stride,
                stage["kernel"],
                stage["expand"],
                stage.get("first_residual") if j == 0 else None,
            ),
        )
        return MobileNetV2(stem, stages, Head(2, cin, arch["num_classes"], **arch.get("head", {})), 2)

    @staticmethod
    def describe(model: MobileNetV2) -> dict:
        stages = []
        for stage in model.stages:
            b0 = stage[0]
            dw = b0.depthwise[0]
            spec = {
                "stride": dw.stride[0],
                "width": b0.project[0].out_channels,
                "expand": not isinstance(b0.expand, nn.Identity),
                "kernel": dw.kernel_size[0],
                "blocks": [{"hidden": b.depthwise[0].out_channels} for b in stage],
            }
            cin = b0.depthwise[0].in_channels if isinstance(b0.expand, nn.Identity) else b0.expand[0].in_channels
            if b0.use_residual != (spec["stride"] == 1 and cin == spec["width"]):
                spec["first_residual"] = b0.use_residual  # slicing made the widths (un)equal: keep the topology
            stages.append(spec)
        conv = model.stem[0]
        return {
            "family": "mobilenetv2",
            "num_classes": model.head.fc.out_features,
            "in_chans": conv.in_channels,
            "ndim": 2,
            "stem": {"width": conv.out_channels, "stride": conv.stride[0]},
            "stages": stages,
            "head": model.head.describe(),
        }


def _mobilenetv2_arch(cifar: bool):
    def factory(
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        depths: list[int] | None = None,
        dropout: float = 0.2,
    ) -> dict:
        depths = depths or [n for _, _, n, _ in _CONFIG]
        stages, cin = [], make_divisible(32 * width_mult)
        for i, ((t, c, _, s), n) in enumerate(zip(_CONFIG, depths)):
            width = make_divisible(c * width_mult)
            stride = 1 if cifar and i == 1 else s
            blocks = []
            for j in range(n):
                block_in = cin if j == 0 else width
                blocks.append({"hidden": block_in * t})
            stages.append({"stride": stride, "width": width, "expand": t != 1, "kernel": 3, "blocks": blocks})
            cin = width
        return {
            "family": "mobilenetv2",
            "num_classes": num_classes,
            "in_chans": in_chans,
            "ndim": 2,
            "stem": {"width": make_divisible(32 * width_mult), "stride": 1 if cifar else 2},
            "stages": stages,
            "head": {"neck": make_divisible(1280 * max(1.0, width_mult)), "dropout": dropout},
        }

    return factory


MODELS.register("mobilenetv2")(_mobilenetv2_arch(cifar=False))
MODELS.register("mobilenetv2_cifar")(_mobilenetv2_arch(cifar=True))
