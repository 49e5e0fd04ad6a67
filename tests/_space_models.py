"""Small models for the channel-tracing and slicing tests: residual, depthwise, concatenating, flattening,
custom and untraceable."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from netfit.space import ChannelGroup
from user_zoo import BasicBlock


class ResNet(nn.Module):
    """Stem -> block with projection shortcut -> identity block -> pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b1 = BasicBlock(4, 8, 2)
        self.b2 = BasicBlock(8, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(F.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileBlock(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1, with a residual around it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.expand = nn.Conv2d(6, 12, 1)
        self.bn_e = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bn_dw = nn.BatchNorm2d(12)
        self.project = nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = F.relu6(self.bn_e(self.expand(x)))
        y = self.bn_dw(self.dw(y)).relu()
        x = x + self.project(y)
        return self.head(x.mean((2, 3)))


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 7, 1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        return self.fc(self.mix(y).mean(dim=(2, 3)))


class FlatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc1 = nn.Linear(3 * 16, 10)
        self.fc2 = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)  # 8x8 -> 4x4
        return self.fc2(F.relu(self.fc1(x.view(x.size(0), -1))))


class Scale(nn.Module):
    """A user-defined parametric layer netfit does not know: per-channel scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 5, 1)
        self.scale = Scale(5)
        self.c2 = nn.Conv2d(5, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(self.scale(self.c1(x))).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.c(x)
        return x


def group_of(groups: list[ChannelGroup], module: str, role: str = "out") -> ChannelGroup:
    """The one group that holds ``module``'s ``role`` side (its output channels by default)."""
    found = [g for g in groups if any(m.module == module and m.role == role for m in g.members)]
    assert len(found) == 1, (module, role, found)
    return found[0]


def members(group: ChannelGroup) -> set[tuple[str, str, int, int]]:
    """A group's members as comparable tuples."""
    return {(m.module, m.role, m.offset, m.repeat) for m in group.members}
