"""Slice a model's weights to keep a subset of the channels of some channel groups."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .channels import ChannelGroup, ChannelGroupError, Member
from .layers import BATCH_NORMS, CONVS, INSTANCE_NORMS, dim_size


def _check_keep(group: ChannelGroup, idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
    idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.numel() == 0:
        raise ChannelGroupError(
            f"keep[{group.id}] must be a non-empty 1-D integer tensor of channel indices, "
            f"got dtype {idx.dtype} and shape {tuple(idx.shape)}"
        )
    idx = idx.long().cpu()
    if idx[0] < 0 or idx[-1] >= group.size or (idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all())):
        raise ChannelGroupError(
            f"keep[{group.id}] must hold sorted, distinct channel indices in [0, {group.size}); "
            "use keep_top(...) to build it"
        )
    return idx


def _set(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    """Replace parameter/buffer ``name`` by its slice along ``dim`` (no-op when it is None)."""
    old = getattr(module, name, None)
    if old is None:
        return
    new = old.detach().index_select(dim, idx.to(old.device)).clone()
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = new


# The tensors of a layer that hold the channel dimension of each role, as (attribute, dim).
ROLE_TENSORS: dict[str, tuple[tuple[str, int], ...]] = {
    "in": (("weight", 1),),
    "out": (("weight", 0), ("bias", 0)),
    "dw": (("weight", 0), ("bias", 0)),
    "norm": (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
}


def _slice_tensors(module: nn.Module, role: str, idx: torch.Tensor) -> None:
    for attr, dim in ROLE_TENSORS[role]:
        _set(module, attr, dim, idx)


def _slice_conv(module: nn.Conv2d, role: str, idx: torch.Tensor) -> None:
    _slice_tensors(module, role, idx)
    if role == "in":
        module.in_channels = len(idx)
        return
    module.out_channels = len(idx)
    if role == "dw":
        module.in_channels = module.groups = len(idx)


def _slice_linear(module: nn.Linear, role: str, idx: torch.Tensor) -> None:
    _slice_tensors(module, role, idx)
    if role == "in":
        module.in_features = len(idx)
    else:
        module.out_features = len(idx)


def _slice_norm(name: str, module: nn.Module, idx: torch.Tensor) -> None:
    _slice_tensors(module, "norm", idx)
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = (len(idx),)
    elif isinstance(module, nn.GroupNorm):
        if len(idx) % module.num_groups:
            raise UnsupportedLayerError(
                f"GroupNorm '{name}' has num_groups={module.num_groups}, which does not divide {len(idx)} "
                f"kept channels; keep a multiple of {module.num_groups} channels"
            )
        module.num_channels = len(idx)
    else:
        module.num_features = len(idx)


def _slice_module(name: str, module: nn.Module, role: str, idx: torch.Tensor) -> None:
    if isinstance(module, CONVS) and (role == "out" or (role == "in" and module.groups == 1) or role == "dw"):
        _slice_conv(module, role, idx)
    elif isinstance(module, nn.Linear) and role in ("in", "out"):
        _slice_linear(module, role, idx)
    elif role == "norm" and isinstance(module, (*BATCH_NORMS, *INSTANCE_NORMS, nn.LayerNorm, nn.GroupNorm)):
        _slice_norm(name, module, idx)
    else:
        raise UnsupportedLayerError(
            f"cannot slice '{name}' ({type(module).__name__}) as {role!r}; the channel groups do not match "
            "this model (trace it again with trace_channel_groups)"
        )


def slice_channels(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[int, torch.Tensor | Sequence[int]]
) -> nn.Module:
    """Return a copy of ``model`` keeping only the given channels of some groups.

    Every member of a group in ``keep`` is sliced (weights, biases, norm statistics) and its module attributes
    (in/out channels, features, groups, num_features, normalized_shape) updated, so the result is a plain
    model. Groups not in ``keep`` stay whole; ``model`` itself is not changed.

    Args:
        model: the model the groups were traced from.
        groups: output of ``trace_channel_groups(model, ...)``.
        keep: group id -> sorted 1-D LongTensor of kept channel indices (at least one).

    Raises:
        ChannelGroupError: an unknown group id or malformed indices.
        UnsupportedLayerError: shrinking a non-prunable group, or a GroupNorm that cannot take the new width.
    """
    return remap_channels(model, groups, _shrinking(groups, keep))


def _shrinking(groups: Sequence[ChannelGroup], keep: Mapping[int, torch.Tensor | Sequence[int]]) -> dict:
    """``keep`` checked (sorted, distinct, in range), without the groups it keeps whole."""
    by_id = _by_id(groups, keep)
    index = {gid: _check_keep(by_id[gid], idx) for gid, idx in keep.items()}
    return {gid: idx for gid, idx in index.items() if len(idx) < by_id[gid].size}


Outgoing = Literal["keep", "split", "zero"]


def remap_channels(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    index: Mapping[int, torch.Tensor],
    outgoing: Outgoing = "split",
) -> nn.Module:
    """Return a copy of ``model`` whose channel j of group g is channel ``index[g][j]`` of ``model``.

    The index may drop, reorder and repeat channels, so one function slices, permutes and widens. A repeated
    channel is copied in every producer, norm and depthwise member. What its consumers read from the copies
    (``outgoing``), all three keeping the function except "keep":
      * "split": every copy's input weight is divided by the number of copies (Net2Net widening);
      * "zero": the first occurrence keeps its weight, later copies get 0, so any leading slice of the
        channels that holds all originals also computes exactly what the original network did;
      * "keep": every copy keeps the full weight (the function changes).
    """
    new = copy.deepcopy(model)
    for (name, role), (source, scale) in _remap_plan(new, groups, index, outgoing).items():
        module = new.get_submodule(name)
        _slice_module(name, module, role, source)
        if role == "in" and bool((scale != 1).any()):
            with torch.no_grad():
                module.weight.mul_(scale.to(module.weight).view(1, -1, *[1] * (module.weight.dim() - 2)))
    return new


def channel_selections(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[int, torch.Tensor]
) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """What ``slice_channels(model, groups, keep)`` takes from each tensor, without copying the model: for every
    parameter and buffer it would change (dotted name), the (dim, kept indices) selections in order.

    ``tensor.index_select(dim, idx)`` for each selection gives the sliced tensor, so a sub-network can run on
    (and send gradients to) the full model's own parameters.
    """
    return _selections(model, _remap_plan(model, groups, keep, "keep"))


def sliced_view(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    keep: Mapping[int, torch.Tensor | Sequence[int]],
    copied: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, list[tuple[int, torch.Tensor]]]]:
    """``slice_channels(model, groups, keep)`` and ``channel_selections(model, groups, keep)`` from one plan, for
    a model whose sliced copy is only called with ``functional_call`` (a supernet's meta-device template).

    Only the modules the slicing changes, the modules named in ``copied`` and their ancestors are copied
    (shallow, with their own parameter, buffer and child dicts); every other module is SHARED with ``model``,
    which stays unchanged. Several times cheaper than the deep copy of ``slice_channels`` on a network with
    many blocks, which a supernet pays for every sampled sub-network.
    """
    plan = _remap_plan(model, groups, _shrinking(groups, keep), "keep")
    new = _copy_paths(model, {name for name, _ in plan} | set(copied))
    for (name, role), (source, _) in plan.items():
        _slice_module(name, new.get_submodule(name), role, source)
    return new, _selections(model, plan)


def _selections(model: nn.Module, plan: dict) -> dict[str, list[tuple[int, torch.Tensor]]]:
    selections: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (name, role), (source, _) in plan.items():
        module = model.get_submodule(name)
        for attr, dim in ROLE_TENSORS[role]:
            if getattr(module, attr, None) is not None:
                selections.setdefault(f"{name}.{attr}" if name else attr, []).append((dim, source))
    return selections


def _copy_paths(model: nn.Module, names: set[str]) -> nn.Module:
    """A shallow copy of ``model`` in which the modules ``names`` and their ancestors are new objects with their
    own parameter, buffer and child dicts (so slicing them leaves ``model`` alone); all others are shared."""
    paths = {""} | {".".join(n.split(".")[: i + 1]) for n in names for i in range(n.count(".") + 1)}

    def copy_at(module: nn.Module, path: str) -> nn.Module:
        new = copy.copy(module)
        new._parameters, new._buffers, new._modules = dict(module._parameters), dict(module._buffers), {}
        for key, child in module._modules.items():
            child_path = f"{path}.{key}" if path else key
            new._modules[key] = copy_at(child, child_path) if child_path in paths else child
        return new

    return copy_at(model, "")


def _remap_plan(
    model: nn.Module, groups: Sequence[ChannelGroup], index: Mapping[int, torch.Tensor], outgoing: Outgoing
) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """Per (module, role) touched by ``index``: the source position of every new channel and the factor a
    consumer's input weight of it is multiplied by."""
    by_id = _by_id(groups, index)
    entries: dict[tuple[str, str], list[tuple[Member, torch.Tensor, torch.Tensor, int]]] = {}
    for gid, idx in index.items():
        group, idx = by_id[gid], torch.as_tensor(idx, dtype=torch.long).cpu()
        if idx.dim() != 1 or idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= group.size:
            raise ChannelGroupError(f"index[{gid}] must be a non-empty 1-D tensor of channels in [0, {group.size})")
        if not group.prunable and not torch.equal(idx, torch.arange(group.size)):
            raise UnsupportedLayerError(f"channel group {gid} cannot be pruned: {group.reason}")
        factor = _outgoing_scale(idx, group.size, outgoing)
        for m in group.members:
            entries.setdefault((m.module, m.role), []).append((m, idx, factor, group.size))
    plan = {}
    for (name, role), members in entries.items():
        module = model.get_submodule(name)
        size = dim_size(module, role)
        if size is None:
            raise UnsupportedLayerError(f"cannot slice '{name}' ({type(module).__name__}): unknown channel dim")
        source, scale, pos = [], [], 0
        for member, idx, factor, gsize in sorted(members, key=lambda e: e[0].offset):
            source.append(torch.arange(pos, member.offset))
            scale.append(torch.ones(member.offset - pos))
            source.append(member.indices(idx))
            scale.append(factor.repeat_interleave(member.repeat))
            pos = member.offset + gsize * member.repeat
        source.append(torch.arange(pos, size))
        scale.append(torch.ones(size - pos))
        plan[(name, role)] = (torch.cat(source), torch.cat(scale))
    return plan


def _outgoing_scale(idx: torch.Tensor, size: int, outgoing: Outgoing) -> torch.Tensor:
    """Per position of ``idx``: the factor its consumers' input weights are multiplied by."""
    if outgoing == "keep":
        return torch.ones(len(idx))
    if outgoing == "split":
        return 1.0 / torch.bincount(idx, minlength=size)[idx].float()
    first = torch.zeros(len(idx), dtype=torch.bool)
    seen: set[int] = set()
    for j, channel in enumerate(idx.tolist()):
        first[j] = channel not in seen
        seen.add(channel)
    return first.float()


def _by_id(groups: Sequence[ChannelGroup], requested: Mapping[int, object]) -> dict[int, ChannelGroup]:
    by_id = {g.id: g for g in groups}
    for gid in requested:
        if gid not in by_id:
            raise ChannelGroupError(f"unknown channel group {gid}; known ids: 0..{len(groups) - 1}")
    return by_id
