"""Channel importance scores for choosing which channels of a group to keep."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .channels import ChannelGroup, ChannelGroupError, Member
from .layers import CONVS


def _scaled(scores: torch.Tensor) -> torch.Tensor:
    """Divide by the mean so members of different scale weigh equally (all-zero stays zero)."""
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


def _per_channel(per_index: torch.Tensor, member: Member, size: int) -> torch.Tensor:
    """Values of a module dimension's indices gathered to the group's channels (summed over ``repeat``)."""
    idx = member.indices(torch.arange(size)).to(per_index.device)
    return per_index[idx].reshape(size, member.repeat).sum(1).cpu()


def _weight_l1(module: nn.Module, member: Member, size: int, dim: int) -> torch.Tensor:
    """L1 norm of each group channel's slice of ``module.weight`` along ``dim`` (summed over repeat)."""
    weight = module.weight.detach().float().abs().transpose(0, dim)
    return _per_channel(weight.reshape(weight.shape[0], -1).sum(1), member, size)


def _norm_gamma(module: nn.Module, member: Member, size: int) -> torch.Tensor | None:
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    return weight.detach().float().abs()[member.offset : member.offset + size].cpu()


def _paired_norm(group: ChannelGroup, producer: Member, modules: dict[str, nn.Module]) -> Member | None:
    """The affine norm listed right after ``producer`` (before any other layer's in/out member). When a group
    holds several channel ranges of one layer (pieces of a split group that were joined again), its members
    come as ``conv@0, conv@8, bn@0, bn@8``: the norm at the producer's own offset is preferred."""
    later = group.members[group.members.index(producer) + 1 :]
    norms = []
    for follower in later:
        if follower.role in ("out", "in") and follower.module != producer.module:
            break
        if follower.role == "norm" and getattr(modules[follower.module], "weight", None) is not None:
            norms.append(follower)
    same = [m for m in norms if m.offset == producer.offset]
    return (same or norms or [None])[0]


PROBE_CHUNK = 64  # samples per forward pass of channel_activity: bounded activation memory on large inputs


def channel_activity(model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor) -> dict[int, torch.Tensor]:
    """How much each channel varies where it is read, on the inputs ``x`` (model in eval mode, no gradient).

    Per group: the standard deviation over every sample and position of each channel at the input of every
    layer that reads it (its ``in`` members), each layer's divided by its mean over the group, summed. Weights
    cannot see a channel that a ReLU after its norm keeps at zero (a large |gamma| with a larger negative
    beta): it carries nothing, yet weight norms may rank it first, and a narrow sub-network keeping it is
    cut off from its input. Groups no layer reads (on this forward pass) are left out; a layer called more
    than once pools its calls. ``x`` runs in chunks of ``PROBE_CHUNK`` samples.
    """
    modules = dict(model.named_modules())
    readers = {g.id: [m for m in g.members if m.role == "in"] for g in groups}
    moments: dict[str, torch.Tensor] = {}  # per reading layer: count, sum and sum of squares of each channel

    def record(name: str):
        def accumulate(module: nn.Module, args: tuple) -> None:
            dim = 1 if isinstance(module, CONVS) else -1
            t = args[0].detach().double().transpose(0, dim)
            t = t.reshape(t.shape[0], -1)
            step = torch.stack([torch.full_like(t[:, 0], t.shape[1]), t.sum(1), t.square().sum(1)])
            moments[name] = moments[name] + step if name in moments else step

        return accumulate

    names = {m.module for members in readers.values() for m in members}
    hooks = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    was_training = model.training
    try:
        with torch.no_grad():
            for part in x.split(PROBE_CHUNK):
                model.eval()(part)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    std = {name: _std(*m) for name, m in moments.items()}
    return {
        g.id: sum(_scaled(_per_channel(std[m.module], m, g.size)) for m in readers[g.id])
        for g in groups
        if readers[g.id] and all(m.module in std for m in readers[g.id])
    }


def _std(count: torch.Tensor, total: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    mean = total / count
    return (squares / count - mean.square()).clamp_min(0).sqrt().float()


def l1_importance(model: nn.Module, group: ChannelGroup, activity: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each channel of ``group`` (shape ``[group.size]``, larger = more important).

    For each producer (conv/linear output) the L1 norm of the channel's weight row, divided by its mean over
    the group; the affine |gamma| of the first norm that follows the producer (its mean also divided out) is
    multiplied in; the producers' scores are summed. A group without producers (the model input) is scored
    by its consumers' input-weight columns instead. ``activity`` (``channel_activity``'s, for this group)
    multiplies the score, so a channel that never varies where it is read ranks last.

    Example:
        >>> keep = keep_top(l1_importance(model, group), group.size // 2)
    """
    modules = dict(model.named_modules())
    producers = group.producers or [m for m in group.members if m.role == "in"]
    if not producers:
        return torch.ones(group.size)
    total = torch.zeros(group.size)
    for member in producers:
        dim = 0 if member.role == "out" else 1
        score = _scaled(_weight_l1(modules[member.module], member, group.size, dim))
        norm = _paired_norm(group, member, modules)
        if norm is not None:
            score = score * _scaled(_norm_gamma(modules[norm.module], norm, group.size))
        total += score
    return total if activity is None else total * activity


def channel_scores(
    model: nn.Module, groups: Sequence[ChannelGroup], probe: torch.Tensor | None = None
) -> dict[int, torch.Tensor]:
    """``l1_importance`` of every group in ``groups`` by id, times its ``channel_activity`` on ``probe`` inputs
    where given (weights alone without)."""
    activity = channel_activity(model, groups, probe) if probe is not None else {}
    return {g.id: l1_importance(model, g, activity.get(g.id)) for g in groups}


def keep_top(importance: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of ``importance``, sorted ascending (ties keep the lower index)."""
    if not 1 <= n <= importance.numel():
        raise ChannelGroupError(f"cannot keep {n} of {importance.numel()} channels; keep between 1 and all of them")
    order = torch.argsort(importance.detach().cpu(), descending=True, stable=True)
    return order[:n].sort().values
