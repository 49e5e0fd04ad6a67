"""ODN, Optimally Deep Networks: find the shallowest prefix of a deep network that reaches a target accuracy.

Every block of the seed gets an exit head (global average pool + linear). All exits are warmed up jointly (on the
seed's weights, or fresh ones with ``start="scratch"``); then depth d = 1, 2, ... is trained to its plateau (lr x
``depth_lr_factor`` after depth 1, x0.6 after ``lr_patience`` epochs without improvement, stop after ``patience``
epochs without improvement or at ``depth_epochs``; the norms' statistics re-estimated before every validation,
``precise_bn``; the labels' cross-entropy plus distillation from the trained full network, ``kd``) until its best
validation accuracy reaches the target (the seed's validation accuracy - ``target_drop``). The chosen depth is
fine-tuned and only blocks 1..d plus head d are deployed, as a plain built-in network. Every trained depth is a
candidate, so the run also yields the accuracy-vs-cost front over depths. With a budget, depths whose prefix
exceeds it are never trained ("the deepest prefix within the budget").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..budget import check_feasible
from ..distill import CachedTeacher, LogitDistiller
from ..engine import StepOutput, TrainResult, evaluate
from ..errors import BudgetInfeasibleError, NetfitError, UnsupportedLayerError
from ..models import StagedNet, arch_of, build_model
from .base import METHODS, Candidate, Seed, Target
from .common import cost_fn


class ExitNet(nn.Module):
    """A staged network with an exit head after every block; ``depth`` selects how many blocks run."""

    def __init__(self, model: StagedNet, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if not isinstance(model, StagedNet):
            raise UnsupportedLayerError("odn needs a staged model (stem + stages of blocks), e.g. a built-in resnet")
        self.stem = model.stem
        self.blocks = nn.ModuleList(block for stage in model.stages for block in stage)
        self.positions = [(i, j) for i, stage in enumerate(model.stages) for j in range(len(stage))]
        widths = self._block_widths(input_shape)
        self.exits = nn.ModuleList(nn.Linear(w, num_classes) for w in widths)
        self.depth = len(self.blocks)

    @torch.no_grad()
    def _block_widths(self, input_shape: tuple[int, ...]) -> list[int]:
        was_training = self.training
        self.eval()
        x = self.stem(torch.zeros(1, *input_shape, device=next(self.parameters()).device))
        widths = []
        for block in self.blocks:
            x = block(x)
            widths.append(x.shape[1])
        self.train(was_training)
        return widths

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))

    def forward(self, x: torch.Tensor, depth: int | None = None, all_exits: bool = False):
        """Logits of exit ``depth`` (default: ``self.depth``), or of every exit in one pass when ``all_exits``."""
        depth = len(self.blocks) if all_exits else depth or self.depth
        x = self.stem(x)
        outputs = []
        for block, head in zip(self.blocks[:depth], self.exits):
            x = block(x)
            if all_exits:
                outputs.append(head(self._pool(x)))
        return outputs if all_exits else self.exits[depth - 1](self._pool(x))


def deploy_prefix(exit_net: ExitNet, seed_model: StagedNet, depth: int) -> StagedNet:
    """Blocks 1..depth and exit head ``depth`` as a plain built-in network (same outputs as depth=``depth``)."""
    arch = arch_of(seed_model)
    if arch.get("head", {}).get("neck"):
        raise UnsupportedLayerError(
            "odn deploys pool + linear heads; models with a head neck (mobilenetv2) are not supported yet"
        )
    stage_idx, block_idx = exit_net.positions[depth - 1]
    arch["stages"] = arch["stages"][: stage_idx + 1]
    arch["stages"][-1]["blocks"] = arch["stages"][-1]["blocks"][: block_idx + 1]
    deployed = build_model(arch).to(next(exit_net.parameters()).device)
    source = {f"stem.{k}": v for k, v in exit_net.stem.state_dict().items()}
    for (i, j), block in zip(exit_net.positions[:depth], exit_net.blocks):
        source.update({f"stages.{i}.{j}.{k}": v for k, v in block.state_dict().items()})
    head = exit_net.exits[depth - 1]
    source.update({"head.fc.weight": head.weight, "head.fc.bias": head.bias})
    missing = set(deployed.state_dict()) - set(source)
    if missing:
        raise UnsupportedLayerError(f"cannot map exit head onto the deployed head: {sorted(missing)[:3]}")
    deployed.load_state_dict({k: source[k] for k in deployed.state_dict()})
    return deployed.eval()


DEPTH_SCHEDULES = ("plateau", "cosine")
STARTS = ("seed", "scratch")
DEPTH_LR_FACTOR = 0.5  # the public code halves the lr of every depth after the first


@METHODS.register("odn")
@dataclass
class ODN:
    """Progressive depth expansion (ODN) with the paper's plateau rules as defaults.

    Options:
        target_acc: absolute validation accuracy to reach (fraction); overrides ``target_drop``.
        target_drop: the target relative to the seed: its validation accuracy minus this (default 0.5 points).
        warmup_epochs: joint training of all exits before the depth search.
        patience: epochs without validation improvement that end a depth (the plateau).
        depth_epochs: the most epochs one depth trains if it never plateaus.
        lr_patience, lr_factor: multiply the lr by ``lr_factor`` after ``lr_patience`` epochs without improvement.
        depth_schedule: "plateau" (the paper's: the rules above) or "cosine": every depth trains exactly
            ``depth_epochs`` epochs with the lr annealed to 0 (no patience rules), its best validation epoch kept.
        depth_lr_factor: the lr of every depth after the first, as a fraction of the base lr (the public code
            halves it).
        start: "seed" (the exits are warmed up on the trained seed's weights) or "scratch" (on fresh weights of
            the seed's architecture, drawn from the run's seed: the paper trains from initialisation; the trained
            seed stays the reference of the target).
        finetune_epochs: fine-tuning of the chosen depth (default: the run's epochs).
        kd: distil every depth phase and the fine-tune from the trained seed (the full network): logit KD added
            to the cross-entropy (False: the paper's loss, labels only). On MNIST-10k the 3-block prefix tested
            0.75 points higher with it (same trained seed); a tie within noise on mnist1d. kd_weight: its weight.
        initial_depth: the first depth tried (the public code's ``initial_depth``): shallower ones are skipped
            where they are known to fall short.
        precise_bn: training samples on which the batch norms' statistics are re-estimated before every
            validation of a depth (0: off). At the constant lr of a depth phase the running averages lag the
            weights: a shallow exit's raw validation accuracy swung between 50% and 94% from epoch to epoch
            where the recalibrated one rose smoothly to 96% (MNIST-10k, depth 1), so the plateau rule kept a
            lucky epoch and stopped early.
    """

    name: ClassVar[str] = "odn"
    description: ClassVar[str] = "progressive depth expansion to the shallowest prefix reaching a target accuracy"
    target_acc: float | None = None
    target_drop: float = 0.005
    warmup_epochs: int = 3
    patience: int = 8
    depth_epochs: int = 40
    lr_patience: int = 5
    lr_factor: float = 0.6
    finetune_epochs: int | None = None
    precise_bn: int = 2048
    depth_schedule: str = "plateau"
    depth_lr_factor: float = DEPTH_LR_FACTOR
    start: str = "seed"
    kd: bool = True
    kd_weight: float = 1.0
    initial_depth: int = 1

    def __post_init__(self) -> None:
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            raise NetfitError(f"odn target_acc must be a fraction in (0, 1], got {self.target_acc}")
        if not 0 <= self.target_drop < 1:
            raise NetfitError(f"odn target_drop must be a fraction in [0, 1), got {self.target_drop}")
        if self.precise_bn < 0:
            raise NetfitError(f"odn precise_bn must be >= 0 samples, got {self.precise_bn}")
        if self.depth_schedule not in DEPTH_SCHEDULES:
            raise NetfitError(
                f"odn depth_schedule must be one of {', '.join(DEPTH_SCHEDULES)}, got {self.depth_schedule!r}"
            )
        if self.start not in STARTS:
            raise NetfitError(f"odn start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if not 0 < self.depth_lr_factor <= 1:
            raise NetfitError(f"odn depth_lr_factor must be in (0, 1], got {self.depth_lr_factor}")
        if self.kd_weight <= 0:
            raise NetfitError(f"odn kd_weight must be > 0, got {self.kd_weight}")
        if self.initial_depth < 1:
            raise NetfitError(f"odn initial_depth must be >= 1, got {self.initial_depth}")
        if self.depth_epochs < 1 or self.patience < 1:
            raise NetfitError(f"odn depth_epochs and patience must be >= 1, got {self.depth_epochs}, {self.patience}")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        target = targets[0]
        net = ExitNet(self._body(seed, run), seed.input_shape, data.num_classes).to(run.device)
        goal = self.target_acc
        if goal is None:
            goal = evaluate(seed.model, data, "val", device=run.device)["accuracy"] - self.target_drop
        run.log.write("odn", target_acc=goal, depths=len(net.blocks))
        warm = run.train(net, data, "odn-warmup", epochs=self.warmup_epochs, step_fn=_joint_step).model
        measure = cost_fn(run, target)
        costs = [measure(deploy_prefix(warm, seed.model, d)) for d in range(1, len(net.blocks) + 1)]
        check_feasible(target.budget, target.limit, costs[0], costs[-1])
        deepest = max(d for d, c in enumerate(costs, start=1) if c <= target.limit)
        if self.initial_depth > deepest:
            raise BudgetInfeasibleError(
                f"odn initial_depth {self.initial_depth} is deeper than the deepest prefix within the budget "
                f"({deepest} of {len(net.blocks)} blocks)"
            )
        # one teacher for every phase: on data without random augmentation each sample's logits are computed once
        kd = [LogitDistiller(CachedTeacher(seed.model), weight=self.kd_weight)] if self.kd else []
        candidates = []
        for depth in range(self.initial_depth, deepest + 1):
            lr = depth_lr(run.config.lr, depth, self.depth_lr_factor)
            trained = self._train_depth(warm, depth, data, run, f"odn-depth{depth}", lr, self.depth_epochs, kd)
            best, model = trained.best_val_acc, trained.model
            info = {"depth": depth, "val_acc": best, "target_acc": goal, "reached": best >= goal}
            info["epochs"], timing = len(trained.history), {"seconds": _seconds(trained)}
            info["plateaued"] = _plateaued(trained.history, self.patience)  # else the cap ended it early
            chosen = best >= goal or depth == deepest
            if chosen:
                tuned = self._train_depth(
                    model, depth, data, run, f"odn-finetune{depth}", lr * 0.1, self.finetune_epochs, kd
                )
                model = tuned.model
                info.update(chosen=True, finetuned_val_acc=tuned.best_val_acc, finetune_epochs=len(tuned.history))
                timing["finetune_seconds"] = _seconds(tuned)
            run.log.write("odn-depth", **info, **timing)  # wall time in the log only: info is reproducible
            candidates.append(Candidate(f"depth{depth}", deploy_prefix(model, seed.model, depth), target, info))
            if chosen:
                break
        return candidates

    def _body(self, seed: Seed, run) -> nn.Module:
        """The network whose exits are warmed up: the trained seed, or its architecture freshly initialised."""
        if self.start == "seed":
            return copy.deepcopy(seed.model)
        with torch.random.fork_rng(devices=[]):  # the same weights after a resume
            torch.manual_seed(int(run.rng("odn-init").integers(2**31)))
            return build_model(arch_of(seed.model))

    def _train_depth(
        self, start: ExitNet, depth: int, data, run, phase: str, lr: float, epochs: int | None, kd: list[LogitDistiller]
    ) -> TrainResult:
        """A copy of ``start`` trained at ``depth``; ``start`` is left untouched, so every depth phase can start
        from the same warm-up."""
        model = copy.deepcopy(start)
        model.depth = depth
        overrides = {"lr": lr, "keep_best": True, "precise_bn": self.precise_bn}
        if self.depth_schedule == "plateau":
            overrides |= {
                "schedule": "plateau",
                "plateau_factor": self.lr_factor,
                "plateau_patience": self.lr_patience,
                "early_stop_patience": self.patience,
            }
        else:  # annealed to 0 over the phase: no early stop, whose lr would still be high when it stopped
            overrides |= {"schedule": "cosine", "early_stop_patience": None}
        return run.train(model, data, phase, epochs=epochs, overrides=overrides, extra_losses=kd)


def depth_lr(base_lr: float, depth: int, factor: float = DEPTH_LR_FACTOR) -> float:
    """A depth phase's starting lr: the base lr at depth 1, ``factor`` x it at every later depth (the public code:
    half)."""
    return base_lr if depth == 1 else base_lr * factor


def _plateaued(history: list[dict], patience: int) -> bool:
    """Whether the last ``patience`` epochs brought no better validation accuracy (the trainer's stopping rule)."""
    accs = [r["val_acc"] for r in history]
    return len(accs) - (accs.index(max(accs)) + 1) >= patience


def _seconds(result: TrainResult) -> float:
    return round(sum(r["seconds"] for r in result.history), 2)


def _joint_step(ctx) -> StepOutput:
    """Warm-up: the mean cross-entropy of all exits (called through the possibly DDP-wrapped model)."""
    outputs = ctx.model(ctx.x, all_exits=True)
    loss = torch.stack([F.cross_entropy(o, ctx.y) for o in outputs]).mean()
    return StepOutput(loss=loss, logits=outputs[-1])
