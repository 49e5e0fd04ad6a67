"""Channel importance scores for choosing which channels of a group to keep."""

from __future__ import annotations

import torch
from torch import nn

from .channels import ChannelGroup, ChannelGroupError, Member


def _scaled(scores: torch.Tensor) -> torch.Tensor:
    """Divide by the mean so members of different scale weigh equally (all-zero stays zero)."""
    mean = scores.mean()
    return scores / mean if mean > 0 else scores


def _weight_l1(module: nn.Module, member: Member, size: int, dim: int) -> torch.Tensor:
    """L1 norm of each group channel's slice of ``module.weight`` along ``dim`` (summed over repeat)."""
    weight = module.weight.detach().float().abs().transpose(0, dim)
    per_index = weight.reshape(weight.shape[0], -1).sum(1)
    idx = member.indices(torch.arange(size)).to(per_index.device)
    return per_index[idx].reshape(size, member.repeat).sum(1).cpu()


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


def l1_importance(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Importance of each channel of ``group`` (shape ``[group.size]``, larger = more important).

    For each producer (conv/linear output) the L1 norm of the channel's weight row, divided by its mean over
    the group; the affine |gamma| of the first norm that follows the producer (its mean also divided out) is
    multiplied in; the producers' scores are summed. A group without producers (the model input) is scored
    by its consumers' input-weight columns instead.

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
    return total


def keep_top(importance: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest entries of ``importance``, sorted ascending (ties keep the lower index)."""
    if not 1 <= n <= importance.numel():
        raise ChannelGroupError(f"cannot keep {n} of {importance.numel()} channels; keep between 1 and all of them")
    order = torch.argsort(importance.detach().cpu(), descending=True, stable=True)
    return order[:n].sort().values
