"""TrainConfig: every training setting, as plain validated data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import NetfitError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: passes over the training split.
        batch_size, eval_batch_size: batch sizes of training and evaluation.
        optimizer: "sgd" (momentum, Nesterov) or "adamw"; lr, momentum, weight_decay, nesterov as usual
            (no weight decay on 1-D parameters: biases and norms).
        schedule: "cosine" (per step, to 0), "step" (x step_gamma every step_epochs), "constant", or "plateau"
            (x plateau_factor after plateau_patience epochs without a better validation accuracy).
        warmup_epochs: linear warm-up of the lr, per step.
        early_stop_patience: stop after this many epochs without a better validation accuracy.
        keep_best: return the weights of the best validation epoch instead of the last.
        label_smoothing, grad_clip (max global norm), amp (CUDA only), channels_last, seed.
    """

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 30
    step_gamma: float = 0.1
    plateau_factor: float = 0.6
    plateau_patience: int = 5
    early_stop_patience: int | None = None
    keep_best: bool = False
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool = False
    seed: int = 0

    def validate(self) -> TrainConfig:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0 (got {self.epochs})")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("batch sizes must be >= 1")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optimizer!r} (use {', '.join(OPTIMIZERS)})")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r} (use {', '.join(SCHEDULES)})")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1 or self.warmup_epochs < 0:
            problems.append("weight_decay and warmup_epochs must be >= 0 and label_smoothing in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append("grad_clip must be > 0")
        if not 0 < self.plateau_factor <= 1 or self.plateau_patience < 1:
            problems.append("plateau_factor must be in (0, 1] and plateau_patience >= 1")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            problems.append("early_stop_patience must be >= 1")
        if problems:
            raise NetfitError("invalid training settings: " + "; ".join(problems))
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise NetfitError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().replace(**values)
