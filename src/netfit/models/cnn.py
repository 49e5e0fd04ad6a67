"""Small residual CNNs for 8x8 images (``cnn_small``) and 1-D signals (``cnn1d``).

Spec: {"family": "cnn", "num_classes", "in_chans", "ndim", "kernel", "stem": {"width"},
       "stages": [{"stride", "width", "blocks": [{}, ...]}], "head": {"neck": 0, "dropout": 0.0}}
Block 0 of a stage is conv(stride)-BN-ReLU to the stage width; later blocks are residual conv-BN + identity, so
every stage has one width and blocks after the first can be dropped or added.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import FAMILIES, MODELS, require_positive, scale_width
from .staged import Head, StagedNet, build_stages, conv_bn, ndim_of


class ConvBlock(nn.Module):
    def __init__(self, ndim: int, cin: int, cout: int, kernel: int, stride: int, residual: bool) -> None:
        super().__init__()
        if residual and (cin != cout or stride != 1):
            raise ValueError("a residual block keeps its width and stride 1")
        self.conv = conv_bn(ndim, cin, cout, kernel, stride)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return self.relu(x + out if self.residual else out)


class SmallCNN(StagedNet):
    family = "cnn"


@FAMILIES.register("cnn")
class CNNFamily:
    name = "cnn"

    @staticmethod
    def build(arch: dict) -> SmallCNN:
        require_positive(arch, "num_classes", "in_chans", "kernel", "stem.width")
        ndim, kernel = arch.get("ndim", 2), arch["kernel"]
        stem = nn.Sequential(*conv_bn(ndim, arch["in_chans"], arch["stem"]["width"], kernel), nn.ReLU(inplace=True))
        stages, cin = build_stages(
            arch,
            arch["stem"]["width"],
            lambda cin, stage, _, stride, j: ConvBlock(ndim, cin, stage["width"], kernel, stride, residual=j > 0),
        )
        return SmallCNN(stem, stages, Head(ndim, cin, arch["num_classes"], **arch.get("head", {})), ndim)

    @staticmethod
    def describe(model: SmallCNN) -> dict:
        conv = model.stem[0]
        return {
            "family": "cnn",
            "num_classes": model.head.fc.out_features,
            "in_chans": conv.in_channels,
            "ndim": ndim_of(conv),
            "kernel": conv.kernel_size[0],
            "stem": {"width": conv.out_channels},
            "stages": [
                {"stride": s[0].conv[0].stride[0], "width": s[0].conv[0].out_channels, "blocks": [{} for _ in s]}
                for s in model.stages
            ],
            "head": model.head.describe(),
        }


def _cnn_arch(widths: tuple[int, ...], strides: tuple[int, ...], kernel: int, ndim: int, blocks: int = 2):
    def factory(
        num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, depths: list[int] | None = None
    ) -> dict:
        depths = depths or [blocks] * len(widths)
        stages = [
            {"stride": s, "width": scale_width(w, width_mult), "blocks": [{} for _ in range(n)]}
            for w, s, n in zip(widths, strides, depths)
        ]
        return {
            "family": "cnn",
            "num_classes": num_classes,
            "in_chans": in_chans,
            "ndim": ndim,
            "kernel": kernel,
            "stem": {"width": scale_width(widths[0], width_mult)},
            "stages": stages,
            "head": {"neck": 0, "dropout": 0.0},
        }

    return factory


MODELS.register("cnn_small")(_cnn_arch((32, 64), (1, 2), kernel=3, ndim=2))
MODELS.register("cnn1d")(_cnn_arch((32, 64, 128), (1, 2, 2), kernel=5, ndim=1))
