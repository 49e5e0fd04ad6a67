"""The training engine: one loop for every method, checkpoints, distributed runs and the run log."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, TrainConfigError
from .log import RunLog
from .seeding import seed_everything
from .trainer import (
    Callback,
    ExtraLoss,
    StepContext,
    StepFn,
    StepOutput,
    TrainResult,
    TrainState,
    evaluate,
    fixed_batch_ids,
    train,
)

__all__ = [
    "Callback",
    "ExtraLoss",
    "RunLog",
    "StepContext",
    "StepFn",
    "StepOutput",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainState",
    "evaluate",
    "fixed_batch_ids",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "train",
]
