"""Plain DARTS cell networks built from a genotype (family ``darts``): what DNAD/SNPS snapshots deploy as.

Spec: {"family": "darts", "num_classes", "in_chans", "ndim", "channels": C, "stem_mult": 3, "stem_stride": 1,
       "reductions": [cell indices], "genotype": [cell][node] -> [[input, op], ...]}
Every cell has its own topology (``genotype[i]``): 2 input states (the two previous cells, preprocessed to C
channels), then intermediate nodes, each the plain sum of its (input state, operation) pairs; the cell's output is
the concatenation of its intermediate nodes. A reduction cell doubles C and strides the pairs reading its two input
states. A node without pairs outputs zeros (no compute). The stem (3x3 conv + BN, stride ``stem_stride``) keeps the
input size, so 8x8 digits, 28x28 MNIST, 32x32 CIFAR and 1-D signals all fit.

The search supernet (``netfit.space.darts``) is this same network with every pair present and learned mixing
weights, so a snapshot's plain network runs exactly the snapshot's surviving operations.
"""

from __future__ import annotations

import torch
from torch import nn

from .cell_ops import FactorizedReduce, Zero, make_op, relu_conv_bn
from .registry import FAMILIES, require_positive
from .staged import Head, bn_nd, conv_nd

Pair = tuple[int, str]  # (input state index, operation name); states 0 and 1 are the cell's inputs


def pair_key(pair: Pair) -> str:
    """The ModuleDict key of a pair's operation (module names may not contain dots)."""
    return f"in{pair[0]}_{pair[1]}"


def reduction_cells(cells: int) -> list[int]:
    """DARTS places the reduction cells at 1/3 and 2/3 of the depth."""
    return [cells // 3, 2 * cells // 3]


def stage_ends(cells: int, reductions: list[int]) -> list[int]:
    """The last cell of every stage (before each reduction cell, and the last cell): the feature-KD points."""
    return [r - 1 for r in reductions if r > 0] + [cells - 1]


class Node(nn.Module):
    """One intermediate node: the sum of its pairs' operations, optionally weighted (the supernet's mixing)."""

    def __init__(self, ndim: int, channels: int, pairs: list[Pair], reduction: bool) -> None:
        super().__init__()
        self.pairs: list[Pair] = [(int(j), str(op)) for j, op in pairs]
        self.reduction = reduction
        self.ops = nn.ModuleDict(
            {pair_key(p): make_op(p[1], ndim, channels, 2 if reduction and p[0] < 2 else 1) for p in self.pairs}
        )
        self.empty = Zero(2 if reduction else 1)  # shape source for a node whose pairs are all gone

    def forward(self, states: list[torch.Tensor], weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        out = None
        for i, pair in enumerate(self.pairs):
            h = self.ops[pair_key(pair)](states[pair[0]])
            if weights is not None:
                h = weights[i] * h
            out = h if out is None else out + h
        return out if out is not None else self.empty(states[0])


class Cell(nn.Module):
    """Preprocess the two previous outputs to C channels, run the nodes, concatenate them."""

    def __init__(
        self,
        ndim: int,
        c_pp: int,
        c_p: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        nodes: list,
        node_cls: type[Node] = Node,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        # the output two cells back is twice the size of the previous one after a reduction: halve it too
        self.pre0 = FactorizedReduce(ndim, c_pp, channels) if reduction_prev else relu_conv_bn(ndim, c_pp, channels, 1)
        self.pre1 = relu_conv_bn(ndim, c_p, channels, 1)
        self.nodes = nn.ModuleList(node_cls(ndim, channels, pairs, reduction) for pairs in nodes)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: list | None = None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for k, node in enumerate(self.nodes):
            states.append(node(states, None if weights is None else weights[k]))
        return torch.cat(states[2:], dim=1)


class DartsNet(nn.Module):
    """Stem -> cells -> global pool + linear. ``forward_stages`` also returns the stage-end features."""

    family = "darts"

    def __init__(self, arch: dict, node_cls: type[Node] = Node) -> None:
        super().__init__()
        require_positive(arch, "num_classes", "in_chans", "channels", "stem_mult", "stem_stride")
        ndim, c, genotype = arch["ndim"], arch["channels"], arch["genotype"]
        if ndim not in (1, 2) or not genotype:
            raise ValueError("ndim must be 1 or 2 and the genotype needs at least one cell")
        self.arch = {k: arch[k] for k in ("num_classes", "in_chans", "ndim", "channels", "stem_mult", "stem_stride")}
        self.reductions = sorted(int(r) for r in arch["reductions"])
        if any(not 0 <= r < len(genotype) for r in self.reductions):
            raise ValueError(f"reduction cells {self.reductions} outside the {len(genotype)} cells")
        stem_width = arch["stem_mult"] * c
        self.stem = nn.Sequential(
            conv_nd(ndim, arch["in_chans"], stem_width, 3, stride=arch["stem_stride"], padding=1, bias=False),
            bn_nd(ndim, stem_width),
        )
        c_pp, c_p, reduction_prev = stem_width, stem_width, False
        cells = []
        for i, nodes in enumerate(genotype):
            reduction = i in self.reductions
            c = c * 2 if reduction else c
            cells.append(Cell(ndim, c_pp, c_p, c, reduction, reduction_prev, nodes, node_cls))
            c_pp, c_p, reduction_prev = c_p, c * len(nodes), reduction
        self.cells = nn.ModuleList(cells)
        self.ends = stage_ends(len(cells), self.reductions)
        self.head = Head(ndim, c_p, arch["num_classes"])

    def genotype(self) -> list[list[list[list]]]:
        """The live pairs of every node of every cell, as JSON ([cell][node] -> [[input, op], ...])."""
        return [[[list(p) for p in node.pairs] for node in cell.nodes] for cell in self.cells]

    def forward_stages(self, x: torch.Tensor, weights: list | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the outputs of the stage-end cells (``weights[i][k]``: node k of cell i's pair weights)."""
        s0 = s1 = self.stem(x)
        features = []
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, None if weights is None else weights[i])
            if i in self.ends:
                features.append(s1)
        return self.head(s1), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[0]


@FAMILIES.register("darts")
class DartsFamily:
    name = "darts"

    @staticmethod
    def build(arch: dict) -> DartsNet:
        return DartsNet(arch)

    @staticmethod
    def describe(model: DartsNet) -> dict:
        return {"family": "darts", **model.arch, "reductions": list(model.reductions), "genotype": model.genotype()}


def darts_arch(
    genotype: list,
    *,
    num_classes: int,
    in_chans: int,
    ndim: int,
    channels: int = 16,
    stem_stride: int = 1,
    reductions: list[int] | None = None,
) -> dict:
    """The arch spec of a cell network with ``genotype`` (reduction cells at 1/3 and 2/3 by default)."""
    return {
        "family": "darts",
        "num_classes": num_classes,
        "in_chans": in_chans,
        "ndim": ndim,
        "channels": channels,
        "stem_mult": 3,
        "stem_stride": stem_stride,
        "reductions": reductions if reductions is not None else reduction_cells(len(genotype)),
        "genotype": genotype,
    }


def dense_genotype(cells: int, nodes: int, ops: list[str]) -> list:
    """Every node reads every earlier state through every operation (the search's starting point)."""
    return [[[[j, op] for j in range(2 + k) for op in ops] for k in range(nodes)] for _ in range(cells)]
