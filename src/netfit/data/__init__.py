"""Data: built-in offline data sets, loaders for standard formats, seeded stratified splits, augmentation.

Example:
    >>> data = load_data("digits")
    >>> data.input_shape, data.num_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .._registry import Registry
from ..errors import DataError, require
from .bundle import DataBundle, channel_stats
from .formats import Arrays, read_idx_dir, read_path
from .split import stratified_split

__all__ = ["DATASETS", "DataBundle", "load_data"]

DATASETS: Registry = Registry("data set")


@DATASETS.register("digits")
def _digits() -> Arrays:
    datasets = require("sklearn.datasets", "data")
    bunch = datasets.load_digits()
    return Arrays(
        (bunch.images / 16.0).astype(np.float32)[:, None],
        bunch.target.astype(np.int64),
        augment="crop",
        kind="scikit-learn load_digits (8x8)",
    )


MNIST1D_HARD_NOISE = 0.05
"""The i.i.d. noise of ``mnist1d_hard`` (mnist1d's default: 0.02). At the default a ResNet-18-1d lands near 98%
at any width; at 0.05 the ceiling is near 91% and x0.0625 / x0.125 / x0.25 reach about 80 / 86 / 90% (20 epochs)."""


def _make_mnist1d(iid_noise_scale: float | None = None) -> Arrays:
    require("mnist1d", "data")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if iid_noise_scale is not None:
        args.iid_noise_scale = iid_noise_scale
    d = make_dataset(args)  # generated locally; get_dataset would download
    return Arrays(
        d["x"].astype(np.float32)[:, None],
        d["y"].astype(np.int64),
        d["x_test"].astype(np.float32)[:, None],
        d["y_test"].astype(np.int64),
        augment=None,
        kind="mnist1d make_dataset "
        + ("(default args)" if iid_noise_scale is None else f"(default args, iid_noise_scale {iid_noise_scale})"),
    )


@DATASETS.register("mnist1d")
def _mnist1d() -> Arrays:
    return _make_mnist1d()


@DATASETS.register("mnist1d_hard")
def _mnist1d_hard() -> Arrays:
    return _make_mnist1d(MNIST1D_HARD_NOISE)


def mnist10k_dir() -> Path | None:
    """Where the 10,000-image MNIST test set lives: $NETFIT_MNIST_DIR, ../shared/data/mnist-10k, /work/shared/..."""
    candidates = [os.environ.get("NETFIT_MNIST_DIR"), "../shared/data/mnist-10k", "/work/shared/data/mnist-10k"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)


@DATASETS.register("mnist10k")
def _mnist10k() -> Arrays:
    directory = mnist10k_dir()
    if directory is None:
        raise DataError(
            "MNIST-10k not found; set NETFIT_MNIST_DIR to a folder with t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz"
        )
    arrays = read_idx_dir(directory)
    assert arrays is not None  # the folder exists and read_idx_dir raises on bad files
    arrays.kind = f"MNIST test set (10,000 images) from {directory}"
    return arrays


def load_data(spec: str, *, split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> DataBundle:
    """A built-in data set by name, or data read from a path (format detected), split train/val/test.

    A data set with its own test set keeps it and carves ``val_fraction`` of its training set for validation;
    otherwise ``test_fraction`` and ``val_fraction`` of all samples are held out, stratified by class.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
    if spec in DATASETS:
        arrays, name = DATASETS.get(spec)(), spec
    elif os.sep in spec or Path(spec).exists() or spec.endswith(".npz"):
        arrays, name = read_path(Path(spec)), spec
    else:
        DATASETS.get(spec)  # raises UnknownNameError with suggestions
        raise AssertionError("unreachable")
    return _bundle(arrays, name, split_seed, val_fraction, test_fraction)


def _bundle(a: Arrays, name: str, seed: int, val_fraction: float, test_fraction: float) -> DataBundle:
    _check_labels(a.y, name)
    if a.x_test is not None and a.y_test is not None:
        _check_labels(a.y_test, name)
        train_idx, val_idx = stratified_split(a.y, (1 - val_fraction, val_fraction), seed)
        parts = [(a.x[train_idx], a.y[train_idx]), (a.x[val_idx], a.y[val_idx]), (a.x_test, a.y_test)]
    else:
        train_idx, val_idx, test_idx = stratified_split(a.y, (0, val_fraction, test_fraction), seed)
        parts = [(a.x[i], a.y[i]) for i in (train_idx, val_idx, test_idx)]
    if any(len(y) == 0 for _, y in parts):
        raise DataError(f"{name} is too small to split into train/val/test ({len(a.y)} samples)")
    num_classes = int(max(y.max() for _, y in parts)) + 1
    mean, std = channel_stats(parts[0][0])
    sizes = ", ".join(f"{k} {len(y)}" for k, (_, y) in zip(("train", "val", "test"), parts))
    datasets = [TensorDataset(torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))) for x, y in parts]
    return DataBundle(
        name,
        *datasets,
        num_classes=num_classes,
        input_shape=tuple(a.x.shape[1:]),
        augment=a.augment,
        mean=mean,
        std=std,
        source=f"{a.kind}; stratified split seed {seed}: {sizes}",
        split_seed=seed,
    )


def _check_labels(y: np.ndarray, name: str) -> None:
    if y.size == 0:
        raise DataError(f"{name} holds no samples")
    if y.min() < 0:
        raise DataError(f"{name} has negative class labels")
