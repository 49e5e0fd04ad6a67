"""TrainConfig: every training setting, as plain validated data."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import NetfitError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant", "plateau")
ONECYCLE_WARM = 0.3  # fraction of the steps spent rising (torch's OneCycleLR pct_start)
ONECYCLE_START = 1 / 25  # starting lr as a fraction of the peak (OneCycleLR's 1 / div_factor)


class TrainConfigError(NetfitError, ValueError):
    """A training setting has a bad value or an unknown name."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: passes over the training split.
        batch_size, eval_batch_size: batch sizes of training and evaluation; under torchrun batch_size is the
            global batch (each of N ranks takes batch_size / N), so N processes take the same steps as one.
        optimizer: "sgd" (momentum, Nesterov) or "adamw"; lr, momentum, weight_decay, nesterov as usual
            (no weight decay on 1-D parameters: biases and norms).
        schedule: "cosine" (per step, to 0), "onecycle" (cosine rise from lr / 25 to lr over the first 30% of
            the steps, then cosine to 0; the one-cycle policy without momentum cycling), "step" (x step_gamma
            every step_epochs), "constant", or "plateau" (x plateau_factor after plateau_patience epochs without
            a better validation accuracy).
        warmup_epochs: linear warm-up of the lr, per step (may be fractional).
        early_stop_patience: stop after this many epochs without a better validation accuracy (None: never).
        keep_best: return (and store in the finished checkpoint) the weights of the best validation epoch
            instead of the last.
        precise_bn: before every evaluation, re-estimate the batch norms' running statistics on this many
            training samples (0: off). At a constant, high learning rate the running averages lag the weights,
            and validation accuracy then swings by tens of points between epochs (measured on ODN's shallow
            exits); a plateau rule or keep_best that reads those swings keeps a lucky epoch.
        channels_last: train image models (4-D inputs) in the channels_last memory layout; None (default): on
            CPU, where oneDNN's convolutions run faster in it (a training step, 1 thread: MobileNetV2 x0.5 on
            28x28 inputs 2.2-2.3x, ResNet-18 x0.25 1.2-1.3x, cnn_small 1.1-1.2x; never slower), and off on GPUs,
            where it has not been measured here.
        label_smoothing, grad_clip (max global norm), amp (CUDA only), seed.

    Example:
        >>> TrainConfig(epochs=5).replace(lr=0.1, schedule="plateau").to_dict()["lr"]
        0.1
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
    precise_bn: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: bool = True
    channels_last: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # numpy scalars (e.g. from a method's arithmetic) become builtins: checkpoints and JSON hold plain values
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if f.name in _INT_FIELDS or f.name == "early_stop_patience":
                if isinstance(value, numbers.Integral):
                    object.__setattr__(self, f.name, int(value))
            elif f.name not in _BOOL_FIELDS:
                object.__setattr__(self, f.name, float(value))

    def validate(self) -> TrainConfig:
        """Return self, or raise ``TrainConfigError`` listing every bad value and what is allowed."""
        problems = _type_problems(self) or _value_problems(self)
        if problems:
            raise TrainConfigError("invalid training settings: " + "; ".join(problems))
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes``; unknown names raise ``TrainConfigError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise TrainConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))} (known: {known})")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the form stored in checkpoints and run.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; missing fields keep their defaults, unknown ones are refused."""
        return cls().replace(**values)


_INT_FIELDS = ("epochs", "batch_size", "eval_batch_size", "step_epochs", "plateau_patience", "precise_bn", "seed")
_BOOL_FIELDS = ("nesterov", "keep_best", "amp", "channels_last")
_STR_FIELDS = ("optimizer", "schedule")
_OPTIONAL = ("early_stop_patience", "grad_clip", "channels_last")


def _type_problems(c: TrainConfig) -> list[str]:
    """Wrong types (e.g. a string from a config file) would otherwise fail deep inside torch."""
    problems = []
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if value is None and f.name in _OPTIONAL:
            continue
        if f.name in _BOOL_FIELDS:
            ok, kind = isinstance(value, bool), "a bool"
        elif f.name in _STR_FIELDS:
            ok, kind = isinstance(value, str), "a string"
        elif f.name in _INT_FIELDS or f.name == "early_stop_patience":
            ok, kind = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
        else:
            ok, kind = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
        if not ok:
            problems.append(f"{f.name} must be {kind} (got {type(value).__name__} {value!r})")
    return problems


def _value_problems(c: TrainConfig) -> list[str]:
    checks = [
        (c.epochs >= 0, f"epochs must be >= 0 (got {c.epochs})"),
        (c.batch_size >= 1 and c.eval_batch_size >= 1, "batch_size and eval_batch_size must be >= 1"),
        (c.lr > 0, f"lr must be > 0 (got {c.lr})"),
        (c.precise_bn >= 0, f"precise_bn must be >= 0 samples (got {c.precise_bn})"),
        (c.optimizer in OPTIMIZERS, f"unknown optimizer {c.optimizer!r} (use {', '.join(OPTIMIZERS)})"),
        (c.schedule in SCHEDULES, f"unknown schedule {c.schedule!r} (use {', '.join(SCHEDULES)})"),
        (0 <= c.momentum < 1, f"momentum must be in [0, 1) (got {c.momentum})"),
        (
            not (c.optimizer == "sgd" and c.nesterov and c.momentum == 0),
            "nesterov needs momentum > 0 (set nesterov=False)",
        ),
        (c.weight_decay >= 0, f"weight_decay must be >= 0 (got {c.weight_decay})"),
        (c.warmup_epochs >= 0, f"warmup_epochs must be >= 0 (got {c.warmup_epochs})"),
        (c.step_epochs >= 1, f"step_epochs must be >= 1 (got {c.step_epochs})"),
        (0 < c.step_gamma <= 1, f"step_gamma must be in (0, 1] (got {c.step_gamma})"),
        (0 < c.plateau_factor <= 1, f"plateau_factor must be in (0, 1] (got {c.plateau_factor})"),
        (c.plateau_patience >= 1, f"plateau_patience must be >= 1 (got {c.plateau_patience})"),
        (
            c.early_stop_patience is None or c.early_stop_patience >= 1,
            f"early_stop_patience must be >= 1 or None (got {c.early_stop_patience})",
        ),
        (0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1) (got {c.label_smoothing})"),
        (c.grad_clip is None or c.grad_clip > 0, f"grad_clip must be > 0 or None (got {c.grad_clip})"),
    ]
    return [message for ok, message in checks if not ok]


class LrSchedule:
    """Per-step learning rate factor: warm-up x (cosine | step | constant) x the plateau factor.

    The engine sets every group's lr to base lr x factor before each step (no LambdaLR, so nothing overwrites
    the plateau reductions).
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.scale = 1.0  # product of the plateau reductions so far
        self.best = -math.inf  # best evaluation accuracy so far
        self.since_best = 0  # epochs since it improved

    def factor(self, step: int) -> float:
        c = self.config
        total = max(1, c.epochs * self.steps_per_epoch)
        warm = c.warmup_epochs * self.steps_per_epoch
        f = min(1.0, (step + 1) / warm) if warm > 0 and step < warm else 1.0
        if c.schedule == "cosine":
            progress = min(1.0, max(0.0, (step - warm) / max(1.0, total - warm)))
            f *= 0.5 * (1 + math.cos(math.pi * progress))
        elif c.schedule == "onecycle":
            rise = ONECYCLE_WARM * total
            if step < rise:
                f *= ONECYCLE_START + (1 - ONECYCLE_START) * 0.5 * (1 - math.cos(math.pi * step / rise))
            else:
                f *= 0.5 * (1 + math.cos(math.pi * min(1.0, (step - rise) / max(1.0, total - rise))))
        elif c.schedule == "step":
            f *= c.step_gamma ** (step // (c.step_epochs * self.steps_per_epoch))
        return f * self.scale

    def end_epoch(self, accuracy: float) -> bool:
        """Record an epoch's evaluation accuracy; True when it is a new best."""
        if accuracy > self.best:
            self.best, self.since_best = accuracy, 0
            return True
        self.since_best += 1
        if self.config.schedule == "plateau" and self.since_best % self.config.plateau_patience == 0:
            self.scale *= self.config.plateau_factor
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.since_best = state["scale"], state["best"], state["since_best"]
