"""Function-preserving growth of a trained network (the elastic space of DNA can then condense AND expand).

* ``order_channels`` permutes every prunable channel group so its most important channels (L1) come first:
  a Markov width gate that keeps "the first k channels" then keeps the important ones.
* ``widen`` copies existing channels (Net2Net) and starts the copies' outgoing weights at zero, so the network
  and every leading slice of it compute exactly what they did.
* ``deepen`` appends identity-initialised blocks to every stage of a staged network (built-in, or a user model
  cut into stages of residual blocks by ``netfit.space.blocks``): the new block's last normalisation layer
  starts at zero, so its residual branch adds nothing.

``grow`` does all three and checks on random input that the outputs did not change. ``widen_to_fit`` and
``deepen_to_fit`` scale a network up uniformly to the largest width or depth within a budget (the ``uniform``
baseline above 100%).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import NetfitError
from ..models import StagedNet, arch_of, build_model
from .blocks import stage_blocks
from .channels import trace_channel_groups
from .compare import max_difference
from .importance import channel_scores
from .inherit import inherit_weights
from .layers import BATCH_NORMS
from .prune import Outgoing, remap_channels

PRESERVE_TOL = 1e-4
MAX_WIDEN = 64.0  # widen_to_fit's largest factor
NO_BLOCKS = (
    "depth growth skipped: the model has no residual block with an identity shortcut (x + f(x)) whose copies "
    "could be appended; its width is adapted and its depth kept"
)


def _example(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    return torch.zeros(1, *input_shape, device=next(model.parameters()).device)


def order_channels(model: nn.Module, input_shape: Sequence[int], probe: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with every prunable group's channels sorted by L1 importance, most important first;
    with ``probe`` inputs, channels that do not vary on them where they are read go last (``channel_activity``)."""
    groups = trace_channel_groups(model.eval(), _example(model, input_shape))
    scores = channel_scores(model, [g for g in groups if g.prunable and g.size > 1], probe)
    order = {gid: torch.argsort(score, descending=True, stable=True) for gid, score in scores.items()}
    return remap_channels(model, groups, order)


def widen(
    model: nn.Module,
    input_shape: Sequence[int],
    factor: float,
    rng: np.random.Generator,
    outgoing: Outgoing = "zero",
) -> nn.Module:
    """Widen every prunable group to ``ceil(factor * size)`` channels by copying random channels; the copies go
    last, so the leading channels are still the seed's most important ones.

    ``outgoing="zero"`` (default): the copies' consumers start at weight 0, so the seed's channels keep their
    weights and every leading slice of the grown network that holds them computes what the same slice of the
    seed computes: the supernet's sub-networks start as the seed's own sub-networks. ``"split"`` is Net2Net
    (every copy gets a share of the weight): also function-preserving for the whole network, but a slice that
    keeps an original channel without its copies reads it at a fraction of its weight.
    """
    groups = trace_channel_groups(model.eval(), _example(model, input_shape))
    index = {}
    for g in groups:
        extra = math.ceil(factor * g.size) - g.size
        if g.prunable and extra > 0:
            index[g.id] = torch.cat([torch.arange(g.size), torch.as_tensor(rng.integers(0, g.size, extra))])
    return remap_channels(model, groups, index, outgoing)


def _added_blocks(depths: Sequence[int], fraction: float) -> list[int]:
    """The blocks ``deepen`` appends to stages of ``depths`` blocks: ``ceil(fraction * blocks)`` each."""
    return [math.ceil(fraction * n) for n in depths]


def deepen(model: nn.Module, fraction: float) -> tuple[nn.Module, list[int]]:
    """Append ``ceil(fraction * blocks)`` identity-initialised copies of each stage's last block.

    Returns the deeper model and the seed's blocks per stage. Only staged networks have stages (a user model:
    ``netfit.space.blocks.stage_blocks`` first).
    """
    if not isinstance(model, StagedNet):
        raise NetfitError("depth growth needs a staged model: a built-in one or a user model with residual blocks")
    arch = arch_of(model)
    seed_depths = [len(s["blocks"]) for s in arch["stages"]]
    for stage, extra in zip(arch["stages"], _added_blocks(seed_depths, fraction)):
        stage["blocks"] += [copy.deepcopy(stage["blocks"][-1]) for _ in range(extra)]
    deeper = build_model(arch).to(next(model.parameters()).device)
    inherit_weights(deeper, model)
    for stage, n in zip(deeper.stages, seed_depths):
        for block in list(stage)[n:]:
            norms = [m for m in block.modules() if isinstance(m, BATCH_NORMS)]
            if not norms:
                raise NetfitError(f"cannot identity-initialise a {type(block).__name__}: it has no BatchNorm")
            nn.init.zeros_(norms[-1].weight)
            nn.init.zeros_(norms[-1].bias)
    return deeper.eval(), seed_depths


def widen_to_fit(
    model: nn.Module,
    input_shape: Sequence[int],
    cost: Callable[[nn.Module], float],
    limit: float,
    seed: int = 0,
    steps: int = 16,
) -> tuple[float, nn.Module, float]:
    """The largest uniform widening (``widen`` by one factor f >= 1, copies read at weight 0, so it starts as
    ``model``) whose cost is <= ``limit``: (f, network, its cost). Widths are whole channels, so the cost
    grows with f in steps: bisection between 1 and a factor past the limit. ``model`` itself when nothing wider
    fits."""

    def build(factor: float) -> tuple[nn.Module, float]:
        wide = widen(model, input_shape, factor, np.random.default_rng(seed))  # same copies for every factor
        return wide, cost(wide)

    best = (1.0, model, cost(model))

    def try_factor(factor: float) -> bool:
        """Whether ``factor`` fits; keeps its network when it is wider than the best so far (not the same
        channels again: a model without prunable groups stays itself at factor 1)."""
        nonlocal best
        wide, value = build(factor)
        if value > limit:
            return False
        if value > best[2]:
            best = (factor, wide, value)
        return True

    lo, hi = 1.0, 2.0
    while hi < MAX_WIDEN and try_factor(hi):  # double until too costly; the last fitting factor bounds below
        lo, hi = hi, hi * 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if try_factor(mid) else (lo, mid)
    return best


def deepen_to_fit(
    model: StagedNet, cost: Callable[[nn.Module], float], limit: float, options: int = 20
) -> tuple[float, nn.Module, float]:
    """The largest uniform deepening (``deepen`` by one fraction q / ``options`` of every stage's blocks, q in
    1..``options``: up to twice as deep) whose cost is <= ``limit``: (fraction, network, its cost); ``model``
    itself (fraction 0) when no deeper network fits."""
    best = (0.0, model, cost(model))
    depths, added = [len(s) for s in model.stages], None
    for q in range(1, options + 1):
        blocks = _added_blocks(depths, q / options)
        if blocks != added:  # several fractions round to the same network: build and measure it once
            added = blocks
            deeper, _ = deepen(model, q / options)
            value = cost(deeper)
            if value > limit:  # every stage gains blocks with q: the cost only grows
                break
        best = (q / options, deeper, value)
    return best


def _deepen_or_warn(model: nn.Module, input_shape: Sequence[int], fraction: float) -> nn.Module:
    """``deepen``'s network, or (with a warning) the model cut into stages when it has blocks, so its depth can
    still shrink: when it has no residual block, or a copy of a block cannot start as the identity."""
    staged = stage_blocks(model, input_shape)
    if not isinstance(staged, StagedNet):
        warnings.warn(NO_BLOCKS, stacklevel=3)
        return model
    try:
        deeper, _ = deepen(staged, fraction)
    except NetfitError as e:
        reason = str(e)
    else:
        diff = max_difference(staged, deeper, input_shape)
        if diff <= PRESERVE_TOL:
            return deeper
        reason = (
            f"blocks appended with their last BatchNorm at zero change the outputs by {diff:.3g} (they are not "
            "the identity, e.g. an activation after the add that changes its input)"
        )
    warnings.warn(f"depth growth skipped: {reason}; blocks can still be removed", stacklevel=3)
    return staged


def grow(
    model: nn.Module,
    input_shape: Sequence[int],
    width: float,
    depth: float,
    rng: np.random.Generator,
    outgoing: Outgoing = "zero",
    probe: torch.Tensor | None = None,
) -> nn.Module:
    """Order channels by importance (on ``probe`` inputs where given, see ``order_channels``), add ``depth`` x
    blocks per stage and widen by ``width`` x (copies start as ``outgoing`` says, see ``widen``), keeping the
    function; raises ``NetfitError`` if the grown network's outputs differ from the seed's."""
    grown = order_channels(model, input_shape, probe)
    if depth > 0:
        grown = _deepen_or_warn(grown, input_shape, depth)
    if width > 1:
        grown = widen(grown, input_shape, width, rng, outgoing)
    diff = max_difference(model, grown, input_shape)
    if diff > PRESERVE_TOL:
        raise NetfitError(f"growth changed the network's outputs by {diff:.3g}; grow with width=1, depth=0")
    return grown


__all__ = ["deepen", "deepen_to_fit", "grow", "max_difference", "order_channels", "widen", "widen_to_fit"]
