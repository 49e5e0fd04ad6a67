"""Small, non-trivial models and elastic supernets shared by the DNA tests."""

import numpy as np
import torch
from torch import nn

from _shapes import input_shape
from netfit.cost import count_cost
from netfit.models import create_model
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow


class UserNet(nn.Module):
    """Not from the zoo: a residual add, a concatenation and a flatten into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12))
        self.c = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(20 * 4 * 4, 10)

    def forward(self, x):
        h = self.a(x)
        h = torch.relu(h + self.b(h))
        h = nn.functional.adaptive_avg_pool2d(torch.cat([h, self.c(h)], 1), 4)
        return self.fc(torch.flatten(h, 1))


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that preservation tests can fail."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


def small_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A built-in model at width x0.25 (or UserNet) with randomized norms, and its test input shape."""
    if name == "user":
        return randomize_norms(UserNet()), (1, 16, 16)
    shape = input_shape(name)
    return randomize_norms(create_model(name, num_classes=10, in_chans=shape[0], width_mult=0.25)), shape


def elastic_supernet(name: str, dropout: bool = True) -> ElasticNet:
    """small_model grown to 1.5x its width and by half its blocks in depth: an elastic supernet, 8 units per group
    (``dropout=False``: its dropout off before wrapping, which copies the modules its sliced passes run)."""
    model, shape = small_model(name)
    if not dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    return ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=8)


def layer_timer(module: nn.Module, shape) -> float:
    """A deterministic stand-in for a device: 0.01 ms per conv/linear layer plus 1 ms per million MACs."""
    layers = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in module.modules())
    return 0.01 * layers + 1e-6 * count_cost(module, shape).macs


def float64_supernet(name: str) -> tuple[ElasticNet, tuple[int, ...]]:
    """A seeded elastic supernet without dropout, in float64: with small batches, a train-mode norm whose batch
    variance is tiny amplifies float32 rounding (two equivalent passes sum in different orders) into gradient
    differences of a few percent for some weights."""
    torch.manual_seed(0)
    net = elastic_supernet(name, dropout=False)
    net.model.double()
    return net, net.input_shape
