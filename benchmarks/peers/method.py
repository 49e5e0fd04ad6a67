"""``peer``: a netfit method that lets an external tool do the pruning and netfit do everything else."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from netfit.errors import NetfitError
from netfit.methods.base import METHODS, Candidate, Seed, Target
from netfit.methods.common import cost_fn, finetune, inherited_accuracy
from netfit.models import arch_of, build_model

from . import TOOLS


@dataclass
class PruneJob:
    """Everything a tool adapter gets: a copy of the seed, how netfit counts MACs, the limit and some data."""

    model: nn.Module  # a private copy of the trained seed, CPU, eval mode
    example: torch.Tensor  # one input batch of shape (1, *input_shape)
    macs: object  # callable(nn.Module) -> float: netfit's count, the only one that decides the budget
    limit: float  # MACs the pruned network must not exceed
    variant: str
    train_batches: list[tuple[torch.Tensor, torch.Tensor]]  # for importance estimates (Taylor) and calibration
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]  # held-out, for search scores (FastNAS)
    seed: int


@METHODS.register("peer")
@dataclass
class Peer:
    """Prune the seed with an external tool (``tool``/``variant``), then fine-tune it like every netfit method.

    Options:
        tool: a key of benchmarks.peers.TOOLS.
        variant: one of that tool's variants.
        calibration_batches: training batches handed to the tool (importance estimates, search scores).
    """

    name: ClassVar[str] = "peer"
    description: ClassVar[str] = "an external pruning/NAS tool (benchmarks only), fine-tuned by netfit"
    tool: str = "torch_pruning"
    variant: str = ""
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise NetfitError(f"unknown peer tool {self.tool!r}; known: {', '.join(TOOLS)}")
        variants = TOOLS[self.tool].variants
        if self.variant not in variants:
            raise NetfitError(f"{self.tool} variants are {', '.join(variants)}; got {self.variant!r}")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        import copy

        adapter = importlib.import_module(f"{__package__}.{TOOLS[self.tool].module}")  # only its venv has the tool
        candidates = []
        for target in targets:
            if target.metric != "macs":
                raise NetfitError("peer tools are benchmarked on MACs budgets only")
            job = PruneJob(
                model=copy.deepcopy(seed.model).cpu().eval(),
                example=torch.zeros(1, *seed.input_shape),
                macs=cost_fn(run, target),
                limit=target.limit,
                variant=self.variant,
                train_batches=_take(data, "train", self.calibration_batches, run.config.batch_size, run.seed),
                val_batches=_take(data, "val", self.calibration_batches, run.config.batch_size, run.seed),
                seed=run.seed,
            )
            pruned = adapter.prune(job)
            model = _plain(pruned)
            macs = job.macs(model)
            if macs > target.limit:
                raise NetfitError(
                    f"{self.tool}/{self.variant} left {macs:,.0f} MACs above the limit {target.limit:,.0f}"
                )
            cid = f"{self.tool}-{self.variant}-{round(100 * target.limit / seed.macs, 3):g}pct"
            info = {"tool": self.tool, "variant": self.variant, "pruned_macs": macs}
            run.log.write("subnet", id=cid, **info)
            info["val_acc_inherited"] = inherited_accuracy(model, data, run, cid)
            tuned = finetune(model, data, run, cid, None, start_accuracy=info["val_acc_inherited"])
            candidates.append(Candidate(cid, tuned, target, info))
        return candidates


def _plain(model: nn.Module) -> nn.Module:
    """Rebuild the tool's output as a plain netfit model from its own layers (no tool classes or hooks survive)."""
    rebuilt = build_model(arch_of(model))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()


def _take(data, split: str, count: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random batches of prepared (normalised, not augmented) samples of one split."""
    x, y = getattr(data, split).tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[: count * batch_size]
    return [(data.prepare(x[i], train=False), y[i]) for i in order.split(batch_size)]
