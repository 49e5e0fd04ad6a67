"""Sub-networks of an elastic supernet run SLICED: their own layers on slices of the supernet's live
parameters, so a pass costs the sub-network's MACs instead of the supernet's (``ElasticNet.run_sliced`` and
``run_soft_sliced``).

A hard (0/1) architecture runs exactly as the gated supernet would. A soft one (every gate at its keep
probability, DNA's expected network) is first truncated where the keep probabilities fall below ``tail``; the
units and blocks left keep their probabilities as gates, applied by hooks on the shared shape-only template,
so the pass computes the expected network minus channels and blocks whose gate is below ``tail``. Several
networks (0/1 or soft) can share one pass, each on its share of the batch (``run_rows``): the pass runs the
slices of their union, the hooks gate each sample by its own network's values and batch norms normalise each
share on its own statistics, so it computes what one pass per network would, with one pass's fixed costs.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import BATCH_NORMS, share_batch_norm
from .prune import sliced_view

if TYPE_CHECKING:
    from .elastic import Arch, ElasticNet


@dataclass
class _Skeleton:
    """A sub-network's modules on the meta device and what each takes from the supernet's tensors; for a
    soft pass also, per gated consumer, the positions of the supernet's input channels it keeps."""

    module: nn.Module
    slots: list  # (skeleton module's tensor dict, name, supernet module's tensor dict, selections) per tensor
    gather: _Gather | None = None  # set (and the soft gates hooked) the first time a soft pass uses it


@dataclass
class _Gather:
    """Where each gated consumer's kept input channels read their gate in a soft pass: columns of the bank
    [1, the units of gate 0, of gate 1, ...] (column 0 for channels no gate drives), all consumers' in one index,
    so a pass builds every consumer's gates with one gather instead of a few ops per consumer."""

    names: list[str]
    sizes: list[int]
    columns: torch.Tensor

    def on(self, device: torch.device) -> torch.Tensor:
        if self.columns.device != device:
            self.columns = self.columns.to(device)
        return self.columns


class SlicedRunner:
    """The sliced passes of one ``ElasticNet``. Skeletons (the sub-network's modules on the meta device, and
    what each takes from the supernet's tensors) are built once per architecture and the last ``CACHE`` kept:
    the smallest network and every budget's truncated expected network recur step after step."""

    CACHE = 32

    def __init__(self, net: ElasticNet) -> None:
        self.net = net
        self.template = _shape_only(net.model)  # taken before the supernet's gates are attached
        for norm in self.template.modules():  # copied into every skeleton that slices them (copy.copy)
            if isinstance(norm, BATCH_NORMS):
                norm.__class__ = _share_norm_class(type(norm))
                norm.netfit_shares = self._shares
        self.sources = _tensor_slots(net.model)  # the modules are fixed; their tensors are read at every pass
        self.training = self.template.training  # the mode of the template and every skeleton (_follow_mode)
        self.skeletons: OrderedDict[tuple, _Skeleton] = OrderedDict()
        self.soft: dict | None = None  # while a soft pass runs: input gates per consumer, gates per block

    def run(self, arch: Arch, x: torch.Tensor) -> torch.Tensor:
        """``arch``'s sub-network on ``x``, in the supernet's train/eval mode; its statistics are not touched."""
        self._follow_mode()
        skeleton = self._skeleton(arch)
        # the skeleton's meta tensors swapped for slices of the supernet's for the pass and back (what
        # functional_call does, without walking both module trees at every pass: 5% of a MobileNetV2 step)
        swapped = []
        try:
            for target, name, source, selections in skeleton.slots:
                tensor = source[name]
                for dim, idx in selections:  # a leading range (an int): a view, no copy
                    if isinstance(idx, int):
                        tensor = tensor.narrow(dim, 0, idx)
                    else:
                        tensor = tensor.index_select(dim, idx.to(tensor.device))
                swapped.append((target, name, target[name]))
                target[name] = tensor
            return skeleton.module(x)
        finally:
            for target, name, original in reversed(swapped):
                target[name] = original

    def run_rows(
        self, units: list[torch.Tensor], blocks: torch.Tensor | None, parts: list[slice], x: torch.Tensor, tail: float
    ) -> torch.Tensor:
        """Several networks of the space, each on its share of ``x`` (``parts``: consecutive slices covering it),
        in ONE pass of the sliced union of their networks: row r's units and blocks are gated by its keep values
        (``units``: per gate (rows, units); ``blocks``: (rows, blocks); 0/1 for sampled sub-networks, keep
        probabilities for expected networks, whose gradients then reach the logits) on its share's samples, and
        every share's batch norms normalise it on its own statistics, as one pass per row would. Units and blocks
        kept below ``tail`` by every row are left out."""
        net, device = self.net, x.device
        arch = _truncated(net, [u.detach().amax(0) for u in units], None if blocks is None else blocks.amax(0), tail)
        gather = self._soft_ready(self._skeleton(arch), arch)
        ones = torch.ones(len(parts), 1, dtype=units[0].dtype, device=device)  # column 0: channels no gate drives
        bank = torch.cat([ones, *(u.to(device) for u in units)], 1)
        gates = bank[:, gather.on(device)]  # (rows, every consumer's kept channels)
        one = len(parts) == 1  # one row: its gates broadcast over the batch
        row_of = None if one else sample_rows(parts, device)
        gates = gates[0] if one else gates[row_of]
        inputs = dict(zip(gather.names, gates.split(gather.sizes, dim=-1)))
        block_gates = None
        if blocks is not None:
            blocks = blocks.to(device)
            block_gates = list(blocks[0] if one else blocks[row_of].t())
        self.soft = {"inputs": inputs, "blocks": block_gates, "shares": None if one else parts}
        try:
            return self.run(arch, x)
        finally:
            self.soft = None

    def _follow_mode(self) -> None:
        """The template and the skeletons in the supernet's train/eval mode, set only when it changes (a pass
        setting it on its skeleton walked the whole module tree, 2% of a MobileNetV2 step); skeletons copy their
        modules from the template, so a new one starts in its mode."""
        if self.training != self.net.model.training:
            self.training = self.net.model.training
            for module in [self.template] + [s.module for s in self.skeletons.values()]:
                module.train(self.training)

    def _skeleton(self, arch: Arch) -> _Skeleton:
        """The sub-network's skeleton, built once while it stays in the cache."""
        net = self.net
        key = (tuple(arch.units), tuple(arch.depths) if arch.depths else None)
        if key in self.skeletons:
            self.skeletons.move_to_end(key)
            return self.skeletons[key]
        widths = net.widths(arch)
        keep = {g.id: torch.arange(widths[g.id]) for g in net.gated if widths[g.id] < g.size}
        # "stages" is copied too: truncating a stage below replaces its entry in the skeleton's own list
        skeleton, selections = sliced_view(self.template, net.space.groups, keep, ["stages"] if arch.depths else [])
        if arch.depths:
            for s, depth in enumerate(arch.depths):
                skeleton.stages[s] = nn.Sequential(*list(skeleton.stages[s])[:depth])
        slots = [
            (target, name, self.sources[full][0], [(dim, _leading(idx)) for dim, idx in selections.get(full, ())])
            for full, (target, name) in _tensor_slots(skeleton).items()
        ]
        self.skeletons[key] = _Skeleton(skeleton.train(self.training), slots)  # its new modules start in training
        if len(self.skeletons) > self.CACHE:
            self.skeletons.popitem(last=False)
        return self.skeletons[key]

    def _soft_ready(self, skeleton: _Skeleton, arch: Arch) -> _Gather:
        """``skeleton.gather``, computed and the soft gates hooked on first use (sampled sub-networks, new every
        step, never pay for either)."""
        if skeleton.gather is None:
            self._hook(skeleton.module, arch)
            net, widths = self.net, self.net.widths(arch)
            first = torch.tensor([1, *net.num_units]).cumsum(0)  # bank column of each gate's unit 0
            names, columns = [], []
            for name, (_, size, parts) in net._consumers.items():
                mask = torch.ones(size, dtype=torch.bool)
                column = torch.zeros(size, dtype=torch.long)
                for gate, pos, rep in parts:  # position k of ``pos`` reads channel k // rep of the gate's group
                    channel = torch.arange(len(pos)) // rep
                    mask[pos] = channel < widths[net.gated[gate].id]
                    column[pos] = first[gate] + net.unit_index[gate][channel]
                names.append(name)
                columns.append(column[mask])
            skeleton.gather = _Gather(names, [len(c) for c in columns], torch.cat(columns))
        return skeleton.gather

    def _hook(self, skeleton: nn.Module, arch: Arch) -> None:
        """Give the skeleton's gated consumers and skippable blocks the soft pass's gates, once per module: a
        skeleton shares its unchanged modules with the template and the other skeletons, and its copied ones
        keep their hooks (``copy.copy``) or, for classes that copy themselves anew (torch.fx), lose them."""
        modules = dict(skeleton.named_modules())
        for name, (dim, _, _) in self.net._consumers.items():
            if name in modules and not _gated(modules[name]._forward_pre_hooks):
                modules[name].register_forward_pre_hook(self._input_gate(name, dim))
        for k, (stage, j) in enumerate(self.net.blocks):
            kept = arch.depths is None or j < arch.depths[stage]  # no depths: every block
            if kept and not _gated(skeleton.stages[stage][j]._forward_hooks):
                skeleton.stages[stage][j].register_forward_hook(self._block_gate(k))

    def _input_gate(self, name: str, dim: int):
        def hook(module: nn.Module, args: tuple):
            if self.soft is None:
                return None
            x, gate = args[0], self.soft["inputs"][name]
            shape = [1] * x.dim()
            shape[dim] = -1
            if gate.dim() == 2:  # one row of gates per sample
                shape[0] = x.shape[0]
            return (x * gate.to(x.dtype).reshape(shape), *args[1:])

        hook.netfit_gate = True
        return hook

    def _block_gate(self, k: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor):
            if self.soft is None:
                return None
            x, gate = args[0], self.soft["blocks"][k].to(output.dtype)
            if gate.dim() == 1:  # one gate per sample
                gate = gate.reshape(-1, *[1] * (x.dim() - 1))
            return x + gate * (output - x)

        hook.netfit_gate = True
        return hook

    def _shares(self) -> list[slice] | None:
        """The batch's shares while rows share a pass (their batch norms normalise each on its own)."""
        return None if self.soft is None else self.soft["shares"]


def sample_rows(parts: list[slice], device: torch.device) -> torch.Tensor:
    """The row of every sample of a batch split into ``parts`` (consecutive slices covering it)."""
    lengths = torch.tensor([part.stop - part.start for part in parts], device=device)
    return torch.repeat_interleave(torch.arange(len(parts), device=device), lengths)


def _leading(idx: torch.Tensor) -> torch.Tensor | int:
    """``idx``'s length where it is the leading range 0..n-1, else ``idx``. A leading range is sliced as a view:
    a copy (``index_select``) of a channels_last weight comes out in the default layout, and oneDNN's depthwise
    convolution with both input and weight in it is ~6x slower on 1x1 maps (MobileNetV2's last stages)."""
    n = len(idx)
    return n if torch.equal(idx, torch.arange(n, device=idx.device)) else idx


def _gated(hooks: dict) -> bool:
    return any(getattr(h, "netfit_gate", False) for h in hooks.values())


def _truncated(net: ElasticNet, unit_p: list[torch.Tensor], block_p: torch.Tensor | None, tail: float) -> Arch:
    """The units and blocks whose keep probability is at least ``tail`` (every chain is non-increasing, so they
    are leading runs), at least one unit per gate and the stages' fixed blocks."""
    from .elastic import Arch

    units = [max(1, int((p.detach() >= tail).sum())) for p in unit_p]
    if block_p is None:
        return Arch(units, list(net.depths) if net.depths else None)
    depths = list(net.min_depths)
    for (stage, _), p in zip(net.blocks, block_p.detach().tolist()):
        depths[stage] += int(p >= tail)
    return Arch(units, depths)


def _share_norm_class(cls: type) -> type:
    """``cls`` (a batch norm class) whose training-mode forward, while the runner's pass shares the batch
    between rows (``netfit_shares()``), normalises each share on its own statistics, and otherwise is its own.
    A class rather than a forward hook: a hook would recompute an output the norm had already computed for
    the whole batch (the whole batch's batch norm is about 6% of a MobileNetV2 search step)."""
    if cls not in _SHARE_NORM_CLASSES:

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shares = self.netfit_shares()
            if shares is None or not self.training:
                return cls.forward(self, x)
            return share_batch_norm(x, shares, self.weight, self.bias, self.eps)

        _SHARE_NORM_CLASSES[cls] = type(f"Shared{cls.__name__}", (cls,), {"forward": forward})
    return _SHARE_NORM_CLASSES[cls]


_SHARE_NORM_CLASSES: dict[type, type] = {}


def _shape_only(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device (no memory, no compute) whose norms never write their statistics:
    in training mode they normalise on batch statistics without passing the running ones (which the passes
    read from the supernet's own buffers, uncopied), in eval mode they read them."""
    template = copy.deepcopy(model).to("meta")
    for m in template.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
    return template


def _tensor_slots(model: nn.Module) -> dict[str, tuple[dict, str]]:
    """Every parameter and buffer of ``model`` by its full name: the dict that holds it and its key there."""
    slots = {}
    for prefix, module in model.named_modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                full = f"{prefix}.{name}" if prefix else name
                if tensor is not None and full not in slots:
                    slots[full] = (store, name)
    return slots
