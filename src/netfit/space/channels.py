"""Coupled channel groups of any fx-traceable model.

Layers whose channels must change together (a conv and the BN after it, all convs joined by residual additions,
the consumers of a concatenation, a flatten feeding a Linear...) are found by tracing the model with torch.fx,
recording every tensor's shape with ``ShapeProp`` and propagating channel-group ids along the graph. Every
tensor carries a ``Layout`` (``layout.py``, with the union-find of groups): which dim holds its channels and
the run of groups (segments) that fill that dim.
When two layouts of the same channels meet (a concatenation added to, or gated by, one conv's output; the equal
parts of a ``chunk``; a layer called twice) the coarser groups are split at the finer layout's boundaries and the
pieces facing each other joined, so a layer dimension can be covered by several groups at different offsets.
Whatever the analysis does not understand makes the groups it touches non-prunable, with a reason.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import NetfitError, UnsupportedLayerError
from .layers import dim_size
from .layout import Groups, Member
from .propagate import Propagator

__all__ = ["ChannelGroup", "ChannelGroupError", "Member", "trace_channel_groups"]


class ChannelGroupError(NetfitError, ValueError):
    """A channel-group request (group id, kept indices, width) is malformed."""


@dataclass
class ChannelGroup:
    """Channels that must be kept or dropped together, and every module dimension that follows them."""

    id: int
    size: int
    members: list[Member]
    prunable: bool
    reason: str = ""

    @property
    def producers(self) -> list[Member]:
        """Members that create the channels (conv / linear outputs)."""
        return [m for m in self.members if m.role == "out"]


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedLayerError(
            f"cannot trace {type(model).__name__}: {first}; netfit needs an fx-traceable model "
            "(see torch.fx docs) for width changes"
        ) from e
    was_training = [(m, m.training) for m in gm.modules()]
    gm.eval()  # shape propagation must not touch BN running statistics
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedLayerError(
            f"{type(model).__name__} fails on an example input of shape {tuple(example_input.shape)}: {first}; "
            "pass an input of the shape the model expects"
        ) from e
    finally:
        for module, training in was_training:
            module.training = training
    return gm


def _check_sizes(model: nn.Module, g: Groups) -> None:
    """Block groups whose members do not fit inside (or overlap in) the module dimension they claim."""
    spans: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for gid in range(len(g.parent)):
        for _, m in g.members[gid] if g.live(gid) else []:
            spans.setdefault((m.module, m.role), []).append((m.offset, m.offset + g.size[gid] * m.repeat, gid))
    for (name, role), ranges in spans.items():
        size, end = dim_size(model.get_submodule(name), role), 0
        for start, stop, _ in sorted(set(ranges)):
            if start < end or size is None or stop > size:
                for *_, gid in ranges:
                    g.block(gid, f"the channels of '{name}' ({role}) could not be accounted for")
                break
            end = stop


def trace_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Find the coupled channel groups of ``model`` by tracing it with torch.fx.

    Args:
        model: any fx-traceable module (built-in or user-defined).
        example_input: one input batch, used to record tensor shapes (run in eval mode, no grad).

    Returns:
        The groups sorted by id (the model input's group first); groups feeding the output, the model input,
        and anything the analysis does not understand are ``prunable=False`` with a ``reason``.

    Raises:
        UnsupportedLayerError: the model cannot be traced or does not run on ``example_input``.
    """
    gm = _trace(model, example_input)
    g = Propagator(gm).run()
    _check_sizes(gm, g)
    groups: list[ChannelGroup] = []
    for gid in sorted(range(len(g.parent)), key=g.order.__getitem__):
        if not g.live(gid):
            continue
        members = list(dict.fromkeys(m for _, m in sorted(g.members[gid], key=operator.itemgetter(0))))
        reason = "; ".join(g.reasons[gid])
        groups.append(ChannelGroup(len(groups), g.size[gid], members, g.prunable[gid], reason))
    return groups
