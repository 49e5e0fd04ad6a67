"""The training loop's contract with methods: what a step function gets (``StepContext``) and returns
(``StepOutput``), what callbacks see (``TrainState``) and what ``train`` hands back (``TrainResult``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from .config import TrainConfig


@dataclass
class StepOutput:
    """What a step function returns: the loss, optionally the logits (for train accuracy) and metrics to log."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    """One training step's inputs. ``model`` may be DDP-wrapped; ``raw_model`` never is."""

    model: nn.Module
    raw_model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epoch: int
    step: int
    config: TrainConfig
    device: torch.device
    scaler: Any = None
    did_backward: bool = False
    # ids that fix each sample's input (its index into the training split, and the augmentation drawn where the
    # data augments; training_batch), so a frozen model's per-sample outputs may be remembered (CachedTeacher)
    ids: torch.Tensor | None = None
    # whether the model trains in the channels_last layout (``engine.channels_last``): a frozen teacher runs in
    # it too (CachedTeacher), which a one-channel batch cannot tell (its layouts have the same strides)
    channels_last: bool = False

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate (AMP-scaled when active); a step function may call it several times per step."""
        check_finite(scalar(loss), self)
        self._backward(loss)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.did_backward = True


def fixed_batch_ids(data: Any, idx: torch.Tensor) -> torch.Tensor | None:
    """``StepContext.ids`` for an un-augmented batch of training samples ``idx``: ``idx`` when the data has no
    random augmentation (the batch is then a fixed function of its ids), else None."""
    return None if getattr(data, "augment", None) else idx


def training_batch(
    data: Any, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training samples ``idx`` (raw ``x``) prepared for the model, and their ``StepContext.ids``: ``idx``
    without augmentation; with it, one id per sample and version drawn (``idx * augmentations + version``),
    where the data says which version it drew (``DataBundle.prepare_drawn``), else None."""
    drawn = getattr(data, "prepare_drawn", None)
    if not getattr(data, "augment", None) or drawn is None:
        return data.prepare(x, train=True, generator=generator), fixed_batch_ids(data, idx)
    x, version = drawn(x, generator)
    return x, idx * data.augmentations + version.to(idx.device)


StepFn = Callable[[StepContext], StepOutput]
ExtraLoss = Callable[[StepContext, torch.Tensor], torch.Tensor]


def loss_signature(extra: ExtraLoss) -> str:
    """What an extra loss adds, as checkpoints record it so that a resumed training refuses another one: its
    ``signature()`` where it has one (say, the teacher's weights and the weight of a distillation), else its type."""
    signature = getattr(extra, "signature", None)
    return signature() if callable(signature) else type(extra).__qualname__


@dataclass
class TrainState:
    """What callbacks see. ``extra`` is saved in checkpoints (tensors, numbers, strings, lists, dicts only)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    scheduler: Any = None  # the per-step lr controller (warm-up x schedule x plateau factor)
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    stop: bool = False  # a callback sets this to end training after the current epoch


class Callback:
    """Hooks into the loop; ``state_dict`` must hold only tensors, numbers, strings, lists and dicts."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState, out: StepOutput) -> None: ...

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainResult:
    """A finished training: the model (unwrapped, on its device), the per-epoch history, the best evaluation
    accuracy, and ``final``, the history row of the returned weights (the best epoch's with keep_best)."""

    model: nn.Module
    history: list[dict]
    best_val_acc: float
    final: dict


def scalar(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def check_finite(value: float, ctx: StepContext, metrics: dict | None = None) -> None:
    if not math.isfinite(value):
        kind = "nan" if math.isnan(value) else "inf"
        terms = ", ".join(f"{k}={scalar(v):.4g}" for k, v in (metrics or {}).items()) or "n/a"
        raise TrainingError(
            f"loss became {kind} at epoch {ctx.epoch + 1} step {ctx.step} (terms: {terms}); lower the learning rate "
            "(--lr) or enable --grad-clip; the last checkpoint is intact"
        )
