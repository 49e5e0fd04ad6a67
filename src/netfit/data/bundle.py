"""DataBundle: train/val/test tensors plus how to turn a raw batch into model input."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .augment import augment, augmentations


@dataclass
class DataBundle:
    """A data set split three ways, held in memory as raw tensors.

    Attributes:
        name: built-in name or the path given.
        train, val, test: TensorDatasets of (x raw: uint8 images or float32, y int64).
        num_classes: number of classes.
        input_shape: per-sample model input shape, (C, H, W) or (C, L).
        augment: None, "crop" or "crop_flip" (applied to training batches only).
        mean, std: per-channel statistics of the train split (after scaling uint8 to [0, 1]).
        source: where the data came from, with split sizes and split seed.
        split_seed: seed of the split.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    split_seed: int = 0
    _stats: dict = field(default_factory=dict, repr=False)

    def prepare(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """float32, scaled, normalised; randomly augmented when ``train`` (reproducibly with ``generator``)."""
        return self.prepare_drawn(x, generator)[0] if train else self._normalised(x)

    def prepare_drawn(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch as ``prepare(x, train=True)`` makes it, and which of the ``augmentations`` each
        sample got (None without augmentation)."""
        x = self._normalised(x)
        return augment(x, self.augment, generator) if self.augment else (x, None)

    @property
    def augmentations(self) -> int:
        """How many distinct versions of one training sample the augmentation draws from (1: none)."""
        return augmentations(self.augment, self.input_shape)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        mean, std = self._stats_on(x.device)
        return (x - mean) / std

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            shape = (1, -1) + (1,) * (len(self.input_shape) - 1)
            self._stats[device] = (
                torch.tensor(self.mean, device=device).view(shape),
                torch.tensor(self.std, device=device).view(shape),
            )
        return self._stats[device]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "split_seed": self.split_seed,
            "source": self.source,
        }


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of raw samples (N, C, ...), uint8 scaled to [0, 1]."""
    values = x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    axes = (0, *range(2, values.ndim))
    mean = values.mean(axis=axes)
    std = values.std(axis=axes)
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)
