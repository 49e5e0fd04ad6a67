"""Block-wise supervised NAS (the DNA family): cut a teacher into blocks, train one MBConv candidate supernet per
block to imitate its teacher block, and rate every candidate of every block.

The teacher is cut at stage boundaries (a ``StagedNet``'s stages, or named modules of any model whose body runs
them in sequence). Block i's supernet learns ``teacher block i-1 output -> teacher block i output`` (MSE) with
single-path uniform sampling; each candidate is then rated alone after batch-norm recalibration by
``mean |s - t| / std(t)`` on held-out data. Blocks are independent, so they can train on separate ranks.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cost import count_cost, measure
from ..engine import StepOutput
from ..engine.norms import recalibrate_norms, recalibration_batches
from ..errors import NetfitError, UnsupportedLayerError
from ..models import StagedNet
from ..models.mobilenetv2 import InvertedResidual

Op = tuple[int, int]  # one MBConv layer: (expansion, kernel)
Path = tuple[Op, ...]  # one candidate of a block: its layers' ops in order (its depth is the length)


def candidate_id(path: Path) -> str:
    """ "e6k3-e3k5" for a two-layer candidate (expansion 6 kernel 3, then expansion 3 kernel 5)."""
    return "-".join(f"e{e}k{k}" for e, k in path)


@dataclass(frozen=True)
class BlockSpace:
    """The candidates of one block: ``min_layers..max_layers`` MBConv layers, each with one of the ops
    expansion x kernel (the published space: expansions {3, 6} x kernels {3, 5, 7}, a few layers)."""

    expansions: tuple[int, ...] = (3, 6)
    kernels: tuple[int, ...] = (3, 5, 7)
    min_layers: int = 1
    max_layers: int = 3

    def __post_init__(self) -> None:
        if not self.expansions or not self.kernels:
            raise NetfitError("the block candidate space is empty: give at least one expansion and one kernel")
        if any(not isinstance(e, int) or e < 1 for e in self.expansions):
            raise NetfitError(f"expansions must be positive integers, got {list(self.expansions)}")
        if any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in self.kernels):
            raise NetfitError(f"kernels must be odd positive integers (they keep the size), got {list(self.kernels)}")
        if not 1 <= self.min_layers <= self.max_layers:
            raise NetfitError(
                f"need 1 <= min_layers <= max_layers, got min_layers={self.min_layers} max_layers={self.max_layers}"
            )

    @property
    def ops(self) -> list[Op]:
        return [(e, k) for e in self.expansions for k in self.kernels]

    def candidates(self) -> list[Path]:
        """Every candidate, shallow first: sum over depths d of len(ops) ** d."""
        ops = self.ops
        return [p for d in range(self.min_layers, self.max_layers + 1) for p in itertools.product(ops, repeat=d)]

    def sample(self, rng: np.random.Generator) -> Path:
        """Single-path uniform sampling: a depth uniformly, then every layer's op uniformly (SPOS)."""
        ops = self.ops
        depth = int(rng.integers(self.min_layers, self.max_layers + 1))
        return tuple(ops[int(i)] for i in rng.integers(0, len(ops), size=depth))

    def largest(self) -> Path:
        return (max(self.ops),) * self.max_layers

    def to_dict(self) -> dict:
        return {
            "expansions": list(self.expansions),
            "kernels": list(self.kernels),
            "min_layers": self.min_layers,
            "max_layers": self.max_layers,
        }


class _Stop(Exception):
    """Ends a teacher pass once the wanted block has run (the rest of the teacher is not needed)."""


class TeacherBlocks:
    """A frozen teacher cut into a sequence of blocks, with hooks to read and replace each block's input/output.

    Args:
        teacher: a trained network; a ``StagedNet`` is cut at its stages, any other model at ``names``.
        input_shape: one sample's shape.
        names: module names of the blocks, in the order the forward pass runs them (each must run once and take
            the previous one's output).

    Example:
        >>> cut = TeacherBlocks(seed_model, (1, 8, 8))
        >>> inputs, target = cut.io(x, 2)  # what block 2 gets and gives
    """

    def __init__(self, teacher: nn.Module, input_shape: Sequence[int], names: Sequence[str] | None = None) -> None:
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if names is None:
            if not isinstance(teacher, StagedNet):
                raise UnsupportedLayerError(
                    f"{type(teacher).__name__} has no stages to cut into blocks; use a built-in staged model or name "
                    "its blocks in order, e.g. -x blocks=layer1,layer2,layer3"
                )
            names = [f"stages.{i}" for i in range(len(teacher.stages))]
        modules = dict(teacher.named_modules())
        missing = [n for n in names if n not in modules]
        if not names or missing:
            raise NetfitError(f"the teacher has no module(s) {', '.join(missing) or '(none given)'} to use as blocks")
        self.names = list(names)
        self.modules = [modules[n] for n in self.names]
        self.input_shape = tuple(input_shape)
        self._check_chain()

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    @contextlib.contextmanager
    def _hooks(self, pre: Callable | None, post: Callable | None, blocks: Sequence[int]) -> Iterator[None]:
        handles = []
        for i in blocks:
            if pre is not None:
                handles.append(self.modules[i].register_forward_pre_hook(lambda m, args, i=i: pre(i, args[0])))
            if post is not None:
                handles.append(self.modules[i].register_forward_hook(lambda m, args, out, i=i: post(i, args[0], out)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output) of every block in one teacher pass."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        with self._hooks(None, lambda i, a, out: seen.append((a.clone(), out.clone())), range(len(self))):
            self.teacher(x)
        return seen

    @torch.no_grad()
    def io(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``i``'s input and output; the teacher runs only up to block ``i``."""
        seen = {}

        def stop(_, a, out):
            seen["io"] = (a.clone(), out.clone())
            raise _Stop

        with self._hooks(None, stop, [i]), contextlib.suppress(_Stop):
            self.teacher(x)
        return seen["io"]

    def hybrid(self, x: torch.Tensor, i: int, student: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The teacher's output with block ``i`` replaced by ``student`` (a candidate's accuracy in context)."""
        with self._hooks(None, lambda _, a, out: student(a), [i]):
            return self.teacher(x)

    def _check_chain(self) -> None:
        """Every block runs once, takes the previous block's output, and maps its input size by an integer stride."""
        calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        x = torch.zeros(2, *self.input_shape, device=self.device)
        with torch.no_grad(), self._hooks(None, lambda i, a, out: calls.append((i, a, out)), range(len(self))):
            self.teacher(x)
        order = [i for i, _, _ in calls]
        if order != list(range(len(self))):
            raise NetfitError(
                f"the blocks {self.names} must each run exactly once, in this order, in the teacher's forward pass "
                f"(they ran in the order {[self.names[i] for i in order]})"
            )
        for (_, _, prev_out), (i, inp, _) in itertools.pairwise(calls):
            if inp.data_ptr() != prev_out.data_ptr() and not torch.equal(inp, prev_out):
                raise NetfitError(f"block {self.names[i]} does not take {self.names[i - 1]}'s output as its input")
        self.in_shapes = [tuple(a.shape[1:]) for _, a, _ in calls]
        self.out_shapes = [tuple(o.shape[1:]) for _, _, o in calls]
        for shape in (*self.in_shapes, *self.out_shapes):
            if len(shape) not in (2, 3):
                raise NetfitError(f"block inputs and outputs must be (channels, length) or (channels, h, w): {shape}")
        self.strides = [_stride(a, o, name) for a, o, name in zip(self.in_shapes, self.out_shapes, self.names)]
        self.stem_stride = _stride((0, *self.input_shape[1:]), self.in_shapes[0], "the stem (input -> first block)")

    @property
    def ndim(self) -> int:
        return len(self.in_shapes[0]) - 1


def _stride(inp: Sequence[int], out: Sequence[int], name: str) -> int:
    """The stride s with ceil(in / s) == out in every spatial dimension (a padded conv's output size)."""
    for s in range(1, 65):
        if all(-(-a // s) == b for a, b in zip(inp[1:], out[1:])):
            return s
    raise NetfitError(f"{name} maps size {tuple(inp[1:])} to {tuple(out[1:])}, which no strided MBConv layer matches")


class BlockSupernet(nn.Module):
    """All candidates of one block with weight sharing by position: layer l holds one MBConv per op, and a
    candidate runs the first ``len(path)`` layers with its ops (the first layer strides to the output width)."""

    def __init__(self, space: BlockSpace, ndim: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.space = space
        self.layers = nn.ModuleList(
            nn.ModuleDict({candidate_id((op,)): self.make_layer(ndim, cin, cout, stride, pos, op) for op in space.ops})
            for pos in range(space.max_layers)
        )
        self.path: Path = space.largest()

    @staticmethod
    def make_layer(ndim: int, cin: int, cout: int, stride: int, position: int, op: Op) -> InvertedResidual:
        """Layer ``position`` of a block with ``op``: the first maps cin -> cout at ``stride``, the rest keep it."""
        width = cin if position == 0 else cout
        e, k = op
        return InvertedResidual(width, width * e, cout, stride if position == 0 else 1, k, expand=True, ndim=ndim)

    def forward(self, x: torch.Tensor, path: Path | None = None) -> torch.Tensor:
        for layer, op in zip(self.layers, path or self.path):
            x = layer[candidate_id((op,))](x)
        return x


class BlockTrainer(nn.Module):
    """What ``Run.train`` trains for block ``index``: the block's supernet (the only parameters, hence the only
    checkpointed state) next to the frozen teacher, which is kept out of the module tree (its batch norms stay
    in eval mode and out of checkpoints). ``forward`` gives the teacher's logits with this block replaced by the
    largest candidate, so the engine's per-epoch validation accuracy reads how well the block fits in context."""

    def __init__(self, cut: TeacherBlocks, index: int, supernet: BlockSupernet) -> None:
        super().__init__()
        self.supernet = supernet
        self._cut = (cut,)  # a tuple hides the teacher from nn.Module's registration
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        largest = self.supernet.space.largest()
        return self._cut[0].hybrid(x, self.index, lambda inp: self.supernet(inp, largest))

    def step_fn(self, seed: int) -> Callable:
        """The engine step: one candidate sampled uniformly (seeded by run seed, block, step: the same on resume),
        trained on the teacher's (input, output) of this block with MSE."""

        def step(ctx) -> StepOutput:
            inp, target = self._cut[0].io(ctx.x, self.index)
            path = self.supernet.space.sample(np.random.default_rng([seed, self.index, ctx.step]))
            loss = F.mse_loss(self.supernet(inp, path), target)
            return StepOutput(loss, None, {"mse": float(loss.detach()), "depth": float(len(path))})

        return step


class _Features:
    """A minimal data bundle of precomputed block inputs (what ``recalibrate_norms`` reads)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.train = torch.utils.data.TensorDataset(x, torch.zeros(len(x)))

    @staticmethod
    def prepare(x: torch.Tensor, train: bool = False, generator: Any = None) -> torch.Tensor:
        return x


@torch.no_grad()
def block_samples(
    cut: TeacherBlocks, index: int, data: Any, split: str, samples: int, seed: int, batch_size: int = 256
):
    """The teacher's (inputs, outputs) of block ``index`` on a seeded draw of ``samples`` samples of ``split``
    (un-augmented), computed batch by batch."""
    x_all, _ = getattr(data, split).tensors
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))[:samples]
    ins, outs = [], []
    for batch in order.split(batch_size):
        inp, out = cut.io(data.prepare(x_all[batch].to(cut.device), train=False), index)
        ins.append(inp)
        outs.append(out)
    return torch.cat(ins), torch.cat(outs)


@torch.no_grad()
def rate_block(
    supernet: BlockSupernet,
    recal_inputs: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[Path, float]:
    """Every candidate's loss ``mean |s - t| / std(t)`` on held-out (inputs, targets), each rated alone after
    recalibrating its batch norms on ``recal_inputs`` (the shared statistics belong to no single candidate).

    A layer's statistics depend only on the layers before it, so the candidates are walked as a prefix tree and
    each layer is recalibrated once per prefix: the ratings equal ``rate_naively``'s (``recalibrate_norms`` of
    each whole candidate, then its evaluation) at a fraction of the cost. Deterministic and order-free."""
    scale = float(targets.float().std()) or 1.0
    was_training = supernet.training
    losses: dict[Path, float] = {}
    space = supernet.space

    def visit(prefix: Path, recal: torch.Tensor, held_out: torch.Tensor) -> None:
        if len(prefix) >= space.min_layers:
            losses[prefix] = _rating(held_out, targets, scale)
        if len(prefix) == space.max_layers:
            return
        for op in space.ops:
            layer = supernet.layers[len(prefix)][candidate_id((op,))]
            out = _recalibrate_layer(layer, recal, seed, batch_size)
            layer.eval()
            visit((*prefix, op), out, torch.cat([layer(x) for x in held_out.split(batch_size)]))

    try:
        visit((), recal_inputs, inputs)
    finally:
        supernet.train(was_training)
    return {path: losses[path] for path in space.candidates()}


def _rating(out: torch.Tensor, targets: torch.Tensor, scale: float) -> float:
    """mean |s - t| / std(t)."""
    return float((out - targets).abs().sum()) / targets.numel() / scale


def _recalibrate_layer(layer: nn.Module, inputs: torch.Tensor, seed: int, batch_size: int) -> torch.Tensor:
    """``recalibrate_norms`` of one layer, returning its outputs of that pass (batch statistics, as the next
    layer sees them when a whole candidate is recalibrated) at their samples' positions."""
    batches = recalibration_batches(len(inputs), len(inputs), batch_size, seed)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        recalibrate_norms(layer, _Features(inputs), samples=len(inputs), batch_size=batch_size, seed=seed)
    finally:
        handle.remove()
    out = None
    for batch, y in zip(batches, seen, strict=True):
        out = y.new_zeros((len(inputs), *y.shape[1:])) if out is None else out
        out[batch] = y
    return out


@torch.no_grad()
def rate_naively(
    supernet: BlockSupernet,
    recal_inputs: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[Path, float]:
    """The reference rating ``rate_block`` reproduces: per candidate, ``recalibrate_norms`` of the whole path
    (the supernet set to it), then its loss on the held-out data; the reference the tests hold it to."""
    scale = float(targets.float().std()) or 1.0
    losses = {}
    for path in supernet.space.candidates():
        supernet.path = path
        recalibrate_norms(supernet, _Features(recal_inputs), len(recal_inputs), batch_size, seed)
        supernet.eval()
        out = torch.cat([supernet(x, path) for x in inputs.split(batch_size)])
        losses[path] = _rating(out, targets, scale)
    supernet.path = supernet.space.largest()
    return losses


def layer_costs(
    space: BlockSpace, ndim: int, in_shape: Sequence[int], out_shape: Sequence[int], stride: int, latency: dict | None
) -> dict[tuple[int, Op], dict[str, float]]:
    """Cost of each (layer position, op) of a block, measured with netfit's cost model on the layer's input shape
    (position 0 sees the block input; later positions, being alike, share position 1's cost); ``latency``
    (device, backend) adds its measured latency. A candidate's cost is the sum over its layers."""
    out = {}
    for position in range(min(2, space.max_layers)):
        shape = in_shape if position == 0 else out_shape
        for op in space.ops:
            layer = BlockSupernet.make_layer(ndim, in_shape[0], out_shape[0], stride, position, op).eval()
            cost = count_cost(layer, shape)
            row: dict[str, float] = {"macs": cost.macs, "params": cost.params}
            if latency is not None:
                row["latency_ms"] = measure(layer, shape, "latency_ms", **latency)
            out[(position, op)] = row
    return out


def path_cost(costs: dict[tuple[int, Op], dict[str, float]], path: Path, metric: str) -> float:
    return sum(costs[(min(position, 1), op)][metric] for position, op in enumerate(path))


__all__ = [
    "BlockSpace",
    "BlockSupernet",
    "BlockTrainer",
    "TeacherBlocks",
    "block_samples",
    "candidate_id",
    "layer_costs",
    "path_cost",
    "rate_block",
    "rate_naively",
]
