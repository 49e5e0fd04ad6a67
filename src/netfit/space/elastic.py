"""The elastic supernet of DNA: Markov width gates on traced channel groups and Markov depth gates on blocks.

Width: the channels of every prunable group (already ordered, most important first) are cut into ``units``
consecutive units. Unit 0 is always kept; unit u is kept with probability sigmoid(a_u) given that unit u-1 is
kept, so P(width >= u) = prod_{j<=u} sigmoid(a_j) (DMCP's Markov chain). Depth: the blocks of a stage that
keep their input shape form the same kind of chain, so a stage always keeps a leading run of blocks. A user
model with residual blocks is first cut into stages (``netfit.space.blocks.stage_blocks``); one without them
has width gates only.

Gates act through forward hooks on a plain model: a channel is switched off by scaling it at the input of
every layer that consumes it (which removes it exactly as slicing would), and a skipped block returns its
input. Three modes: ``full`` (no gates), ``hard`` (a sampled or chosen architecture: 0/1 gates, skipped
blocks are not computed) and ``soft`` (every gate at its keep probability, for the architecture gradient;
``set_soft_rows`` / ``set_hard_rows`` give each share of a batch its own gates, so several budgets' networks
run in one pass, with batch norms normalising each share on its own statistics as separate passes would).
A hard architecture can also run SLICED (``run_sliced``): the sub-network's own layers on slices of the
supernet's parameters, so it costs the sub-network's MACs instead of the supernet's, with the same outputs
and gradients as the masked pass; so can a soft one, without the units and blocks it keeps with probability
below a tail (``run_soft_sliced``); several of either kind share one sliced pass, each on its share of a batch
(``run_rows_sliced``; all in ``netfit.space.sliced``).

The expected cost is the cost model's own formula (conv/linear MACs at batch 1, trainable parameters) with
expected widths and block keep probabilities in place of integers, calibrated once against ``count_cost``,
so for a 0/1 architecture it equals the counted cost of the materialised network. With a measured
``latency_table`` (``netfit.space.latency_table``) the cost also has ``latency_ms``, from the same widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..models import StagedNet
from .blocks import stage_blocks
from .chains import Chains
from .cost_formula import calibrated_formula
from .latency_table import LatencyTable
from .layers import BATCH_NORMS, CONVS, dim_size, share_batch_norm
from .sliced import SlicedRunner, sample_rows
from .subnet import SubnetSpace


@dataclass
class Arch:
    """A 0/1 architecture of the elastic space: kept units per gated group and blocks per stage."""

    units: list[int]
    depths: list[int] | None = None


class ElasticNet:
    """Gates over a (grown, channel-ordered) model; see the module docstring.

    Args:
        model: the network whose channels and blocks are gated; its channels must be ordered (``grow``). A user
            model with residual blocks is gated as a copy cut into stages (``self.model``).
        input_shape: one sample's shape.
        units: width gates per channel group (fewer for groups with fewer channels).
        min_depths: blocks per stage that are never skipped (default: the leading blocks that change shape).

    Example:
        >>> net = ElasticNet(grown, (1, 28, 28))
        >>> net.attach()
        >>> net.set_hard(net.smallest())
        >>> logits = net.model(x)
    """

    def __init__(
        self, model: nn.Module, input_shape: Sequence[int], units: int = 16, min_depths: Sequence[int] | None = None
    ) -> None:
        training = model.training  # tracing and costing below leave the model in eval mode: given back after
        model = stage_blocks(model, input_shape)
        self.model = model
        self.input_shape = tuple(input_shape)
        self.space = SubnetSpace(model, input_shape)
        self.space.importance = {g.id: -torch.arange(g.size, dtype=torch.float) for g in self.space.prunable}
        self.gated = [g for g in self.space.prunable if g.size > 1]
        self.gate_of = {g.id: i for i, g in enumerate(self.gated)}
        self.unit_bounds = [_unit_bounds(g.size, units) for g in self.gated]
        self.unit_index = [
            torch.repeat_interleave(torch.arange(len(b) - 1), torch.as_tensor(b).diff()) for b in self.unit_bounds
        ]
        self.blocks, self.min_depths = self._skippable_blocks(min_depths)
        # the gates' and stages' Markov chains evaluated together (``Chains``), and each gate's unit sizes
        self._width_chains = Chains([len(b) - 2 for b in self.unit_bounds])
        self._depth_chains = Chains([d - m for d, m in zip(self.depths or [], self.min_depths)])
        self._unit_sizes = torch.zeros(len(self.gated), self._width_chains.longest + 1)
        for i, b in enumerate(self.unit_bounds):
            self._unit_sizes[i, : len(b) - 1] = torch.as_tensor(b).diff()
        self.layers, self.formula, self.offset = calibrated_formula(
            model, self.input_shape, self.space.groups, self.gated, self.blocks
        )
        self.latency_table: LatencyTable | None = None  # set by ``latency_table.measure_table``
        self._consumers = self._consumer_entries()
        self._unit_index_device: tuple[torch.device, list[torch.Tensor]] | None = None
        self._unit_sizes_like: dict[tuple, torch.Tensor] = {}  # _unit_sizes per (device, dtype), copied once
        self._masks: list[torch.Tensor | None] | None = None
        self._input_masks: dict[tuple, torch.Tensor | None] = {}  # this pass's consumer masks (``_input_mask``)
        self._block_gates: list[torch.Tensor | float | None] | None = None
        self._shares: list[slice] | None = None  # batch shares normalised apart (``set_soft_rows``)
        self._handles: list = []
        self._sliced = SlicedRunner(self)  # before any gate is attached: its template carries none
        model.train(training)

    # ----- the space
    @property
    def num_units(self) -> list[int]:
        return [len(b) - 1 for b in self.unit_bounds]

    @property
    def depths(self) -> list[int] | None:
        return self.space.depths

    def largest(self) -> Arch:
        return Arch(self.num_units, list(self.depths) if self.depths else None)

    def smallest(self) -> Arch:
        return Arch([1] * len(self.gated), list(self.min_depths) if self.depths else None)

    def widths(self, arch: Arch) -> dict[int, int]:
        """Channels kept per group id (prunable groups only) for a 0/1 architecture."""
        widths = {g.id: g.size for g in self.space.prunable}
        widths.update({g.id: self.unit_bounds[i][arch.units[i]] for i, g in enumerate(self.gated)})
        return widths

    def materialize(self, arch: Arch) -> nn.Module:
        """The plain dense network of ``arch`` (leading channels and leading blocks of the supernet)."""
        return self.space.materialize(self.widths(arch), arch.depths)

    # ----- probabilities
    @property
    def num_width_logits(self) -> int:
        return sum(n - 1 for n in self.num_units)

    @property
    def num_depth_logits(self) -> int:
        return len(self.blocks)

    def _padded_unit_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """P(width >= u) of every gate as one (..., gates, most units) tensor, 0 past a gate's units."""
        reach = self._width_chains.products(torch.sigmoid(logits))
        return torch.cat([reach.new_ones(*reach.shape[:-1], 1), reach], -1)

    def unit_probs(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """P(width >= u) for u = 0..U-1 of every gate, from the flat width logits (one per unit after the first);
        logits of shape (R, n) give (R, U) per gate."""
        padded = self._padded_unit_probs(logits)
        return [padded[..., g, :n] for g, n in enumerate(self.num_units)]

    def block_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """P(block kept) of every skippable block (in ``self.blocks`` order), from the flat depth logits: shape
        (blocks,), or (R, blocks) for logits of shape (R, n)."""
        if not self.blocks:
            return logits.new_zeros(*logits.shape[:-1], 0)
        return self._depth_chains.flatten(self._depth_chains.products(torch.sigmoid(logits)))

    def sample(self, width_logits: torch.Tensor, depth_logits: torch.Tensor, gen: torch.Generator) -> Arch:
        """Draw an architecture from the Markov chains (each unit/block kept only if the previous one is)."""

        def draw(chains: Chains, logits: torch.Tensor) -> list[int]:  # every chain's leading run of kept links
            cond = torch.sigmoid(logits.detach().cpu())
            kept = (torch.rand(len(cond), generator=gen) < cond).to(cond.dtype)
            return chains.products(kept).sum(-1).long().tolist()

        units = [1 + n for n in draw(self._width_chains, width_logits)]
        if not self.depths:
            return Arch(units)
        return Arch(units, [m + n for m, n in zip(self.min_depths, draw(self._depth_chains, depth_logits))])

    def most_probable(self, width_logits: torch.Tensor, depth_logits: torch.Tensor) -> tuple[dict[int, float], Arch]:
        """Expected width ratio per group id (of the supernet's width) and the architecture of the expected
        number of units and blocks, rounded."""
        probs = self._padded_unit_probs(width_logits.detach().cpu())
        widths = (probs * self._unit_sizes).sum(-1).tolist()
        ratios = {g.id: w / g.size for g, w in zip(self.gated, widths)}
        units = [max(1, round(n)) for n in probs.sum(-1).tolist()]
        if not self.depths:
            return ratios, Arch(units)
        reach = self._depth_chains.products(torch.sigmoid(depth_logits.detach().cpu()))
        return ratios, Arch(units, [m + round(n) for m, n in zip(self.min_depths, reach.sum(-1).tolist())])

    # ----- expected cost
    @property
    def metrics(self) -> tuple[str, ...]:
        """The budget metrics this space's cost model computes exactly (and differentiably)."""
        return ("macs", "params", "latency_ms") if self.latency_table else ("macs", "params")

    def cost(self, arch: Arch, calibrated: bool = True) -> dict:
        """Every metric of ``metrics`` for a 0/1 ``arch`` (floats)."""
        return self.cost_at(self.widths(arch), arch.depths, calibrated)

    def cost_at(self, widths: dict[int, int], depths: Sequence[int] | None, calibrated: bool = True) -> dict:
        """MACs and params of the network with ``widths`` channels per group id and ``depths`` blocks per stage."""
        return {k: float(v[0]) for k, v in self.costs_at([widths], depths, calibrated).items()}

    def costs_at(
        self, rows: Sequence[dict[int, int]], depths: Sequence[int] | None, calibrated: bool = True
    ) -> dict[str, torch.Tensor]:
        """``cost_at`` of several width choices at one depth in one batched call: float64 tensors of shape (R,)."""
        width = torch.tensor([[float(w[g.id]) for g in self.gated] for w in rows], dtype=torch.float64)
        keep = torch.tensor([self._keep(depths)], dtype=torch.float64).expand(len(rows), -1)
        return self._cost(width, keep, calibrated)

    def _keep(self, depths: Sequence[int] | None) -> list[float]:
        return [float(j < depths[s]) for s, j in self.blocks] if depths else [1.0] * len(self.blocks)

    def _cost(self, width: torch.Tensor, keep: torch.Tensor, calibrated: bool) -> dict[str, torch.Tensor]:
        """The metrics of R rows of widths (R, gates) and block keeps (R, blocks)."""
        table = self.latency_table
        cost = self.formula(width, keep, table.coefs if table else None)
        latency = cost.pop("latency", None)
        if calibrated:
            cost = {"macs": cost["macs"] + self.offset["macs"], "params": cost["params"] + self.offset["params"]}
        if latency is not None:
            cost["latency_ms"] = table.offset + table.scale * latency if calibrated else latency
        return cost

    def expected_cost(self, width_logits: torch.Tensor, depth_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The expected metrics under the width and depth logits (tensors); rows of (R, n) logits give (R,)
        tensors. The expected width of a gate is the sum over its units of P(width >= u) x the unit's size."""
        probs = self._padded_unit_probs(width_logits)
        like = (probs.device, probs.dtype)  # the architecture pass prices every step: no host copy per call
        if like not in self._unit_sizes_like:
            self._unit_sizes_like[like] = self._unit_sizes.to(probs)
        width = (probs * self._unit_sizes_like[like]).sum(-1)  # (..., gates)
        keep = self.block_probs(depth_logits)
        if width.dim() == 1:
            return {k: v[0] for k, v in self._cost(width[None], keep[None], True).items()}
        return self._cost(width, keep, True)

    # ----- gating
    def set_full(self) -> None:
        self._masks, self._block_gates, self._shares = None, None, None

    def set_hard(self, arch: Arch) -> None:
        self._shares = None
        device = _device(self.model)
        index = self._unit_index_on(device)
        self._masks = [
            None if k == len(idx_b) - 1 else (index[i] < k).float()
            for i, (k, idx_b) in enumerate(zip(arch.units, self.unit_bounds))
        ]
        self._block_gates = [None if j < arch.depths[s] else 0.0 for s, j in self.blocks] if arch.depths else None

    def _unit_index_on(self, device: torch.device) -> list[torch.Tensor]:
        """``unit_index`` on ``device``, copied there once (gates are set several times per step)."""
        if self._unit_index_device is None or self._unit_index_device[0] != device:
            self._unit_index_device = (device, [i.to(device) for i in self.unit_index])
        return self._unit_index_device[1]

    def set_rows(
        self,
        soft: Sequence[tuple[torch.Tensor, torch.Tensor, slice]] = (),
        hard: Sequence[tuple[Arch, slice]] = (),
        tail: float = 0.0,
    ) -> None:
        """Gates per share of the batch: expected networks (``soft``: width logits, depth logits, batch slice) and
        0/1 architectures (``hard``: architecture, batch slice), the soft rows' shares first, all consecutive and
        covering the batch. One gated pass then computes what a ``set_soft`` or ``set_hard`` pass per share
        computes (same outputs and gradients: each share's batch norms use that share's statistics), the soft
        rows without the units and blocks they keep below ``tail`` (gate 0, as ``run_rows_sliced``)."""
        device = _device(self.model)
        self._set_rows(*self._row_keeps(soft, hard, tail, device), [row[-1] for row in soft] + [p for _, p in hard])

    def set_soft_rows(self, rows: Sequence[tuple[torch.Tensor, torch.Tensor, slice]], tail: float = 0.0) -> None:
        """``set_rows`` of expected networks only."""
        self.set_rows(soft=rows, tail=tail)

    def set_hard_rows(self, rows: Sequence[tuple[Arch, slice]]) -> None:
        """``set_rows`` of 0/1 architectures only: one masked pass computes what a ``set_hard`` pass per share does."""
        self.set_rows(hard=rows)

    def _row_keeps(self, soft: Sequence[tuple], hard: Sequence[tuple], tail: float, device: torch.device) -> tuple:
        """The keep values of ``soft`` rows then ``hard`` rows on ``device``: per gate (rows, units), and (rows,
        blocks) or None."""
        keeps = [self._soft_keep(soft, tail)] if soft else []
        keeps += [self._hard_keep([a for a, _ in hard])] if hard else []
        units = [torch.cat([keep[0][i].to(device) for keep in keeps]) for i in range(len(self.num_units))]
        return units, torch.cat([keep[1].to(device) for keep in keeps]) if self.blocks else None

    def _soft_keep(self, rows: Sequence[tuple], tail: float) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Keep probabilities of the rows' (width logits, depth logits, ...): per gate (rows, units), and
        (rows, blocks) or None; those below ``tail`` are 0 (the chains fall, so a row keeps a leading run)."""

        def above(p: torch.Tensor) -> torch.Tensor:
            return p * (p.detach() >= tail)  # probabilities are >= 0: tail 0 keeps all, unchanged

        units = [above(p) for p in self.unit_probs(torch.stack([row[0] for row in rows]))]
        return units, above(self.block_probs(torch.stack([row[1] for row in rows]))) if self.blocks else None

    def _hard_keep(self, archs: Sequence[Arch]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """0/1 keep values of ``archs``, shaped as ``_soft_keep``'s."""
        kept = torch.tensor([a.units for a in archs])  # (rows, gates)
        units = [(torch.arange(len(b) - 1) < kept[:, i, None]).float() for i, b in enumerate(self.unit_bounds)]
        blocks = None
        if self.blocks:
            blocks = torch.tensor([[float(j < a.depths[s]) for s, j in self.blocks] for a in archs])
        return units, blocks

    def _set_rows(self, units: list[torch.Tensor], blocks: torch.Tensor | None, parts: list[slice]) -> None:
        """Per-sample gates from each gate's unit keep values (rows, units) and the block keep values (rows,
        blocks), row r covering the samples of ``parts[r]``."""
        device = _device(self.model)
        sample_row = sample_rows(parts, device)
        units = torch.cat(units, 1).to(device).split(self.num_units, 1)  # one host-to-device copy, not one per gate
        index = self._unit_index_on(device)
        self._masks = [u[:, index[i]][sample_row] for i, u in enumerate(units)]
        self._block_gates = list(blocks.to(device)[sample_row].unbind(1)) if blocks is not None else None
        self._shares = parts if len(parts) > 1 else None

    def set_soft(self, width_logits: torch.Tensor, depth_logits: torch.Tensor) -> None:
        self._shares = None
        device = _device(self.model)
        index = self._unit_index_on(device)
        self._masks = [p.to(device)[index[i]] for i, p in enumerate(self.unit_probs(width_logits))]
        self._block_gates = list(self.block_probs(depth_logits)) if self.blocks else None

    def run_sliced(self, arch: Arch, x: torch.Tensor) -> torch.Tensor:
        """``arch``'s sub-network on ``x``, computed on slices of the supernet's live parameters (so gradients
        reach them) in the supernet's train/eval mode; the supernet's normalisation statistics are not touched.
        The same outputs and gradients as ``set_hard(arch)`` + a gated forward, at the sub-network's cost."""
        return self._sliced.run(arch, x)

    def run_soft_sliced(
        self, width_logits: torch.Tensor, depth_logits: torch.Tensor, x: torch.Tensor, tail: float
    ) -> torch.Tensor:
        """The expected network of one row of logits on ``x``, sliced: ``set_soft`` + a gated pass without the
        units and blocks it keeps below ``tail`` (``_soft_keep``; ``netfit.space.sliced``)."""
        return self.run_rows_sliced(x, tail, soft=[(width_logits, depth_logits, slice(0, len(x)))])

    def run_rows_sliced(
        self,
        x: torch.Tensor,
        tail: float,
        soft: Sequence[tuple[torch.Tensor, torch.Tensor, slice]] = (),
        hard: Sequence[tuple[Arch, slice]] = (),
    ) -> torch.Tensor:
        """Expected networks (``soft``: width logits, depth logits, batch slice) and sub-networks (``hard``:
        architecture, batch slice), each on its slice of ``x`` (the soft rows' first, all consecutive and covering
        it), in ONE pass of the sliced union of their networks: what ``set_soft_rows`` / ``set_hard_rows`` and a
        gated pass per kind compute, the soft rows without the units and blocks they keep below ``tail`` (which
        the pass's slices then leave out where no row keeps them). One sub-network alone runs as ``run_sliced``."""
        if not soft and len(hard) == 1:
            return self.run_sliced(hard[0][0], x)
        units, blocks = self._row_keeps(soft, hard, tail, x.device)
        parts = [row[-1] for row in soft] + [part for _, part in hard]
        return self._sliced.run_rows(units, blocks, parts, x, tail)

    def attach(self) -> None:
        """Install the gates (forward pre-hooks on consumers, gated forwards on skippable blocks)."""
        if self._handles:
            return
        modules, device = dict(self.model.named_modules()), _device(self.model)
        self._handles.append(self.model.register_forward_pre_hook(self._pass_started))
        for name, (dim, size, parts) in self._consumers.items():
            parts = [(g, pos.to(device), rep) for g, pos, rep in parts]  # the hook then copies nothing per pass
            self._handles.append(modules[name].register_forward_pre_hook(self._input_gate((dim, size, parts))))
        for k, (stage, j) in enumerate(self.blocks):
            block = self.model.stages[stage][j]
            block.forward = self._block_gate(block.forward, k)
            self._handles.append(_Restore(block))
        for norm in (m for m in self.model.modules() if isinstance(m, BATCH_NORMS)):
            norm.forward = self._share_norm(norm, norm.forward)
            self._handles.append(_Restore(norm))

    def _pass_started(self, module: nn.Module, args: tuple) -> None:
        """A new forward pass: the consumer masks of the last one belong to its graph (and maybe other gates)."""
        self._input_masks.clear()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.set_full()

    def _input_gate(self, entries: tuple):
        dim, size, parts = entries
        key = (size, tuple((g, int(pos[0]), len(pos), rep) for g, pos, rep in parts))  # consumers of the same channels

        def hook(module: nn.Module, args: tuple):
            if self._masks is None or not self.model.training:
                return None
            x = args[0]
            mask = self._input_mask(key, size, parts, x.dtype)
            if mask is None:
                return None
            shape = [1] * x.dim()
            shape[dim] = size
            if mask.dim() == 2:  # one mask per sample (set_rows)
                shape[0] = x.shape[0]
            return (x * mask.reshape(shape), *args[1:])

        return hook

    def _input_mask(self, key: tuple, size: int, parts: list, dtype: torch.dtype) -> torch.Tensor | None:
        """A consumer's input-channel mask under the current gates: (size,), or (batch, size) with per-sample
        gates; None where no gate of its inputs is set. Built once per pass for every consumer of the same
        channels (``_pass_started`` clears the cache), and a consumer fed by one whole group takes that group's
        mask as it is: a GPU pays a launch per operation here, and a network has many consumers of few groups."""
        if (key, dtype) in self._input_masks:
            return self._input_masks[key, dtype]
        masks = [(self._masks[g], pos, rep) for g, pos, rep in parts if self._masks[g] is not None]
        whole = len(parts) == 1 and parts[0][2] == 1 and len(parts[0][1]) == size  # one group is all its input
        full = None
        if whole and masks:
            full = masks[0][0].to(dtype)
        elif masks:
            per_sample = masks[0][0].dim() == 2
            full = torch.ones(size, *masks[0][0].shape[:-1], dtype=dtype, device=masks[0][0].device)
            for mask, pos, rep in masks:  # each group's channels at their place in the consumer's input
                mask = mask.to(dtype).t() if per_sample else mask.to(dtype)
                full = full.index_put((pos,), mask.repeat_interleave(rep, dim=0))
            full = full.t() if per_sample else full
        self._input_masks[key, dtype] = full
        return full

    def _block_gate(self, forward, k: int):
        def gated(x: torch.Tensor) -> torch.Tensor:
            gate = self._block_gates[k] if self._block_gates is not None and self.model.training else None
            if gate is None:
                return forward(x)
            if isinstance(gate, float) and gate == 0.0:
                return x
            if isinstance(gate, torch.Tensor) and gate.dim() == 1:  # one gate per sample (set_soft_rows)
                gate = gate.reshape(-1, *[1] * (x.dim() - 1))
            return x + gate * (forward(x) - x)

        return gated

    def _share_norm(self, norm: nn.Module, forward):
        """A batch norm that, while ``set_soft_rows`` splits the batch, normalises each share with its own batch
        statistics (leaving the running statistics alone), as one pass per share would."""

        def normed(x: torch.Tensor) -> torch.Tensor:
            if self._shares is None or not self.model.training:
                return forward(x)
            return share_batch_norm(x, self._shares, norm.weight, norm.bias, norm.eps)

        return normed

    # ----- construction
    def _skippable_blocks(self, min_depths: Sequence[int] | None) -> tuple[list[tuple[int, int]], list[int]]:
        if not isinstance(self.model, StagedNet):
            return [], []
        x = torch.zeros(1, *self.input_shape, device=_device(self.model))
        leading = []
        with torch.no_grad():
            x = self.model.eval().stem(x)
            for stage in self.model.stages:
                fixed = 0
                for j, block in enumerate(stage):
                    y = block(x)
                    if y.shape != x.shape:
                        fixed = j + 1
                    x = y
                leading.append(max(1, fixed))
        mins = [max(a, b) for a, b in zip(leading, min_depths)] if min_depths else leading
        blocks = [(s, j) for s, stage in enumerate(self.model.stages) for j in range(mins[s], len(stage))]
        return blocks, mins

    def _consumer_entries(self) -> dict[str, tuple]:
        modules = dict(self.model.named_modules())
        entries: dict[str, list] = {}
        for g in self.gated:
            for m in g.members:
                if m.role in ("in", "dw"):
                    pos = m.offset + torch.arange(g.size * m.repeat)
                    entries.setdefault(m.module, []).append((self.gate_of[g.id], pos, m.repeat))
        out = {}
        for name, parts in entries.items():
            module = modules[name]
            dim = 1 if isinstance(module, CONVS) else -1
            out[name] = (dim, dim_size(module, "in"), parts)
        return out


class _Restore:
    """Handle that removes a wrapped ``forward`` from a module instance (a gated block, a shared norm)."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def remove(self) -> None:
        self.block.__dict__.pop("forward", None)


def _unit_bounds(size: int, units: int) -> list[int]:
    n = max(1, min(units, size))
    return [round(i * size / n) for i in range(n + 1)]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
