"""Train-free metrics: judge an (untrained or partly trained) network from one minibatch, without training it.

* ``ntk_condition_number``: the condition number (largest / smallest eigenvalue) of the empirical neural tangent
  kernel ``K = J J^T`` on the minibatch, ``J`` holding each sample's gradient of its summed logits with respect
  to the parameters (TE-NAS, as used by SpiderNet). A lower value means gradient descent fits all samples at
  similar speeds; an exactly singular kernel gives ``inf``.
* ``linear_regions``: the number of linear pieces the network's ReLUs cut along straight segments that start at
  every other sample and point to the next one (x0 -> x0 + span (x1 - x0), x2 -> ...), each sampled at ``points``
  evenly spaced inputs: one piece plus one per change of the ReLU on/off pattern between neighbouring inputs.
  Counting distinct patterns in a batch (TE-NAS) saturates at the batch size, and so does a whole segment
  between two samples at any affordable resolution (a 16-channel cell network already cuts thousands of pieces
  there), so SpiderNet counts on short segments (``span`` = 2% of the way) where a mutation's change shows.
  Every ``aten.relu`` call is seen (modules and functional calls alike); max pooling and other kinks are not
  ReLUs and are not counted.

SpiderNet accepts a mutation only when the NTK condition number does not rise and the linear-region count rises.
``netfit score`` prints these metrics (and MACs/params) for a model or every candidate of a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import NetfitError

_RELUS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
REGION_POINTS = 128  # inputs per segment for the linear-region count
REGION_SPAN = 0.02  # segment length as a fraction of the distance between the two samples
SCORE_SAMPLES = 32  # minibatch size of ``netfit score``


def ntk_condition_number(
    model: nn.Module, x: torch.Tensor, param_filter: Callable[[str, nn.Parameter], bool] | None = None
) -> float:
    """Condition number of the empirical NTK of ``model`` (eval mode) on the samples ``x``.

    Args:
        model: the network; its batch norms use their running statistics (eval mode, nothing is updated).
        x: a minibatch of at least two samples.
        param_filter: which parameters ``(name, param)`` span the kernel (default: every trainable one).

    Example:
        >>> ntk_condition_number(nn.Linear(2, 1, bias=False), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # 4.0
    """
    if len(x) < 2:
        raise NetfitError("the NTK condition number needs a minibatch of at least 2 samples")
    params = [
        p for n, p in model.named_parameters() if p.requires_grad and (param_filter is None or param_filter(n, p))
    ]
    if not params:
        raise NetfitError(f"{type(model).__name__} has no trainable parameters to build an NTK from")
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(len(x)):
            grads = torch.autograd.grad(model(x[i : i + 1]).sum(), params, allow_unused=True)
            rows.append(
                torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
            )
    finally:
        model.train(was_training)
    jacobian = torch.stack(rows).double()
    eigenvalues = torch.linalg.eigvalsh(jacobian @ jacobian.T)  # ascending
    largest, smallest = float(eigenvalues[-1]), float(eigenvalues[0])
    if not math.isfinite(largest) or smallest <= largest * 1e-12:  # singular up to float rounding
        return math.inf
    return largest / smallest


class _ReluPatterns(TorchDispatchMode):
    """Records, per sample, which outputs of every ReLU are positive."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELUS:
            self.codes.append((out > 0).reshape(out.shape[0], -1))
        return out


@torch.no_grad()
def activation_patterns(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(samples, ReLU units) booleans: which ReLU outputs are on for each sample (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with _ReluPatterns() as recorder:
            model(x)
    finally:
        model.train(was_training)
    if not recorder.codes:
        return torch.zeros(len(x), 0, dtype=torch.bool, device=x.device)
    return torch.cat(recorder.codes, dim=1)


@torch.no_grad()
def linear_regions(model: nn.Module, x: torch.Tensor, points: int = REGION_POINTS, span: float = REGION_SPAN) -> int:
    """Linear pieces of ``model`` along the segments x0 -> x0 + span (x1 - x0), x2 -> ..., summed over segments.

    Example:
        >>> linear_regions(net_1d, torch.tensor([[-1.0], [1.0]]), points=1000, span=1.0)  # pieces on [-1, 1]
    """
    if len(x) < 2 or points < 2 or not 0 < span <= 1:
        raise NetfitError("the linear-region count needs >= 2 samples, >= 2 points per segment and 0 < span <= 1")
    t = torch.linspace(0, 1, points, device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
    total = 0
    for k in range(len(x) // 2):
        start, end = x[2 * k], x[2 * k + 1]
        codes = activation_patterns(model, start + t * span * (end - start))
        total += 1 + int((codes[1:] != codes[:-1]).any(dim=1).sum())
    return total


def unsaturated_span(
    model: nn.Module, x: torch.Tensor, points: int = REGION_POINTS, span: float = REGION_SPAN, fill: float = 0.5
) -> float:
    """The segment span for ``linear_regions`` at which ``model``'s count is at most ``fill`` of its maximum
    (segments x points): ``span`` halved until then, 10 times at most. At the maximum every step along a segment
    crosses a region boundary and the count cannot rise any more, which is where SpiderNet's cell networks on
    28x28 images are at the default span (904-1003 of 1024 at initialisation and 1024 after an epoch on MNIST-10k,
    so no edge split could pass the rule)."""
    cap = (len(x) // 2) * points
    for _ in range(10):
        if linear_regions(model, x, points, span) <= fill * cap:
            break
        span /= 2
    return span


def score(
    model: nn.Module, x: torch.Tensor, param_filter=None, points: int = REGION_POINTS, span: float = REGION_SPAN
) -> dict[str, float]:
    """Both train-free metrics of ``model`` on the minibatch ``x``."""
    return {
        "ntk_cond": ntk_condition_number(model, x, param_filter),
        "linear_regions": linear_regions(model, x, points, span),
    }


def metric_batch(data: Any, samples: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded draw of ``samples`` training samples, normalised as for evaluation (no augmentation)."""
    x_all, _ = data.train.tensors
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))[:samples]
    return data.prepare(x_all[order].to(device), train=False)


def score_path(
    path: str | Path | nn.Module, data: Any, samples: int = SCORE_SAMPLES, seed: int = 0, points: int = REGION_POINTS
) -> list[dict[str, Any]]:
    """Train-free metrics, MACs and params of a model folder, a live model, a built-in model name (freshly
    initialised), or every candidate of a run directory (with the candidate's measured test accuracy, for
    comparison), on one seeded minibatch of ``data``.

    Example:
        >>> for row in score_path("runs/spider", "mnist1d"):
        ...     print(row["id"], row["ntk_cond"], row["linear_regions"], row["accuracy"])
    """
    from .api import RESULT_FILE, check_compatible, load_result
    from .cost import count_cost
    from .data import DataBundle, load_data
    from .export import load_model
    from .fileio import inside
    from .models import create_model, list_models

    bundle = data if isinstance(data, DataBundle) else load_data(data)
    if samples < 2:
        raise NetfitError(f"--samples must be at least 2 (one segment for the linear regions), got {samples}")
    if isinstance(path, nn.Module):
        entries = [(type(path).__name__, path, None)]
    elif (Path(path) / RESULT_FILE).exists():
        summary = load_result(path)
        entries = [
            (r["id"], load_model(inside(Path(path), r["weights"])), r["accuracy"]) for r in summary["candidates"]
        ]
    elif Path(path).is_dir():
        entries = [(Path(path).name, load_model(path), None)]
    elif str(path) in list_models() or str(path).startswith("timm:"):  # a freshly initialised built-in
        torch.manual_seed(seed)
        model = create_model(str(path), num_classes=bundle.num_classes, in_chans=bundle.input_shape[0])
        entries = [(str(path), model, None)]
    else:
        raise NetfitError(
            f"{path} is neither a model folder (arch.json), a run directory (result.json) nor a built-in model name"
        )
    x = metric_batch(bundle, samples, seed)
    rows = []
    for name, model, accuracy in entries:
        check_compatible(model, name, bundle)
        model = model.cpu()
        row = {"id": name, **score(model, x, points=points), **count_cost(model, bundle.input_shape).as_dict()}
        rows.append({**row, "accuracy": accuracy} if accuracy is not None else row)
    return rows


__all__ = [
    "REGION_POINTS",
    "REGION_SPAN",
    "activation_patterns",
    "linear_regions",
    "metric_batch",
    "ntk_condition_number",
    "score",
    "score_path",
    "unsaturated_span",
]
