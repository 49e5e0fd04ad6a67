"""SpiderNet networks as plain modules: a stem, a chain of cells whose nodes take input from every earlier node,
and a head (family ``spidernet``, rebuilt by ``netfit.load``).

Spec: {"family": "spidernet", "ndim", "in_chans", "num_classes", "stem": C, "stem_stride": 1,
       "cells": [{"reduction": bool, "channels": C, "nodes": [0, 2, 1], "edges": {"0_2": ["sep_conv_3x3", ...]}}]}

A cell first maps its input to ``channels`` with a 1x1 ReLU-conv-BN (node ``nodes[0]``); every other node sums
its incoming edges, each edge sums its operations (``models.cell_ops``), and the cell's output is the last
node. Node ids are names, their order in ``nodes`` is the topological order, so a node can be inserted between
two others (SpiderNet's edge split) without renaming anything. Edges leaving the input node of a reduction
cell stride 2. The stem strides ``stem_stride`` (optional, 1: the cells see the input's size; 2: half of it, a
quarter of their MACs on images). The gated supernet of the search (``netfit.space.spider``) is this module
with gates added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .cell_ops import DARTS_OPS, make_op, relu_conv_bn
from .registry import FAMILIES, require_positive
from .staged import Head, conv_bn

SPIDER_OPS: tuple[str, ...] = tuple(op for op in DARTS_OPS if op != "none")
"""The seven candidate operations of every edge (the paper's count: DARTS' set without the zero op)."""


def edge_key(a: int, b: int) -> str:
    return f"{a}_{b}"


def edge_ends(key: str) -> tuple[int, int]:
    a, b = key.split("_")
    return int(a), int(b)


class Edge(nn.Module):
    """The sum of an edge's operations, each mapping ``channels`` to ``channels`` at the edge's stride."""

    def __init__(self, ndim: int, channels: int, stride: int, ops: Iterable[str]) -> None:
        super().__init__()
        self.ndim, self.channels, self.stride = ndim, channels, stride
        self.ops = nn.ModuleDict({name: make_op(name, ndim, channels, stride) for name in ops})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(op(x) for op in self.ops.values())


EdgeFactory = Callable[[int, int, int, Iterable[str]], Edge]  # (ndim, channels, stride, ops) -> edge


class Cell(nn.Module):
    """Nodes in topological order; node ``nodes[0]`` is the preprocessed input, the last node the output."""

    def __init__(self, ndim: int, cin: int, spec: dict, make_edge: EdgeFactory = Edge) -> None:
        super().__init__()
        self.ndim, self.reduction, self.channels = ndim, bool(spec["reduction"]), spec["channels"]
        self.nodes: list[int] = [int(n) for n in spec["nodes"]]
        if len(self.nodes) < 2 or len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"a cell needs >= 2 distinct nodes, got {self.nodes}")
        self.pre = relu_conv_bn(ndim, cin, self.channels, 1)
        self.edges = nn.ModuleDict()
        for key, ops in spec["edges"].items():
            a, b = edge_ends(key)
            if a not in self.nodes or b not in self.nodes or self.nodes.index(a) >= self.nodes.index(b):
                raise ValueError(f"edge {key} does not go forward between nodes {self.nodes}")
            self.edges[key] = make_edge(ndim, self.channels, self.stride_from(a), ops)

    def stride_from(self, node: int) -> int:
        return 2 if self.reduction and node == self.nodes[0] else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = {self.nodes[0]: self.pre(x)}
        for node in self.nodes[1:]:
            inputs = [edge(states[a]) for key, edge in self.edges.items() for a, b in [edge_ends(key)] if b == node]
            if not inputs:
                raise ValueError(f"node {node} has no input edge")
            states[node] = sum(inputs)
        return states[self.nodes[-1]]

    def describe(self) -> dict:
        return {
            "reduction": self.reduction,
            "channels": self.channels,
            "nodes": list(self.nodes),
            "edges": {key: list(edge.ops) for key, edge in self.edges.items()},
        }


class SpiderNet(nn.Module):
    """stem (conv-BN) -> cells -> head; ``cells[i]`` halves the size and doubles the width when a reduction."""

    family = "spidernet"

    def __init__(self, arch: dict, make_edge: EdgeFactory = Edge) -> None:
        super().__init__()
        arch = {"stem_stride": 1, **arch}
        require_positive(arch, "num_classes", "in_chans", "stem", "stem_stride")
        ndim = self.ndim = arch.get("ndim", 2)
        if ndim not in (1, 2) or not arch["cells"]:
            raise ValueError("a spidernet needs ndim 1 or 2 and at least one cell")
        self.stem = conv_bn(ndim, arch["in_chans"], arch["stem"], 3, stride=arch["stem_stride"])
        cells, cin = [], arch["stem"]
        for spec in arch["cells"]:
            cells.append(Cell(ndim, cin, spec, make_edge))
            cin = spec["channels"]
        self.cells = nn.ModuleList(cells)
        self.head = Head(ndim, cin, arch["num_classes"])
        self.num_classes, self.num_features = arch["num_classes"], cin

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def describe(self) -> dict:
        conv = self.stem[0]
        return {
            "family": "spidernet",
            "ndim": self.ndim,
            "in_chans": conv.in_channels,
            "num_classes": self.head.fc.out_features,
            "stem": conv.out_channels,
            "stem_stride": conv.stride[0],
            "cells": [cell.describe() for cell in self.cells],
        }


@FAMILIES.register("spidernet")
class SpiderNetFamily:
    name = "spidernet"

    @staticmethod
    def build(arch: dict) -> SpiderNet:
        return SpiderNet(arch)

    @staticmethod
    def describe(model: SpiderNet) -> dict:
        return SpiderNet.describe(model)


def initial_arch(
    ndim: int,
    in_chans: int,
    num_classes: int,
    channels: int = 16,
    reductions: int = 2,
    nodes: int = 1,
    ops: Iterable[str] = SPIDER_OPS,
    stem_stride: int = 1,
) -> dict:
    """The starting network: a normal cell, then (reduction, normal) x ``reductions``, every cell with ``nodes``
    intermediate nodes fully connected (each edge holding every op in ``ops``); widths double at reductions.
    ``stem_stride`` 2 runs every cell on half-size maps."""
    if channels < 2 or reductions < 0 or nodes < 0 or stem_stride < 1:
        raise ValueError("channels >= 2, reductions >= 0, nodes >= 0 and stem_stride >= 1 are required")
    ids = list(range(nodes + 2))
    edges = {edge_key(a, b): list(ops) for i, a in enumerate(ids) for b in ids[i + 1 :]}
    cells, width = [], channels
    for reduction in [False] + [r for _ in range(reductions) for r in (True, False)]:
        width = width * 2 if reduction else width
        cells.append({"reduction": reduction, "channels": width, "nodes": ids, "edges": edges})
    arch = {"family": "spidernet", "ndim": ndim, "in_chans": in_chans, "num_classes": num_classes}
    fresh = [dict(c, nodes=list(ids), edges={k: list(v) for k, v in edges.items()}) for c in cells]
    return {**arch, "stem": channels, "stem_stride": stem_stride, "cells": fresh}
