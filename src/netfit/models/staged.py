"""StagedNet: the common shape of every built-in network (stem -> stages of blocks -> head), and of user models
cut into stages of residual blocks (``staged_graph``).

Within a stage every block after the first keeps the shape (stride 1, in == out), so a stage's block list can be
truncated or extended freely; methods rely on this for depth changes and per-block exits.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def conv_nd(ndim: int, *args, **kwargs) -> nn.Module:
    """Conv1d or Conv2d by the data's dimensionality."""
    return (nn.Conv1d if ndim == 1 else nn.Conv2d)(*args, **kwargs)


def bn_nd(ndim: int, channels: int) -> nn.Module:
    return (nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d)(channels)


def conv_bn(ndim: int, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """conv (no bias) + BN, padded to keep the size at stride 1."""
    return nn.Sequential(
        conv_nd(ndim, cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        bn_nd(ndim, cout),
    )


def build_stages(arch: dict, cin: int, make_block) -> tuple[list[nn.Sequential], int]:
    """The stages of a spec: ``make_block(cin, stage, block, stride, index)`` builds each block; only a stage's
    first block strides. Returns the stages and the output width."""
    stages = []
    for stage in arch["stages"]:
        if not stage["blocks"]:
            raise ValueError("every stage needs at least one block")
        blocks = []
        for j, block in enumerate(stage["blocks"]):
            blocks.append(make_block(cin, stage, block, stage["stride"] if j == 0 else 1, j))
            cin = stage["width"]
        stages.append(nn.Sequential(*blocks))
    return stages, cin


def ndim_of(conv: nn.Module) -> int:
    return 1 if isinstance(conv, nn.Conv1d) else 2


class Head(nn.Module):
    """Optional neck (1x1 conv-BN-ReLU6), global average pool, flatten, dropout, classifier ``fc``."""

    def __init__(self, ndim: int, in_features: int, num_classes: int, neck: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.neck = nn.Sequential(*conv_bn(ndim, in_features, neck, 1), nn.ReLU6(inplace=True)) if neck else None
        self.pool = nn.AdaptiveAvgPool1d(1) if ndim == 1 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(neck or in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.neck is not None:
            x = self.neck(x)
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))

    def describe(self) -> dict:
        return {
            "neck": self.neck[0].out_channels if self.neck is not None else 0,
            "dropout": self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0,
        }


class StagedNet(nn.Module):
    """Base of the built-ins: ``stem``, ``stages`` (ModuleList of Sequential blocks), ``head`` (with ``head.fc``)."""

    family: ClassVar[str] = ""

    def __init__(self, stem: nn.Module, stages: list[nn.Sequential], head: Head, ndim: int) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.ndim = ndim
        self.num_classes = head.fc.out_features
        self.num_features = head.fc.in_features
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
