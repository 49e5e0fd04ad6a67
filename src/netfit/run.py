"""A run: what a method may use while it searches (training, costs, seeded randomness, the run log).

The engine owns the loop; ``Run.train`` only names each training phase so that its checkpoint lives at
``<out>/ckpt/<phase>.pt`` and a resumed run skips finished phases and continues an interrupted one.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cost import count_cost, measure
from .engine import RunLog, TrainConfig, TrainResult, train


@dataclass
class Run:
    """Services shared by every method during one ``adapt`` run.

    Attributes:
        out: the run directory.
        config: training settings of the adaption phases (``config.epochs`` = epochs per trained network).
        seed: the run's random seed; every random choice derives from it (see ``rng``).
        device: where training happens.
        input_shape: one sample's shape, e.g. (1, 8, 8).
        resume: continue from checkpoints in ``out`` instead of starting over.
        progress: show progress bars.
        log: the JSONL run log.
    """

    out: Path
    config: TrainConfig
    seed: int
    device: torch.device
    input_shape: tuple[int, ...]
    resume: bool
    progress: bool
    log: RunLog

    def train(
        self,
        model: nn.Module,
        data: Any,
        phase: str,
        *,
        epochs: int | None = None,
        overrides: dict[str, Any] | None = None,
        **hooks: Any,
    ) -> TrainResult:
        """Train ``model`` through the engine as a named, resumable phase.

        ``overrides`` change TrainConfig fields for this phase (e.g. lr, schedule); ``hooks`` (step_fn,
        extra_losses, callbacks, extra_optimizers, param_filter) go to ``engine.train``.
        """
        config = self.config.replace(
            **{"epochs": self.config.epochs if epochs is None else epochs, "seed": self.seed, **(overrides or {})}
        )
        return train(
            model,
            data,
            config,
            checkpoint=self.out / "ckpt" / f"{phase}.pt",
            resume=self.resume,
            log=self.log,
            desc=phase,
            progress=self.progress,
            device=self.device,
            **hooks,
        )

    def measure(self, model: nn.Module, metric: str, *, device: str = "cpu", backend: str = "torch") -> float:
        """The model's value of a budget metric (macs, params, latency_ms, memory_bytes)."""
        if metric in ("macs", "params"):
            return float(getattr(count_cost(model, self.input_shape), metric))
        return measure(model, self.input_shape, metric, device=device, backend=backend)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded by (run seed, purpose): the same choices on resume, independent per purpose."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])
