"""User-defined models (plain ``nn.Module`` classes, not netfit's built-ins) shared by tests/test_user_models.py and
benchmarks/user_models.py: concatenations meeting single convs (squeeze-excite on a concatenation, projection
residuals, Ghost, DenseNet and Inception blocks), chunks, fixed splits, a shared layer, and the common mobile
and residual blocks (ResNet BasicBlocks, MobileNetV2 inverted residuals, MobileNetV3 / EfficientNet MBConv with
squeeze-excite). Every model takes one-channel 8x8 inputs (``SHAPE``) and returns 10 logits.

Only torch is imported here, so the Torch-Pruning venv of the benchmark can build the same models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SHAPE = (1, 8, 8)


def cbr(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ConcatSEBlock(nn.Module):
    """Two conv branches concatenated, a squeeze-excite gate on the concatenation, a 1x1 projection residual."""

    def __init__(self, cin: int, c: int, gate=nn.Hardsigmoid, act=nn.SiLU, linear_se: bool = False) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, c // 2, 3, padding=1, bias=False), nn.BatchNorm2d(c // 2), act())
        self.b = nn.Sequential(nn.Conv2d(cin, c // 2, 1, bias=False), nn.BatchNorm2d(c // 2), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear_se = linear_se
        if linear_se:
            self.reduce, self.expand = nn.Linear(c, c // 4), nn.Linear(c // 4, c)
        else:
            self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)
        self.se_act, self.gate = act(), gate()
        self.proj = nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        s = self.pool(y)
        if self.linear_se:
            s = self.expand(self.se_act(self.reduce(s.flatten(1))))[:, :, None, None]
        else:
            s = self.expand(self.se_act(self.reduce(s)))
        return y * self.gate(s) + self.proj(x)


class SENet(nn.Module):
    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.b1 = ConcatSEBlock(16, 32)
        self.b2 = ConcatSEBlock(32, 48, gate=nn.Sigmoid, act=nn.ReLU, linear_se=True)
        self.b3 = ConcatSEBlock(48, 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.b3(self.b2(self.b1(self.stem(x))))).flatten(1))


class Ghost(nn.Module):
    """GhostNet module: a primary conv, a cheap depthwise conv on it, both concatenated, plus the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.primary = cbr(c, c // 2)
        self.cheap = cbr(c // 2, c // 2, 3, groups=c // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1) + x


class GhostNet(nn.Module):
    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(cin, 16, 3)
        self.g1, self.g2 = Ghost(16), Ghost(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.g2(self.g1(self.stem(x))).mean((2, 3)))


class DenseNet(nn.Module):
    """A dense block (every layer reads the concatenation of all earlier outputs) and a transition."""

    def __init__(self, cin: int = 1, classes: int = 10, growth: int = 6, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cin, 8, 3, padding=1)
        c, self.layers = 8, nn.ModuleList()
        for _ in range(layers):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1)))
            c += growth
        self.norm = nn.BatchNorm2d(c)
        self.trans = nn.Conv2d(c, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        y = self.trans(F.relu(self.norm(torch.cat(feats, 1))))
        return self.fc(F.avg_pool2d(y, 2).flatten(1))


class Inception(nn.Module):
    """Parallel 1x1, 3x3, double 3x3 and pool branches concatenated, plus the input (Inception-ResNet)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1 = cbr(c, 6)
        self.b3 = nn.Sequential(cbr(c, 4), cbr(4, 4, 3))
        self.b5 = nn.Sequential(cbr(c, 2), cbr(2, 3, 3), cbr(3, 3, 3))
        self.bp = cbr(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b1(x), self.b3(x), self.b5(x), self.bp(F.max_pool2d(x, 3, 1, 1))]
        return torch.cat(branches, 1) + x


class InceptionNet(nn.Module):
    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(cin, 16, 3)
        self.i1, self.i2 = Inception(16), Inception(16)
        self.head = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.i2(self.i1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class ChunkNet(nn.Module):
    """A GLU (chunk, gate one half by the other) and a ShuffleNet-style chunk-transform-concat with a residual."""

    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = cbr(cin, 16, 3)
        self.glu = nn.Conv2d(16, 32, 1)
        self.branch = cbr(8, 8, 3)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.glu(self.stem(x)).chunk(2, dim=1)
        y = a * torch.sigmoid(b)
        left, right = y.chunk(2, 1)
        return self.fc((torch.cat([left, self.branch(right)], 1) + y).mean((2, 3)))


class FixedSplitNet(nn.Module):
    """Splitting the channels at hard-coded sizes: they cannot change, everything else still can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(1, 8, 3)
        self.conv = nn.Conv2d(8, 16, 1)
        self.head = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = torch.split(self.conv(self.stem(x)), [6, 10], dim=1)
        return self.fc(self.head(a).mean((2, 3)))


class SharedNet(nn.Module):
    """One layer called on a single conv's output and on a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3)
        self.shared, self.bn1, self.bn2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.bn1(self.shared(self.a(x)))
        v = self.bn2(self.shared(torch.cat([self.b(x), F.pad(self.c(x), (1, 1, 1, 1))], 1)))
        return self.fc((u + v).mean((2, 3)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs, an identity shortcut or a strided 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet of basic blocks: by default three stages of two (16, 32, 64 channels); every stage
    after the first opens with a strided projection. ``stages=(16, 32, 64, 128)`` is ResNet-18 at width 0.25."""

    def __init__(self, cin: int = 1, classes: int = 10, stages: tuple[int, ...] = (16, 32, 64), depth: int = 2) -> None:
        super().__init__()
        self.stem = cbr(cin, stages[0], 3)
        blocks, prev = [], stages[0]
        for i, width in enumerate(stages):
            for j in range(depth):
                blocks.append(BasicBlock(prev, width, 2 if i and not j else 1))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (none at expand 1), depthwise 3x3, linear 1x1 projection, residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        config = [(16, 8, 1, 1), (8, 12, 2, 4), (12, 12, 1, 4), (12, 16, 2, 4), (16, 16, 1, 4)]
        self.blocks = nn.Sequential(*(InvertedResidual(*c) for c in config))
        self.head = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    """Channel gate: global pool, 1x1 reduce, activation, 1x1 expand, gate (hardsigmoid or sigmoid)."""

    def __init__(self, c: int, squeeze: int, act=nn.ReLU, gate=nn.Hardsigmoid) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class MBConv(nn.Module):
    """MobileNetV3 / EfficientNet block: expansion, depthwise k x k, squeeze-excite, projection, residual."""

    def __init__(
        self, cin: int, cout: int, expand: int, k: int, stride: int, se: bool, act=nn.Hardswish, se_act=nn.ReLU,
        gate=nn.Hardsigmoid,
    ) -> None:  # fmt: skip
        super().__init__()
        hidden = cin * expand
        self.expand = (
            nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
            if expand != 1
            else nn.Identity()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act()
        )
        self.se = SqueezeExcite(hidden, max(4, cin // 4), se_act, gate) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """Hardswish blocks, squeeze-excite with a ReLU squeeze and a hardsigmoid gate, a hidden Linear head."""

    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            MBConv(16, 16, 1, 3, 1, True, nn.ReLU),
            MBConv(16, 24, 4, 3, 2, False, nn.ReLU),
            MBConv(24, 24, 3, 3, 1, False, nn.ReLU),
            MBConv(24, 40, 3, 5, 2, True),
            MBConv(40, 40, 3, 5, 1, True),
        )
        self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1).flatten(1))


class EfficientNet(nn.Module):
    """SiLU MBConv blocks with squeeze-excite everywhere (SiLU squeeze, sigmoid gate)."""

    def __init__(self, cin: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        kw = {"act": nn.SiLU, "se_act": nn.SiLU, "gate": nn.Sigmoid}
        self.blocks = nn.Sequential(
            MBConv(16, 8, 1, 3, 1, True, **kw),
            MBConv(8, 12, 6, 3, 2, True, **kw),
            MBConv(12, 12, 6, 3, 1, True, **kw),
            MBConv(12, 20, 6, 5, 2, True, **kw),
            MBConv(20, 20, 6, 5, 1, True, **kw),
        )
        self.head = nn.Sequential(nn.Conv2d(20, 80, 1, bias=False), nn.BatchNorm2d(80), nn.SiLU())
        self.fc = nn.Linear(80, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


# every user model by name (the benchmark's fixtures, in table order)
ZOO: dict[str, type[nn.Module]] = {
    "SENet": SENet,
    "GhostNet": GhostNet,
    "DenseNet": DenseNet,
    "InceptionNet": InceptionNet,
    "ChunkNet": ChunkNet,
    "FixedSplitNet": FixedSplitNet,
    "SharedNet": SharedNet,
    "ResNet": ResNet,
    "MobileNetV2": MobileNetV2,
    "MobileNetV3": MobileNetV3,
    "EfficientNet": EfficientNet,
}


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so slicing mistakes show up in the outputs."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen)
            m.running_mean = torch.randn(m.num_features, generator=gen)
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return model
