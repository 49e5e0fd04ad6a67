"""SpiderNet's search space: gated cells that shed operations (deadheading) and grow nodes (edge splitting).

Every operation of every edge sits behind a hard straight-through gate: forward ``g = 1[w > 0]``, backward
``dg/dw = 1``, so a gate switched off still learns from what its operation would add (its output is computed)
and can switch back on. Gate weights start at ``GATE_INIT`` and are clamped to ``[-GATE_CLIP, GATE_CLIP]``
after every step, so any gate is a few steps from flipping; weight decay pulls unused ones below zero.
Deadheading physically deletes operations whose gate was off on more than a fraction of the batches since the
counters were reset, then every node that no longer lies on a path from the cell's input to its output.
``plain_network`` turns the supernet into the plain ``spidernet`` family (gates off = operations dropped,
which is exact: an operation behind a closed gate contributes nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from functools import partial

import numpy as np
import torch
from torch import nn

from ..engine import Callback
from ..models.spidernet import Cell, Edge, SpiderNet, edge_ends, edge_key
from ..models.staged import Head

GATE_INIT = 0.01  # published: every gate starts (just) open
GATE_CLIP = 0.05  # published: gate weights live in [-0.05, 0.05]
DEADHEAD_THRESHOLD = 0.75  # published: removed when off on more than 75% of the batches of the window


def hard_gate(w: torch.Tensor) -> torch.Tensor:
    """1[w > 0] in the forward pass, identity gradient in the backward pass (straight-through)."""
    return (w > 0).to(w.dtype) + w - w.detach()


class GatedEdge(Edge):
    """An edge whose operations are each multiplied by a hard straight-through gate.

    ``off`` counts, per operation in the order of ``ops``, the steps on which its gate was closed (always index
    gates by name: a ParameterDict keeps its own key order, not the ModuleDict's).
    """

    def __init__(self, ndim: int, channels: int, stride: int, ops: Iterable[str], init: float = GATE_INIT) -> None:
        super().__init__(ndim, channels, stride, ops)
        self.gates = nn.ParameterDict({name: nn.Parameter(torch.tensor(float(init))) for name in self.ops})
        self.register_buffer("off", torch.zeros(len(self.ops)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(hard_gate(self.gates[name]) * op(x) for name, op in self.ops.items())

    def open_ops(self) -> list[str]:
        return [name for name in self.ops if float(self.gates[name].detach()) > 0]

    def remove(self, name: str) -> None:
        keep = [i for i, n in enumerate(self.ops) if n != name]
        del self.ops[name]
        del self.gates[name]
        self.off = self.off[keep]


class SpiderSupernet(SpiderNet):
    """A ``SpiderNet`` whose edges are gated, with auxiliary heads after every reduction cell but the last cell.

    ``forward`` returns the final logits (so evaluation and export see one output); ``forward_all`` also
    returns the auxiliary heads' logits for the training loss. ``gate_steps`` counts the steps behind ``off``.
    """

    def __init__(self, arch: dict, gate_init: float = GATE_INIT, aux: bool = True) -> None:
        super().__init__(arch, make_edge=partial(GatedEdge, init=gate_init))
        last = len(self.cells) - 1
        self.aux_heads = nn.ModuleDict(
            {
                str(i): Head(self.ndim, cell.channels, self.num_classes)
                for i, cell in enumerate(self.cells)
                if aux and cell.reduction and i < last
            }
        )
        self.register_buffer("gate_steps", torch.zeros(()))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        aux = []
        for i, cell in enumerate(self.cells):
            x = cell(x)
            if str(i) in self.aux_heads:
                aux.append(self.aux_heads[str(i)](x))
        return self.head(x), aux


def gated_edges(net: SpiderNet) -> Iterator[tuple[int, str, GatedEdge]]:
    """(cell index, edge key, edge) of every gated edge."""
    for i, cell in enumerate(net.cells):
        for key, edge in cell.edges.items():
            if isinstance(edge, GatedEdge):
                yield i, key, edge


def is_gate(name: str, _param: nn.Parameter | None = None) -> bool:
    """True for a gate weight's parameter name (for ``param_filter`` and metrics that skip gates)."""
    return ".gates." in f".{name}"


@torch.no_grad()
def clamp_gates(net: SpiderNet, clip: float = GATE_CLIP) -> None:
    for _, _, edge in gated_edges(net):
        for w in edge.gates.values():
            w.clamp_(-clip, clip)


@torch.no_grad()
def reset_gate_counts(net: SpiderSupernet) -> None:
    for _, _, edge in gated_edges(net):
        edge.off.zero_()
    net.gate_steps.zero_()


class GateMonitor(Callback):
    """After every optimizer step: clamp the gates and count, per operation, the steps its gate was closed.

    The counters are buffers of the model, so a resumed training phase restores them with the weights."""

    def __init__(self, net: SpiderSupernet, clip: float = GATE_CLIP) -> None:
        self.net, self.clip = net, clip

    @torch.no_grad()
    def on_step_end(self, state, out) -> None:
        clamp_gates(self.net, self.clip)
        for _, _, edge in gated_edges(self.net):
            edge.off += torch.stack([edge.gates[name] <= 0 for name in edge.ops]).to(edge.off.dtype)
        self.net.gate_steps += 1


def live_nodes(nodes: list[int], keys: Iterable[str]) -> list[int]:
    """The nodes on some path from ``nodes[0]`` to ``nodes[-1]`` along ``keys``, in order (empty: disconnected)."""
    pairs = [edge_ends(k) for k in keys]
    forward, backward = {nodes[0]}, {nodes[-1]}
    for n in nodes:  # nodes are in topological order: one sweep each way reaches everything
        if any(b == n and a in forward for a, b in pairs):
            forward.add(n)
    for n in reversed(nodes):
        if any(a == n and b in backward for a, b in pairs):
            backward.add(n)
    live = [n for n in nodes if n in forward and n in backward]
    return live if nodes[-1] in forward else []


def prune_nodes(cell: Cell) -> list[int]:
    """Delete the nodes (and their edges) that lie on no input -> output path; returns the deleted nodes."""
    live = live_nodes(cell.nodes, cell.edges.keys())
    dead = [n for n in cell.nodes if n not in live]
    for key in list(cell.edges):
        a, b = edge_ends(key)
        if a in dead or b in dead:
            del cell.edges[key]
    cell.nodes = live
    return dead


def off_fractions(net: SpiderSupernet) -> dict[tuple[int, str, str], float]:
    """(cell, edge, op) -> fraction of the counted steps on which the op's gate was closed."""
    steps = max(1.0, float(net.gate_steps))
    return {
        (i, key, name): float(edge.off[j]) / steps
        for i, key, edge in gated_edges(net)
        for j, name in enumerate(edge.ops)
    }


@torch.no_grad()
def deadhead(net: SpiderSupernet, threshold: float = DEADHEAD_THRESHOLD) -> dict[str, list]:
    """Delete every op whose gate was closed on more than ``threshold`` of the counted steps, then the nodes left
    off every input -> output path. An op whose removal would disconnect its cell's output is kept (a cell
    always computes something). Returns {"ops": [[cell, edge, op, off fraction]], "nodes": [[cell, node]]}."""
    removed: dict[str, list] = {"ops": [], "nodes": []}
    if float(net.gate_steps) == 0:
        return removed
    fractions = off_fractions(net)
    for (i, key, name), frac in sorted(fractions.items(), key=lambda kv: -kv[1]):
        cell = net.cells[i]
        if frac <= threshold or key not in cell.edges or name not in cell.edges[key].ops:
            continue
        edge = cell.edges[key]
        if len(edge.ops) == 1 and not live_nodes(cell.nodes, [k for k in cell.edges if k != key]):
            continue
        edge.remove(name)
        removed["ops"].append([i, key, name, round(frac, 4)])
        if not edge.ops:
            del cell.edges[key]
    for i, cell in enumerate(net.cells):
        removed["nodes"] += [[i, n] for n in prune_nodes(cell)]
    return removed


def _silence(edge: GatedEdge, gate_init: float) -> None:
    """Make a new edge contribute nothing yet keep it trainable: the last batch norm of every parametric op gets a
    zero scale (its output is 0, its gradient is not), and parameter-free ops (pooling, skip) start with their
    gate just closed (the straight-through gradient can open it)."""
    with torch.no_grad():
        for name, op in edge.ops.items():
            norms = [m for m in op.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if norms:
                norms[-1].weight.zero_()
                norms[-1].bias.zero_()
            else:
                edge.gates[name].fill_(-abs(gate_init))


def split_edge(
    net: SpiderSupernet, cell_index: int, key: str, ops: Iterable[str], gate_init: float = GATE_INIT, preserve=True
) -> int:
    """Split edge a -> b of a cell: insert a new node n before b with new edges a -> n and n -> b holding every op
    in ``ops`` (the original edge stays). With ``preserve`` the new path starts silent (``_silence`` on n -> b),
    so the network computes exactly what it did; without, the new ops start as published (gates open).
    Returns the new node's id."""
    cell = net.cells[cell_index]
    if key not in cell.edges:
        raise ValueError(f"cell {cell_index} has no edge {key}; its edges: {', '.join(cell.edges)}")
    a, b = edge_ends(key)
    new = max(cell.nodes) + 1
    cell.nodes.insert(cell.nodes.index(b), new)
    reference = next(iter(cell.pre.parameters()))
    ops = list(ops)
    up = GatedEdge(net.ndim, cell.channels, cell.stride_from(a), ops, gate_init)
    down = GatedEdge(net.ndim, cell.channels, 1, ops, gate_init)
    if preserve:
        _silence(down, gate_init)
    cell.edges[edge_key(a, new)] = up.to(reference.device, reference.dtype)
    cell.edges[edge_key(new, b)] = down.to(reference.device, reference.dtype)
    return new


def plain_arch(net: SpiderNet) -> dict:
    """The plain network's spec: only ops with open gates, dead edges and nodes dropped; a cell whose output no
    open op reaches keeps one zero edge from input to output (it computes zeros, exactly as the supernet)."""
    arch = SpiderNet.describe(net)
    for cell_spec, cell in zip(arch["cells"], net.cells):
        edges = {
            key: (edge.open_ops() if isinstance(edge, GatedEdge) else list(edge.ops))
            for key, edge in cell.edges.items()
        }
        edges = {k: v for k, v in edges.items() if v}
        nodes = live_nodes(cell.nodes, edges)
        if not nodes:
            nodes, edges = [cell.nodes[0], cell.nodes[-1]], {edge_key(cell.nodes[0], cell.nodes[-1]): ["none"]}
        cell_spec["nodes"] = nodes
        cell_spec["edges"] = {k: v for k, v in edges.items() if all(n in nodes for n in edge_ends(k))}
    return arch


def plain_network(net: SpiderNet) -> SpiderNet:
    """The supernet as a plain ``spidernet`` (no gates, no auxiliary heads) with its weights: same outputs."""
    plain = SpiderNet(plain_arch(net))
    source = net.state_dict()
    plain.load_state_dict({k: source[k] for k in plain.state_dict()})
    reference = next(net.parameters())
    return plain.to(reference.device).train(net.training)


def random_arch(template: dict, rng: np.random.Generator, max_nodes: int = 3, op_prob: float = 0.5) -> dict:
    """A random network of the same space as ``template`` (same cells, widths and candidate ops): per cell up to
    ``max_nodes`` intermediate nodes, each taking input from a random non-empty set of earlier nodes, each edge
    holding a random non-empty subset of the ops (each kept with ``op_prob``); nodes off every input -> output
    path are dropped. The random-search baseline and the proxy-ranking study draw from it."""
    arch = copy.deepcopy(template)
    for cell in arch["cells"]:
        ops = sorted({op for v in cell["edges"].values() for op in v})
        nodes = list(range(int(rng.integers(0, max_nodes + 1)) + 2))
        edges = {}
        for j, node in enumerate(nodes[1:], start=1):
            sources = [a for a in nodes[:j] if rng.random() < 0.5] or [nodes[int(rng.integers(0, j))]]
            for a in sources:
                edges[edge_key(a, node)] = [op for op in ops if rng.random() < op_prob] or [
                    ops[int(rng.integers(len(ops)))]
                ]
        cell["nodes"] = live_nodes(nodes, edges)
        cell["edges"] = {k: v for k, v in edges.items() if all(n in cell["nodes"] for n in edge_ends(k))}
    return arch


__all__ = [
    "DEADHEAD_THRESHOLD",
    "GATE_CLIP",
    "GATE_INIT",
    "GateMonitor",
    "GatedEdge",
    "SpiderSupernet",
    "clamp_gates",
    "deadhead",
    "gated_edges",
    "hard_gate",
    "is_gate",
    "live_nodes",
    "off_fractions",
    "plain_arch",
    "plain_network",
    "prune_nodes",
    "random_arch",
    "reset_gate_counts",
    "split_edge",
]
