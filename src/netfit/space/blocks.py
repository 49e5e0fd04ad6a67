"""Residual blocks of a user's model, found by tracing, so that DNA searches its depth as it does a built-in's.

The model's top-level fx graph is walked as a chain: a node is a *cut* when nothing after it reads a value
computed before it, so the nodes between two consecutive cuts form a piece with one input and one output.
A piece is a skippable residual block when its output is ``X + f(X)`` (either order, f(X) of X's shape), X
being the piece's input, optionally followed by one activation. A projection shortcut ``g(X) + f(X)`` is not
skippable (removing such a block changes what the next layer reads).

Runs of consecutive blocks become stages. A stage's first block is the non-residual pieces before its run
(e.g. a strided block with a projection shortcut), merged into one; the pieces before the first run are the
stem, those after the last block the head. Like a built-in stage, every stage keeps its first block.
"""

from __future__ import annotations

import copy
import itertools
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import NetfitError
from ..models import StagedNet, arch_of
from ..models.staged_graph import GraphStagedNet
from .compare import max_difference

_ADDS = {operator.add, operator.iadd, torch.add}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu}
CONVERT_TOL = 1e-5


@dataclass
class Piece:
    """Nodes of the traced graph between two cuts: computed from ``input`` (and parameters) only."""

    input: fx.Node
    nodes: list[fx.Node] = field(default_factory=list)
    residual: bool = False
    activated: bool = False  # a residual piece that already ends in its activation


@dataclass
class StagePlan:
    """Where a traced model is cut: stem, stages of blocks (each a piece), head."""

    graph_module: fx.GraphModule
    stem: Piece
    stages: list[list[Piece]]
    head: Piece

    @property
    def depths(self) -> list[int]:
        return [len(s) for s in self.stages]


def find_stages(model: nn.Module, input_shape: Sequence[int]) -> StagePlan | None:
    """The stage plan of a copy of ``model``, or None when it cannot be traced as one chain or has no skippable
    residual block."""
    try:
        gm = fx.symbolic_trace(copy.deepcopy(model))
        with torch.no_grad():
            ShapeProp(gm.eval()).propagate(torch.zeros(1, *input_shape, device=_device(model)))
    except Exception:  # untraceable models keep width-only search; the channel tracer reports why
        return None
    pieces = _chain(gm.graph)
    if pieces is None or not any(p.residual for p in pieces):
        return None
    return _plan(gm, pieces)


def stage_blocks(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """``model`` as a ``GraphStagedNet`` (a copy computing the same function) when it has skippable residual
    blocks; else ``model`` itself (built-in staged networks included)."""
    if isinstance(model, StagedNet):
        return model
    plan = find_stages(model, input_shape)
    if plan is None:
        return model
    staged = build_staged(plan).to(_device(model))
    try:
        arch_of(staged)  # the exported network must be describable as JSON
        difference = max_difference(model, staged, input_shape)
    except NetfitError as e:
        warnings.warn(f"depth search skipped: the model's blocks cannot be exported ({e})", stacklevel=2)
        return model
    if difference > CONVERT_TOL:
        warnings.warn(
            f"depth search skipped: the model cut into stages differs from it by {difference:.3g}", stacklevel=2
        )
        return model
    return staged


def build_staged(plan: StagePlan) -> GraphStagedNet:
    stages = [nn.Sequential(*(_module(plan.graph_module, b) for b in stage)) for stage in plan.stages]
    return GraphStagedNet(_module(plan.graph_module, plan.stem), stages, _module(plan.graph_module, plan.head))


def _chain(graph: fx.Graph) -> list[Piece] | None:
    """The graph's pieces between consecutive cuts (an activation after a residual add joins its block), or
    None when the graph is not one input -> one output tensor."""
    nodes = [n for n in graph.nodes if n.op not in ("get_attr", "output")]
    output = next(n for n in graph.nodes if n.op == "output")
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if placeholders != nodes[:1] or output.args[0] is not nodes[-1]:
        return None
    position = {n: i for i, n in enumerate(nodes)}
    cuts, reach = [], -1  # reach: the last position that reads a node before the current one
    for i, node in enumerate(nodes):
        if reach <= i:
            cuts.append(i)
        reach = max(reach, *(position.get(u, len(nodes)) for u in node.users), i)
    if cuts[-1] != len(nodes) - 1:
        return None
    pieces: list[Piece] = []
    for a, b in itertools.pairwise(cuts):
        piece = Piece(nodes[a], nodes[a + 1 : b + 1])
        if pieces and pieces[-1].residual and not pieces[-1].activated and _is_activation(piece):
            pieces[-1].nodes += piece.nodes
            pieces[-1].activated = True
            continue
        piece.residual = _is_residual(piece)
        pieces.append(piece)
    return pieces


def _plan(gm: fx.GraphModule, pieces: list[Piece]) -> StagePlan:
    blocks = [i for i, p in enumerate(pieces) if p.residual]
    stem = _join(pieces[: blocks[0]], pieces[0].input)
    head = _join(pieces[blocks[-1] + 1 :], pieces[blocks[-1]].nodes[-1])
    stages: list[list[Piece]] = []
    pending: list[Piece] = []  # non-residual pieces since the last block: the next stage's first block
    for piece in pieces[blocks[0] : blocks[-1] + 1]:
        if not piece.residual:
            pending.append(piece)
            continue
        if pending or not stages:
            stages.append([_join(pending, pending[0].input)] if pending else [])
            pending = []
        stages[-1].append(piece)
    return StagePlan(gm, stem, stages, head)


def _join(pieces: list[Piece], input: fx.Node) -> Piece:
    """Consecutive non-residual pieces as one (stem, head or a stage's first block)."""
    return Piece(input, [n for p in pieces for n in p.nodes])


def _is_residual(piece: Piece) -> bool:
    """``X + f(X)`` with f(X) computed in the piece and of X's shape (no broadcasting)."""
    node, x = piece.nodes[-1], piece.input
    is_add = (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target == "add"
    )
    if not is_add or len(node.args) != 2 or node.kwargs:
        return False
    a, b = node.args
    branch = b if a is x else a if b is x else None
    return branch in piece.nodes and _shape(x) is not None and _shape(branch) == _shape(x) == _shape(node)


def _is_activation(piece: Piece) -> bool:
    """A piece that is one elementwise activation of its input."""
    if len(piece.nodes) != 1:
        return False
    node = piece.nodes[0]
    if not node.args or node.args[0] is not piece.input or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return False
    if node.op == "call_module":
        return isinstance(node.graph.owning_module.get_submodule(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target == "relu"


def _module(gm: fx.GraphModule, piece: Piece) -> fx.GraphModule:
    """A piece as its own GraphModule; layers keep their names (and are shared with ``gm``)."""
    graph = fx.Graph()
    env = {piece.input: graph.placeholder("x")}

    def arg(node: fx.Node) -> fx.Node:
        if node not in env:  # a parameter the graph reads directly: copied into the piece that reads it
            env[node] = graph.node_copy(node)
        return env[node]

    for node in piece.nodes:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[piece.nodes[-1] if piece.nodes else piece.input])
    return fx.GraphModule(gm, graph, class_name="NetfitBlock")


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
