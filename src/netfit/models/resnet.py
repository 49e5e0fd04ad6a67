"""ResNets (basic and bottleneck blocks; ImageNet or CIFAR stem; 1-D or 2-D) as arch specs.

Spec: {"family": "resnet", "num_classes", "in_chans", "ndim", "block": "basic"|"bottleneck",
       "stem": {"type": "cifar"|"imagenet", "width"}, "stages": [{"stride", "width", "blocks": [{"mid"}...]}],
       "head": {"neck": 0, "dropout": 0.0}}
"width" is a stage's residual-stream width (every block's output); "mid" the inner width of a block.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import FAMILIES, MODELS, require_positive, scale_width
from .staged import Head, StagedNet, bn_nd, build_stages, conv_bn, conv_nd, ndim_of


class BasicBlock(nn.Module):
    def __init__(self, ndim: int, cin: int, mid: int, cout: int, stride: int, projection: bool | None = None) -> None:
        super().__init__()
        self.conv1 = conv_nd(ndim, cin, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn_nd(ndim, mid)
        self.conv2 = conv_nd(ndim, mid, cout, 3, padding=1, bias=False)
        self.bn2 = bn_nd(ndim, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(ndim, cin, cout, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, ndim: int, cin: int, mid: int, cout: int, stride: int, projection: bool | None = None) -> None:
        super().__init__()
        self.conv1 = conv_nd(ndim, cin, mid, 1, bias=False)
        self.bn1 = bn_nd(ndim, mid)
        self.conv2 = conv_nd(ndim, mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = bn_nd(ndim, mid)
        self.conv3 = conv_nd(ndim, mid, cout, 1, bias=False)
        self.bn3 = bn_nd(ndim, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(ndim, cin, cout, stride, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(ndim: int, cin: int, cout: int, stride: int, projection: bool | None) -> nn.Module:
    """Identity when the shape is kept, else a strided 1x1 conv-BN; ``projection`` overrides the rule (a sliced
    block whose widths became equal keeps its projection)."""
    if projection is None:
        projection = stride != 1 or cin != cout
    if not projection and (stride != 1 or cin != cout):
        raise ValueError(f"an identity shortcut needs stride 1 and equal widths (got {cin} -> {cout}, stride {stride})")
    return conv_bn(ndim, cin, cout, 1, stride) if projection else nn.Identity()


class ResNet(StagedNet):
    family = "resnet"


class Stem(nn.Module):
    """3x3/1 conv (CIFAR) or 7x7/2 conv + 3x3/2 max-pool (ImageNet), then BN + ReLU."""

    def __init__(self, ndim: int, cin: int, width: int, kind: str) -> None:
        super().__init__()
        big = kind == "imagenet"
        self.conv = conv_nd(
            ndim, cin, width, 7 if big else 3, stride=2 if big else 1, padding=3 if big else 1, bias=False
        )
        self.bn = bn_nd(ndim, width)
        self.relu = nn.ReLU(inplace=True)
        pool = nn.MaxPool1d if ndim == 1 else nn.MaxPool2d
        self.pool = pool(3, stride=2, padding=1) if big else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.relu(self.bn(self.conv(x))))


@FAMILIES.register("resnet")
class ResNetFamily:
    name = "resnet"

    @staticmethod
    def build(arch: dict) -> ResNet:
        require_positive(arch, "num_classes", "in_chans", "stem.width")
        ndim, kind = arch.get("ndim", 2), arch["stem"]["type"]
        if ndim not in (1, 2) or kind not in ("cifar", "imagenet") or arch["block"] not in ("basic", "bottleneck"):
            raise ValueError("ndim must be 1 or 2, stem.type cifar|imagenet, block basic|bottleneck")
        block_cls = BasicBlock if arch["block"] == "basic" else Bottleneck
        stem = Stem(ndim, arch["in_chans"], arch["stem"]["width"], kind)
        stages, cin = build_stages(
            arch,
            arch["stem"]["width"],
            lambda cin, stage, block, stride, j: block_cls(
                ndim, cin, block["mid"], stage["width"], stride, stage.get("first_projection") if j == 0 else None
            ),
        )
        head = Head(ndim, cin, arch["num_classes"], **arch.get("head", {}))
        return ResNet(stem, stages, head, ndim)

    @staticmethod
    def describe(model: ResNet) -> dict:
        first = model.stages[0][0]
        bottleneck = isinstance(first, Bottleneck)
        stages = []
        for stage in model.stages:
            b0 = stage[0]
            stride = (b0.conv2 if bottleneck else b0.conv1).stride[0]
            width = (b0.conv3 if bottleneck else b0.conv2).out_channels
            spec = {"stride": stride, "width": width, "blocks": [{"mid": b.conv1.out_channels} for b in stage]}
            projection = not isinstance(b0.shortcut, nn.Identity)
            if projection != (stride != 1 or b0.conv1.in_channels != width):
                spec["first_projection"] = projection  # slicing made the widths equal: keep the topology
            stages.append(spec)
        return {
            "family": "resnet",
            "num_classes": model.head.fc.out_features,
            "in_chans": model.stem.conv.in_channels,
            "ndim": ndim_of(model.stem.conv),
            "block": "bottleneck" if bottleneck else "basic",
            "stem": {
                "type": "cifar" if isinstance(model.stem.pool, nn.Identity) else "imagenet",
                "width": model.stem.conv.out_channels,
            },
            "stages": stages,
            "head": model.head.describe(),
        }


def resnet_arch(depths: list[int], block: str, stem: str, ndim: int = 2):
    """A registry factory for a standard ResNet configuration."""

    def factory(
        num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0, depths: list[int] = depths, stem: str = stem
    ) -> dict:
        expansion = 4 if block == "bottleneck" else 1
        stages = []
        for i, (base, n) in enumerate(zip((64, 128, 256, 512), depths)):
            mid = scale_width(base, width_mult)
            stages.append(
                {"stride": 1 if i == 0 else 2, "width": mid * expansion, "blocks": [{"mid": mid} for _ in range(n)]}
            )
        return {
            "family": "resnet",
            "num_classes": num_classes,
            "in_chans": in_chans,
            "ndim": ndim,
            "block": block,
            "stem": {"type": stem, "width": scale_width(64, width_mult)},
            "stages": stages,
            "head": {"neck": 0, "dropout": 0.0},
        }

    return factory


for _name, _depths, _block in (
    ("resnet18", [2, 2, 2, 2], "basic"),
    ("resnet34", [3, 4, 6, 3], "basic"),
    ("resnet50", [3, 4, 6, 3], "bottleneck"),
):
    MODELS.register(_name)(resnet_arch(_depths, _block, "imagenet"))
    MODELS.register(f"{_name}_cifar")(resnet_arch(_depths, _block, "cifar"))
MODELS.register("resnet18_1d")(resnet_arch([2, 2, 2, 2], "basic", "cifar", ndim=1))
