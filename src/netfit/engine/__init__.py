"""The training engine: one loop for every method, checkpoints, distributed runs and the run log."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, TrainConfigError
from .hooks import (
    Callback,
    ExtraLoss,
    StepContext,
    StepFn,
    StepOutput,
    TrainResult,
    TrainState,
    fixed_batch_ids,
)
from .layout import channels_last, channels_last_layout
from .log import RunLog
from .seeding import seed_everything
from .trainer import amp_dtype, evaluate, train

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
    "amp_dtype",
    "channels_last",
    "channels_last_layout",
    "evaluate",
    "fixed_batch_ids",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "train",
]
