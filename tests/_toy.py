"""A learnable toy task, a small MLP and a simulated kill, shared by the engine tests."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from netfit.engine import Callback, TrainConfig


@dataclass
class ToyData:
    """Learnable 4-class task: the class is the quadrant of the first two features."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int = 4
    input_shape: tuple = (8,)

    def prepare(self, x, train, generator=None):
        return x.float()


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)

    def split(k):
        x = torch.randn(k, 8, generator=g)
        return TensorDataset(x, ((x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()))

    return ToyData(split(n), split(64), split(64))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1)


class KillAt(Callback):
    """Simulates a kill: raises when epoch ``epoch`` (0-based) starts, after the previous checkpoint was written."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt
