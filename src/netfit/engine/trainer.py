"""The one training loop. Methods customise it through a step function, extra losses, callbacks and extra
optimizers; they never write their own loop, so every method gets checkpoints, resume, AMP, DDP, logging and
progress bars.

Determinism: the data order and augmentation of epoch e come from a generator seeded by (seed, e), and the
checkpoint after every epoch holds all state (weights, optimizers, lr controller, callbacks, RNG), so a run
resumed at an epoch boundary produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, TrainingError
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import all_reduce_sum, barrier, dist_env, init_distributed, is_distributed, is_main
from .log import RunLog
from .seeding import epoch_generator, rng_state, set_rng_state

logger = logging.getLogger("netfit")


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

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate (AMP-scaled when active); a step function may call it several times per step."""
        _check_finite(loss, self)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.did_backward = True


StepFn = Callable[[StepContext], StepOutput]
ExtraLoss = Callable[[StepContext, torch.Tensor], torch.Tensor]


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    epoch: int = 0
    step: int = 0
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
    model: nn.Module
    history: list[dict]
    best_val_acc: float
    final: dict


class _LrControl:
    """Per-step learning rate: warm-up x (cosine | step | constant) x the plateau factor."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.scale = 1.0  # plateau reductions so far
        self.best = -math.inf
        self.since_best = 0

    def factor(self, step: int) -> float:
        c = self.config
        total = max(1, c.epochs * self.steps_per_epoch)
        warm = c.warmup_epochs * self.steps_per_epoch
        f = min(1.0, (step + 1) / warm) if warm > 0 and step < warm else 1.0
        if c.schedule == "cosine":
            progress = min(1.0, max(0.0, (step - warm) / max(1.0, total - warm)))
            f *= 0.5 * (1 + math.cos(math.pi * progress))
        elif c.schedule == "step":
            f *= c.step_gamma ** (step // (c.step_epochs * self.steps_per_epoch))
        return f * self.scale

    def end_epoch(self, val_acc: float) -> None:
        if val_acc > self.best:
            self.best, self.since_best = val_acc, 0
            return
        self.since_best += 1
        if self.config.schedule == "plateau" and self.since_best % self.config.plateau_patience == 0:
            self.scale *= self.config.plateau_factor

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.since_best = state["scale"], state["best"], state["since_best"]


def _make_optimizer(model: nn.Module, config: TrainConfig, param_filter) -> torch.optim.Optimizer:
    params = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and (param_filter is None or param_filter(n, p))
    ]
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]  # biases and norms: no weight decay
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def _default_step(extra_losses: Sequence[ExtraLoss]) -> StepFn:
    def step(ctx: StepContext) -> StepOutput:
        logits = ctx.model(ctx.x)
        ce = F.cross_entropy(logits, ctx.y, label_smoothing=ctx.config.label_smoothing)
        metrics = {"ce": float(ce.detach())}
        loss = ce
        for i, extra in enumerate(extra_losses):
            term = extra(ctx, logits)
            metrics[f"extra{i}"] = float(term.detach())
            loss = loss + term
        return StepOutput(loss, logits, metrics)

    return step


def _check_finite(loss: torch.Tensor, ctx: StepContext, metrics: dict | None = None) -> None:
    if not torch.isfinite(loss.detach()).all():
        kind = "nan" if torch.isnan(loss.detach()).any() else "inf"
        terms = ", ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items()) or "n/a"
        raise TrainingError(
            f"loss became {kind} at epoch {ctx.epoch + 1} step {ctx.step} (terms: {terms}); lower the learning rate "
            "(--lr) or enable --grad-clip; the last checkpoint is intact"
        )


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This rank's shuffled batches of indices (sharded like DistributedSampler); size-1 batches skipped (BN)."""
    rank, world, _ = dist_env()
    order = torch.randperm(n, generator=generator)
    order = order[: n - n % world][rank::world] if world > 1 else order
    return [b for b in order.split(batch_size) if len(b) > 1]


def train(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    *,
    step_fn: StepFn | None = None,
    extra_losses: Sequence[ExtraLoss] = (),
    callbacks: Sequence[Callback] = (),
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
    param_filter: Callable[[str, nn.Parameter], bool] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    log: RunLog | None = None,
    desc: str = "train",
    progress: bool = True,
    device: str | torch.device | None = None,
    eval_split: str = "val",
) -> TrainResult:
    """Train ``model`` on ``data.train``, evaluating on ``eval_split`` after every epoch.

    Example:
        >>> result = train(model, load_data("digits"), TrainConfig(epochs=5), checkpoint="runs/x/ckpt.pt")
    """
    config.validate()
    device = torch.device(device) if device is not None else _default_device()
    init_distributed(device)
    model = model.to(device)
    if config.channels_last and len(data.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, config, param_filter)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resume overwrites them with scheduled values
    x_all, y_all = data.train.tensors
    lr_control = _LrControl(config, max(1, len(_batches(len(y_all), config.batch_size, epoch_generator(0, 0)))))
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    state = TrainState(model, optimizer, config)
    best_state: dict | None = None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None

    if resume and ckpt_path is not None and ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)
        _check_same_config(saved["config"], config, ckpt_path)
        model.load_state_dict(saved["model"])
        if saved["finished"] and (saved["early_stopped"] or saved["epoch"] >= config.epochs):
            history = saved["history"]
            return TrainResult(model, history, _best(history), history[-1] if history else {})
        optimizer.load_state_dict(saved["optimizer"])
        for opt, opt_state in zip(extra_optimizers, saved["extra_optimizers"]):
            opt.load_state_dict(opt_state)
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        for cb, cb_state in zip(callbacks, saved["callbacks"]):
            cb.load_state_dict(cb_state)
        lr_control.load_state_dict(saved["lr_control"])
        state.epoch, state.step, state.history = saved["epoch"], saved["step"], saved["history"]
        best_state = saved.get("best_model")
        set_rng_state(saved["rng"])

    ddp_model = model
    if is_distributed():
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    step_fn = step_fn or _default_step(extra_losses)
    for cb in callbacks:
        cb.on_train_start(state)

    def save(finished: bool, early_stopped: bool = False) -> None:
        if ckpt_path is None:
            return
        if is_main():
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "extra_optimizers": [o.state_dict() for o in extra_optimizers],
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "callbacks": [cb.state_dict() for cb in callbacks],
                    "lr_control": lr_control.state_dict(),
                    "epoch": state.epoch,
                    "step": state.step,
                    "history": state.history,
                    "best_model": best_state,
                    "rng": rng_state(),
                    "config": config.to_dict(),
                    "finished": finished,
                    "early_stopped": early_stopped,
                },
            )
        barrier()

    early_stopped = False
    while state.epoch < config.epochs and not early_stopped:
        started = time.perf_counter()
        for cb in callbacks:
            cb.on_epoch_start(state)
        generator = epoch_generator(config.seed, state.epoch)
        batches = _batches(len(y_all), config.batch_size, generator)
        sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
        metric_sums: dict[str, float] = {}
        ddp_model.train()
        with _progress(progress and is_main(), f"{desc} epoch {state.epoch + 1}/{config.epochs}", len(batches)) as bar:
            for idx in batches:
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_control.factor(state.step)
                x = data.prepare(x_all[idx].to(device, non_blocking=True), train=True, generator=generator)
                if config.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y_all[idx].to(device, non_blocking=True)
                ctx = StepContext(ddp_model, model, x, y, state.epoch, state.step, config, device, scaler)
                optimizer.zero_grad(set_to_none=True)
                for opt in extra_optimizers:
                    opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    out = step_fn(ctx)
                _check_finite(out.loss, ctx, out.metrics)
                if not ctx.did_backward:
                    ctx.backward(out.loss)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                for opt in (optimizer, *extra_optimizers):
                    if scaler is not None:
                        scaler.step(opt)
                    else:
                        opt.step()
                if scaler is not None:
                    scaler.update()
                state.step += 1
                n = len(y)
                sums["loss"] += float(out.loss.detach()) * n
                sums["n"] += n
                if out.logits is not None:
                    sums["correct"] += float((out.logits.detach().argmax(1) == y).sum())
                for k, v in out.metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v * n
                for cb in callbacks:
                    cb.on_step_end(state, out)
                bar(loss=sums["loss"] / sums["n"])
        loss_sum, correct, count, *metric_vals = all_reduce_sum(
            [sums["loss"], sums["correct"], sums["n"], *metric_sums.values()], device
        )
        evaluation = evaluate(model, data, eval_split, batch_size=config.eval_batch_size, device=device)
        row = {
            "epoch": state.epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            f"{eval_split}_loss": evaluation["loss"],
            f"{eval_split}_acc": evaluation["accuracy"],
            "seconds": round(time.perf_counter() - started, 3),
            **{k: v / max(count, 1) for k, v in zip(metric_sums, metric_vals)},
        }
        improved = evaluation["accuracy"] > lr_control.best
        lr_control.end_epoch(evaluation["accuracy"])
        if config.keep_best and improved:
            best_state = copy.deepcopy(model.state_dict())
        state.history.append(row)
        state.epoch += 1
        for cb in callbacks:
            cb.on_epoch_end(state, row)
        early_stopped = state.stop or (
            config.early_stop_patience is not None and lr_control.since_best >= config.early_stop_patience
        )
        if log is not None:
            log.write("epoch", phase=desc, **row)
        if is_main():
            logger.info(
                f"{desc} epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.4f} "
                f"{eval_split} acc {row[f'{eval_split}_acc']:.4f} ({row['seconds']:.1f}s)"
            )
        done = early_stopped or state.epoch >= config.epochs
        if done and config.keep_best and best_state is not None:
            model.load_state_dict(best_state)
        save(finished=done, early_stopped=early_stopped)
    history = state.history
    return TrainResult(model, history, _best(history), history[-1] if history else {})


def _best(history: list[dict]) -> float:
    accs = [v for row in history for k, v in row.items() if k.endswith("_acc") and not k.startswith("train")]
    return max(accs) if accs else 0.0


def _check_same_config(saved: dict, config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    differ = sorted(k for k in current if k != "epochs" and saved.get(k) != current[k])
    if differ:
        raise CheckpointError(
            f"cannot resume from {path}: training settings differ ({', '.join(differ)}); use the settings of the "
            "interrupted run or start without --resume"
        )


def _default_device() -> torch.device:
    return torch.device(f"cuda:{dist_env()[2]}") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    split: str = "test",
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy on a split; global over ranks under DDP."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x_all, y_all = getattr(data, split).tensors
    rank, world, _ = dist_env()
    idx = torch.arange(len(y_all))[rank::world] if world > 1 else torch.arange(len(y_all))
    was_training = model.training
    model.eval()
    correct = loss = 0.0
    for batch in idx.split(batch_size):
        x = data.prepare(x_all[batch].to(device), train=False)
        y = y_all[batch].to(device)
        logits = forward(model, x) if forward is not None else model(x)
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    model.train(was_training)
    correct, loss, n = all_reduce_sum([correct, loss, float(len(idx))], device)
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "n": int(n)}


class _progress:
    """A transient rich progress bar over an epoch's steps (a no-op when disabled)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self):
        if not self.enabled:
            return lambda **_: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, info="")

        def advance(**fields: float) -> None:
            self.progress.update(task, advance=1, info=" ".join(f"{k} {v:.4f}" for k, v in fields.items()))

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
