"""The one training loop. Methods customise it through a step function, extra losses, callbacks and extra
optimizers; they never write their own loop, so every method gets checkpoints, resume, AMP, DDP, logging and
progress bars.

Determinism: the data order and augmentation of epoch e come from a generator seeded by (seed, e), and the
checkpoint after every epoch holds all state (weights, optimizers, lr controller, callbacks, extra parameters,
RNG), so a run resumed at an epoch boundary produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, TrainingError
from .checkpoint import as_checkpoint_error, callback_keys, check_compatible, load_checkpoint, save_checkpoint
from .config import LrSchedule, TrainConfig, TrainConfigError
from .distributed import (
    all_reduce_sum,
    barrier,
    default_device,
    dist_env,
    init_distributed,
    is_distributed,
    is_main,
    union_keys,
)
from .hooks import (
    Callback,
    ExtraLoss,
    StepContext,
    StepFn,
    StepOutput,
    TrainResult,
    TrainState,
    check_finite,
    loss_signature,
    scalar,
    training_batch,
)
from .layout import channels_last, channels_last_layout
from .log import ProgressBar, RunLog
from .norms import recalibrate_norms
from .seeding import epoch_generator, phase_seed, rng_state, seed_everything, set_rng_state

logger = logging.getLogger("netfit")


def _make_optimizer(model: nn.Module, config: TrainConfig, param_filter) -> torch.optim.Optimizer:
    params = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad and (param_filter is None or param_filter(n, p))
    ]
    if not params:
        raise TrainingError("no trainable parameters to optimise (all frozen or excluded by param_filter)")
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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This rank's shuffled batches of indices, sharded like DistributedSampler (every rank gets the same
    number of samples, so the same number of steps); size-1 batches are skipped (BatchNorm cannot train on them).

    ``batch_size`` is the GLOBAL batch: each of N ranks takes batch_size / N samples, and the N shards of step k
    together are exactly the single-process batch k, so N processes take the same optimizer steps as one."""
    rank, world, _ = dist_env()
    order = torch.randperm(n, generator=generator)
    order = order[: n - n % world][rank::world] if world > 1 else order
    return [b for b in order.split(max(1, batch_size // world)) if len(b) > 1]


def _opt_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


class _Trainer:
    """One call of ``train``: the state, the checkpoint round trip and the epoch loop."""

    def __init__(self, model, data, config, hooks: dict, checkpoint, log, desc, progress, device, eval_split, layout):
        self.data, self.config, self.log, self.desc, self.eval_split = data, config, log, desc, eval_split
        self.progress, self.device = progress and is_main(), device
        self.callbacks: Sequence[Callback] = hooks["callbacks"]
        self.extra_optimizers: Sequence[torch.optim.Optimizer] = hooks["extra_optimizers"]
        self.step_fn = hooks["step_fn"] or _default_step(hooks["extra_losses"])
        self.losses = [] if hooks["step_fn"] else [loss_signature(f) for f in hooks["extra_losses"]]
        self.ckpt_path = Path(checkpoint) if checkpoint is not None else None
        self.model = model.to(device)  # keeps the layout train() gave it
        self.channels_last = layout  # train() decided it (channels_last) and put the model in it
        self.optimizer = _make_optimizer(self.model, config, hooks["param_filter"])
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # a resume overwrites the groups' lr
        self.x_all, self.y_all = data.train.tensors
        steps = len(_batches(len(self.y_all), config.batch_size, epoch_generator(0, 0)))
        if config.epochs > 0 and steps == 0:
            raise DataError(f"the training split has too few samples ({len(self.y_all)}) for one batch of >= 2")
        self.lr_control = LrSchedule(config, max(1, steps))
        dtype = amp_dtype(config, device)
        self.use_amp, self.amp_dtype = dtype is not None, dtype or torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.state = TrainState(self.model, self.optimizer, config, self.lr_control)
        self.best_weights: dict | None = None  # keep_best: the best epoch's weights so far
        self.ddp_model = self.model

    # -- checkpoints ---------------------------------------------------------------------------------------

    def save(self, finished: bool, early_stopped: bool = False, last_weights: dict | None = None) -> None:
        """Rank 0 writes the checkpoint; the other ranks wait so nobody reads a half-finished phase."""
        if self.ckpt_path is None:
            return
        if is_main():
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "extra_optimizers": [o.state_dict() for o in self.extra_optimizers],
                # an extra optimizer's parameters may live outside the model (e.g. architecture weights)
                "extra_params": [[p.detach().cpu() for p in _opt_params(o)] for o in self.extra_optimizers],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "callbacks": {k: cb.state_dict() for k, cb in zip(callback_keys(self.callbacks), self.callbacks)},
                "extra_losses": self.losses,
                "lr_control": self.lr_control.state_dict(),
                "epoch": self.state.epoch,
                "step": self.state.step,
                "history": self.state.history,
                "extra": self.state.extra,
                "best_model": self.best_weights,
                "rng": rng_state(),
                "config": self.config.to_dict(),
                "finished": finished,
                "early_stopped": early_stopped,
            }
            if last_weights is not None:
                state["last_model"] = last_weights  # keep_best: "model" holds the best epoch's weights
            save_checkpoint(self.ckpt_path, state)
        barrier()

    def restore(self) -> bool:
        """Load the checkpoint; True when it holds a finished phase (nothing left to train)."""
        path = self.ckpt_path
        saved = load_checkpoint(path)
        keys = callback_keys(self.callbacks)
        check_compatible(saved, self.config, keys, len(self.extra_optimizers), path, self.losses)
        finished = saved["finished"] and (saved["early_stopped"] or saved["epoch"] >= self.config.epochs)
        weights = saved["model"] if finished else saved.get("last_model", saved["model"])
        with as_checkpoint_error(path, "holds another model's weights"):
            self.model.load_state_dict(weights)
            for params, values in zip((_opt_params(o) for o in self.extra_optimizers), saved["extra_params"]):
                with torch.no_grad():
                    for p, v in zip(params, values, strict=True):
                        p.copy_(v)
        for key, cb in zip(keys, self.callbacks):
            if key in saved["callbacks"]:
                cb.load_state_dict(saved["callbacks"][key])
        self.state.epoch, self.state.step = saved["epoch"], saved["step"]
        self.state.history, self.state.extra = saved["history"], saved["extra"]
        if finished:
            return True
        with as_checkpoint_error(path, "holds another optimizer's state"):
            self.optimizer.load_state_dict(saved["optimizer"])
            for opt, opt_state in zip(self.extra_optimizers, saved["extra_optimizers"]):
                opt.load_state_dict(opt_state)
        if self.scaler is not None and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.lr_control.load_state_dict(saved["lr_control"])
        self.best_weights = saved["best_model"]
        set_rng_state(saved["rng"])
        return False

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        if resume and self.ckpt_path is not None and self.ckpt_path.exists() and self.restore():
            return self.result()
        if self.state.epoch == 0:  # a fresh phase draws (dropout, ...) from its own stream, whatever ran before it
            seed_everything(phase_seed(self.config.seed, self.desc))
        if is_distributed():
            index = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: step functions may run only a sub-network (sandwich rule, exits)
            ddp = nn.parallel.DistributedDataParallel
            self.ddp_model = ddp(self.model, device_ids=index, find_unused_parameters=True)
        for cb in self.callbacks:
            cb.on_train_start(self.state)
        if self.state.epoch >= self.config.epochs:  # nothing left (epochs=0 or fewer than done): mark finished
            self.finish(early_stopped=False)
        while self.state.epoch < self.config.epochs:
            row = self.epoch()
            self.report(row)
            early_stopped = self.state.stop or (
                self.config.early_stop_patience is not None
                and self.lr_control.since_best >= self.config.early_stop_patience
            )
            if early_stopped or self.state.epoch >= self.config.epochs:
                self.finish(early_stopped)
                break
            self.save(finished=False)
        return self.result()

    def report(self, row: dict) -> None:
        """The epoch's JSONL event and one-line summary."""
        if self.log is not None:
            self.log.write("epoch", phase=self.desc, **row)
        if is_main():
            acc = f"{self.eval_split} acc {row[f'{self.eval_split}_acc']:.4f} " if self.eval_split else ""
            logger.info(
                f"{self.desc} epoch {row['epoch']}/{self.config.epochs}: loss {row['train_loss']:.4f} "
                f"{acc}({row['seconds']:.1f}s)"
            )

    def finish(self, early_stopped: bool) -> None:
        """Switch to the best weights (keep_best) and write the finished checkpoint."""
        last_weights = None
        if self.config.keep_best and self.best_weights is not None:
            last_weights = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict(self.best_weights)
        self.save(finished=True, early_stopped=early_stopped, last_weights=last_weights)

    def result(self) -> TrainResult:
        history = self.state.history
        accs = [row[f"{self.eval_split}_acc"] for row in history if f"{self.eval_split}_acc" in row]
        final = history[-1] if history else {}
        if self.config.keep_best and accs:
            final = history[accs.index(max(accs))]  # the first best epoch, as kept by the loop
        best = max(accs) if accs else (0.0 if self.eval_split else math.nan)
        return TrainResult(self.model, history, best, final)

    def epoch(self) -> dict:
        """Train one epoch, evaluate, update the lr controller and callbacks; return the history row."""
        state, config = self.state, self.config
        started = time.perf_counter()
        for cb in self.callbacks:
            cb.on_epoch_start(state)
        generator = epoch_generator(config.seed, state.epoch)
        batches = _batches(len(self.y_all), config.batch_size, generator)
        sums = {"loss": 0.0, "correct": 0.0, "n": 0.0}
        metric_sums: dict[str, float] = {}
        metric_counts: dict[str, float] = {}
        self.ddp_model.train()
        title = f"{self.desc} epoch {state.epoch + 1}/{config.epochs}"
        with ProgressBar(self.progress, title, len(batches)) as advance:
            for idx in batches:
                out, y = self.step(idx, generator)
                n = len(y)
                sums["loss"] += scalar(out.loss) * n
                sums["n"] += n
                if out.logits is not None:
                    sums["correct"] += float((out.logits.detach().argmax(1) == y).sum())
                for k, v in out.metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + scalar(v) * n
                    metric_counts[k] = metric_counts.get(k, 0.0) + n
                for cb in self.callbacks:
                    cb.on_step_end(state, out)
                advance(loss=sums["loss"] / sums["n"], acc=sums["correct"] / sums["n"])
        keys = union_keys(list(metric_sums))
        loss_sum, correct, count, *rest = all_reduce_sum(
            [
                sums["loss"],
                sums["correct"],
                sums["n"],
                *(metric_sums.get(k, 0.0) for k in keys),
                *(metric_counts.get(k, 0.0) for k in keys),
            ],
            self.device,
        )
        if config.precise_bn:  # seeded draw: every rank (and a resumed run) computes the same statistics
            recalibrate_norms(self.model, self.data, config.precise_bn, config.batch_size, config.seed + state.epoch)
        row = {
            "epoch": state.epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
        }
        if self.eval_split:
            evaluation = evaluate(self.model, self.data, self.eval_split, batch_size=config.eval_batch_size)
            row |= {f"{self.eval_split}_loss": evaluation["loss"], f"{self.eval_split}_acc": evaluation["accuracy"]}
        row["seconds"] = round(time.perf_counter() - started, 3)
        metric_totals, metric_ns = rest[: len(keys)], rest[len(keys) :]
        row.update({k: s / max(c, 1) for k, s, c in zip(keys, metric_totals, metric_ns) if k not in row})
        if self.eval_split and self.lr_control.end_epoch(evaluation["accuracy"]) and config.keep_best:
            self.best_weights = copy.deepcopy(self.model.state_dict())
        state.history.append(row)
        state.epoch += 1
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)
        return row

    def step(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[StepOutput, torch.Tensor]:
        """One optimizer step on the samples ``idx``; returns the step output and the labels."""
        state, config, device = self.state, self.config, self.device
        factor = self.lr_control.factor(state.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        x, ids = training_batch(self.data, self.x_all[idx].to(device, non_blocking=True), idx, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.y_all[idx].to(device, non_blocking=True)
        ctx = StepContext(
            self.ddp_model,
            self.model,
            x,
            y,
            state.epoch,
            state.step,
            config,
            device,
            self.scaler,
            ids=ids,
            channels_last=self.channels_last,
        )
        optimizers = (self.optimizer, *self.extra_optimizers)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            out = self.step_fn(ctx)
        check_finite(scalar(out.loss), ctx, out.metrics)  # before any update: the weights stay finite
        if not ctx.did_backward:
            ctx._backward(out.loss)
        if self.scaler is not None:
            for opt in optimizers:  # clip (and step) true gradients, not scaled ones
                self.scaler.unscale_(opt)
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        for opt in optimizers:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        state.step += 1
        return out, y


def _check_unevaluated(config: TrainConfig) -> None:
    needs = [name for name, on in _EVALUATED.items() if on(config)]
    if needs:
        raise TrainConfigError(f"training without evaluation cannot use {', '.join(needs)}: they follow it")


_EVALUATED = {  # the settings that follow the evaluation accuracy
    "schedule=plateau": lambda c: c.schedule == "plateau",
    "keep_best": lambda c: c.keep_best,
    "early_stop_patience": lambda c: c.early_stop_patience is not None,
}


def _check_split(data: Any, split: str) -> None:
    if not isinstance(split, str) or not hasattr(getattr(data, split, None), "tensors"):
        raise DataError(f"the data has no split {split!r}; use val, test or train")


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training with ``config`` on ``device``: bf16 where the GPU has it, else fp16 (with a
    gradient scaler); None with ``amp`` off or off CUDA."""
    if not (config.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
    eval_split: str | None = "val",
) -> TrainResult:
    """Train ``model`` on ``data.train``, evaluating on ``eval_split`` after every epoch.

    Args:
        model: the network; moved to ``device`` and trained in place (in the channels_last layout where
            ``channels_last`` says so, and back in the default layout when it returns).
        data: a DataBundle (``train``/``val``/``test`` TensorDatasets and ``prepare(x, train, generator)``).
        config: the training settings.
        step_fn: replaces the default step (cross-entropy + ``extra_losses``); it may call ``ctx.backward``
            itself (several times), else the engine backpropagates ``StepOutput.loss``.
        extra_losses: terms ``f(ctx, logits)`` added to the default step's loss (e.g. distillation).
        callbacks: hooks called in order; their ``state_dict`` is checkpointed.
        extra_optimizers: stepped and zeroed with the main optimizer; their state and parameters are checkpointed.
        param_filter: ``(name, param) -> bool`` selects the main optimizer's parameters (default: all trainable).
        checkpoint: written atomically after every epoch, kept (marked finished) at the end.
        resume: continue from ``checkpoint`` if it exists (a finished one returns at once).
        log: the JSONL run log ("epoch" events); desc names the phase in the log and the progress bar.
        device: default cuda:LOCAL_RANK when available, else cpu.
        eval_split: the split evaluated after every epoch (drives plateau, early stop and keep_best); None
            evaluates nothing (for a phase whose network has no accuracy worth its time; then
            ``TrainResult.best_val_acc`` is NaN, and those three settings are refused).

    Raises:
        TrainingError: the loss became NaN/inf (the last checkpoint stays intact).
        CheckpointError: the checkpoint is corrupt or was written with other settings, model or hooks.

    Example:
        >>> result = train(model, load_data("digits"), TrainConfig(epochs=5), checkpoint="runs/x/ckpt.pt")
    """
    config.validate()
    if eval_split is None:
        _check_unevaluated(config)
    else:
        _check_split(data, eval_split)
    device = torch.device(device) if device is not None else default_device()
    init_distributed(device)
    hooks = {
        "step_fn": step_fn,
        "extra_losses": extra_losses,
        "callbacks": callbacks,
        "extra_optimizers": extra_optimizers,
        "param_filter": param_filter,
    }
    layout = channels_last(config, device, data.input_shape, model)
    with channels_last_layout(model, layout):
        trainer = _Trainer(model, data, config, hooks, checkpoint, log, desc, progress, device, eval_split, layout)
        return trainer.run(resume)


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
    """Top-1 accuracy (fraction in [0, 1]), mean cross-entropy and sample count on a split.

    Under DDP each rank evaluates its shard and the sums are all-reduced, so every rank sees global values
    (every rank must call it). ``forward(model, x)`` replaces ``model(x)`` (e.g. to pick a depth).

    Example:
        >>> evaluate(model, data, "test")["accuracy"]
        0.953
    """
    _check_split(data, split)
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    x_all, y_all = getattr(data, split).tensors
    init_distributed(device)  # a shard is only a share of the answer once the ranks can sum (e.g. before any train)
    rank, world, _ = dist_env()
    idx = torch.arange(len(y_all))[rank::world] if world > 1 else torch.arange(len(y_all))
    was_training = model.training
    model.eval()
    correct = loss = 0.0
    try:
        for batch in idx.split(batch_size):
            x = data.prepare(x_all[batch].to(device), train=False)
            y = y_all[batch].to(device)
            logits = forward(model, x) if forward is not None else model(x)
            loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    correct, loss, n = all_reduce_sum([correct, loss, float(len(idx))], device)
    return {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "n": int(n)}
