"""Seeded, stratified splits: every class is divided in the same proportions, exactly reproducible."""

from __future__ import annotations

import numpy as np


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder), so totals are exact."""
    share = counts * (total / counts.sum())
    alloc = np.floor(share).astype(int)
    order = np.argsort(-(share - alloc), kind="stable")
    alloc[order[: total - alloc.sum()]] += 1
    return np.minimum(alloc, counts)


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices of each part; part k gets ``fractions[k]`` of every class, the first part takes the rest."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    per_part = [_allocate(counts, round(f * len(labels))) for f in fractions[1:]]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for ci, cls in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for k, alloc in enumerate(per_part, start=1):
            parts[k].append(idx[start : start + alloc[ci]])
            start += alloc[ci]
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]
