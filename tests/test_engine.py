"""The training engine: learning, resume equivalence, NaN detection, hooks, safe checkpoints, DDP."""

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netfit.engine import (
    Callback,
    RunLog,
    StepOutput,
    TrainConfig,
    TrainConfigError,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)
from netfit.engine.config import LrSchedule
from netfit.engine.norms import recalibrate_norms
from netfit.errors import CheckpointError, DataError, NetfitError, TrainingError


@dataclass
class ToyData:
    """Learnable 4-class task: the class is the quadrant of the first two features."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int = 4
    input_shape: tuple = (8,)

    def prepare(self, x, train, generator=None):
        return x.float()


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)

    def split(k):
        x = torch.randn(k, 8, generator=g)
        return TensorDataset(x, ((x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()))

    return ToyData(split(n), split(64), split(64))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.1)


class KillAt(Callback):
    """Simulates a kill: raises when epoch ``epoch`` (0-based) starts, after the previous checkpoint was written."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_learns():
    data = toy_data()
    result = train(mlp(), data, CFG.replace(epochs=8), progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate(result.model, data, "test")["accuracy"] > 0.8
    assert result.best_val_acc == max(r["val_acc"] for r in result.history)


def test_training_without_evaluation_evaluates_nothing_and_trains_the_same(monkeypatch):
    """eval_split=None: the same weights as with evaluation, no evaluation run or reported, NaN best accuracy;
    refused with the settings that follow the evaluation."""
    data = toy_data()
    evaluated = train(mlp(), data, CFG, progress=False)
    calls = []
    monkeypatch.setattr("netfit.engine.trainer.evaluate", lambda *a, **k: calls.append(a))
    blind = train(mlp(), data, CFG, progress=False, eval_split=None)
    assert not calls and math.isnan(blind.best_val_acc) and len(blind.history) == 3
    assert not any(key.startswith("val_") for row in blind.history for key in row)
    for a, b in zip(evaluated.model.state_dict().values(), blind.model.state_dict().values()):
        assert torch.equal(a, b)
    for change in ({"schedule": "plateau"}, {"keep_best": True}, {"early_stop_patience": 2}):
        with pytest.raises(TrainConfigError, match="without evaluation"):
            train(mlp(), data, CFG.replace(**change), progress=False, eval_split=None)


def test_a_phase_draws_from_its_own_stream_whatever_ran_before_it():
    """Dropout masks (any draw from the global generators) come from the run seed and the phase's name, not from
    how much randomness the method used before the phase (e.g. how many networks it built)."""

    def dropout_mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))

    data = toy_data()
    first = train(dropout_mlp(), data, CFG, progress=False, desc="phase").model
    torch.rand(1000)  # the method drew more before the same phase
    again = train(dropout_mlp(), data, CFG, progress=False, desc="phase").model
    other = train(dropout_mlp(), data, CFG, progress=False, desc="another phase").model
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_equals_uninterrupted(tmp_path, optimizer):
    lr, warmup = (0.1, 1.0) if optimizer == "sgd" else (0.01, 0.0)
    data, cfg = toy_data(), CFG.replace(optimizer=optimizer, lr=lr, warmup_epochs=warmup)
    straight = train(mlp(), data, cfg, progress=False).model
    with pytest.raises(KeyboardInterrupt):  # killed at the start of epoch 3
        train(mlp(), data, cfg, checkpoint=tmp_path / "c.pt", progress=False, callbacks=[KillAt(2)])
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2
    resumed = train(mlp(), data, cfg, checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_finished_checkpoint_returns_at_once(tmp_path):
    data = toy_data()
    first = train(mlp(), data, CFG, checkpoint=tmp_path / "c.pt", progress=False)
    calls = []
    again = train(
        mlp(), data, CFG, checkpoint=tmp_path / "c.pt", resume=True, progress=False, step_fn=lambda ctx: calls.append(1)
    )
    assert not calls and again.history == first.history
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path):
    train(mlp(), toy_data(), CFG.replace(epochs=1), checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        train(mlp(), toy_data(), CFG.replace(lr=0.5), checkpoint=tmp_path / "c.pt", resume=True, progress=False)


def test_corrupt_and_malicious_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="delete it or start without --resume") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "weights_only" not in str(info.value)  # never advise unpickling an untrusted file
    train(mlp(), toy_data(), CFG.replace(epochs=1), checkpoint=tmp_path / "ok.pt", progress=False)
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "ok.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ok.pt is corrupt or not a netfit checkpoint \("):
        train(mlp(), toy_data(), CFG, checkpoint=tmp_path / "ok.pt", resume=True, progress=False)


def test_nan_stops_with_clear_error_and_intact_checkpoint(tmp_path):
    data = toy_data()
    train(mlp(), data, CFG.replace(epochs=1), checkpoint=tmp_path / "c.pt", progress=False)

    def nan_step(ctx):
        if ctx.epoch == 1:
            return StepOutput(torch.tensor(float("nan"), requires_grad=True), metrics={"ce": float("nan")})
        return StepOutput(nn.functional.cross_entropy(ctx.model(ctx.x), ctx.y))

    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2 step .*ce=nan.*--lr"):
        train(mlp(), data, CFG, checkpoint=tmp_path / "c.pt", resume=True, progress=False, step_fn=nan_step)
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 1


def test_hooks_step_fn_extra_losses_callbacks_extra_optimizers(tmp_path):
    data = toy_data()
    scale = nn.Parameter(torch.ones(()))
    extra_opt = torch.optim.SGD([scale], lr=0.1)
    seen = []

    def two_backward_step(ctx):  # e.g. the sandwich rule: several sub-network losses per step
        a = nn.functional.cross_entropy(ctx.model(ctx.x) * scale, ctx.y)
        ctx.backward(a)
        b = nn.functional.cross_entropy(ctx.model(ctx.x), ctx.y)
        ctx.backward(b)
        return StepOutput((a + b).detach(), metrics={"a": float(a.detach())})

    class Recorder(Callback):
        def __init__(self):
            self.epochs = 0

        def on_epoch_end(self, state, metrics):
            self.epochs += 1
            seen.append(("epoch", metrics["epoch"]))

        def state_dict(self):
            return {"epochs": self.epochs}

        def load_state_dict(self, state):
            self.epochs = state["epochs"]

    rec = Recorder()
    result = train(
        mlp(),
        data,
        CFG.replace(epochs=2),
        step_fn=two_backward_step,
        callbacks=[rec],
        extra_optimizers=[extra_opt],
        checkpoint=tmp_path / "c.pt",
        progress=False,
    )
    assert float(scale.detach()) != 1.0 and "a" in result.history[0]
    rec2 = Recorder()
    train(
        mlp(),
        data,
        CFG.replace(epochs=3),
        step_fn=two_backward_step,
        callbacks=[rec2],
        extra_optimizers=[extra_opt],
        checkpoint=tmp_path / "c.pt",
        resume=True,
        progress=False,
    )
    assert rec2.epochs == 3  # restored 2, then one more

    calls = []
    train(
        mlp(),
        data,
        CFG.replace(epochs=1),
        extra_losses=[lambda ctx, logits: calls.append(1) or logits.sum() * 0],
        progress=False,
    )
    assert calls


def scaled_step(scale):
    def step(ctx):
        logits = ctx.model(ctx.x) * scale
        return StepOutput(nn.functional.cross_entropy(logits, ctx.y), logits)

    return step


def test_extra_optimizer_parameter_outside_model_resumes_exactly(tmp_path):
    """Architecture-style parameters live outside the model: their values must come back from the checkpoint."""
    data = toy_data()

    def run(**kw):
        scale = nn.Parameter(torch.ones(()))
        opt = torch.optim.SGD([scale], lr=0.05, momentum=0.9)
        result = train(mlp(), data, CFG, step_fn=scaled_step(scale), extra_optimizers=[opt], progress=False, **kw)
        return result, scale

    straight, s1 = run()
    assert float(s1.detach()) != 1.0
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=tmp_path / "c.pt", callbacks=[KillAt(2)])
    resumed, s2 = run(checkpoint=tmp_path / "c.pt", resume=True)  # a fresh parameter, restored from disk
    assert torch.equal(s1.detach(), s2.detach())
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    _, s3 = run(checkpoint=tmp_path / "c.pt", resume=True)  # finished phase: restored too
    assert torch.equal(s1.detach(), s3.detach())


class Recorder(Callback):
    """Records hook calls and counts epochs in its (checkpointed) state and in state.extra."""

    def __init__(self, calls):
        self.calls, self.epochs = calls, 0

    def on_train_start(self, state):
        self.calls.append("start")

    def on_epoch_start(self, state):
        self.calls.append(f"epoch_start {state.epoch}")

    def on_step_end(self, state, out):
        self.calls.append("step")

    def on_epoch_end(self, state, metrics):
        self.epochs += 1
        state.extra["seen"] = [*state.extra.get("seen", []), metrics["epoch"]]
        self.calls.append(f"epoch_end {metrics['epoch']}")

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


def test_callbacks_order_and_state_restored(tmp_path):
    data, cfg = toy_data(n=64), CFG.replace(epochs=2)  # 64 samples / 32 = 2 steps per epoch
    calls = []
    train(mlp(), data, cfg, callbacks=[Recorder(calls)], checkpoint=tmp_path / "c.pt", progress=False)
    expected_epoch = ["step", "step"]
    assert calls == ["start", "epoch_start 0", *expected_epoch, "epoch_end 1", "epoch_start 1", *expected_epoch,
                     "epoch_end 2"]  # fmt: skip
    assert load_checkpoint(tmp_path / "c.pt")["extra"] == {"seen": [1, 2]}

    finished = Recorder([])  # a finished phase still restores callback state (e.g. a NAS controller's decision)
    train(mlp(), data, cfg, callbacks=[finished], checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    assert finished.epochs == 2 and finished.calls == []

    grown, seen = Recorder([]), []
    spy = Callback()
    spy.on_epoch_end = lambda state, metrics: seen.append(list(state.extra["seen"]))
    train(mlp(), data, CFG, callbacks=[grown, spy], checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    assert grown.epochs == 3 and seen == [[1, 2, 3]]

    with pytest.raises(CheckpointError, match=r"callback.*Recorder#0"):  # a stateful callback went missing
        train(mlp(), data, CFG.replace(epochs=5), checkpoint=tmp_path / "c.pt", resume=True, progress=False)


def test_extra_losses_are_added():
    data = toy_data()
    calls = []

    def constant(ctx, logits):
        calls.append(logits.shape)
        return logits.sum() * 0 + 5.0

    result = train(mlp(), data, CFG.replace(epochs=1), extra_losses=[constant], progress=False)
    row = result.history[0]
    assert calls and calls[0] == (32, 4)
    assert row["extra0"] == pytest.approx(5.0) and row["train_loss"] == pytest.approx(row["ce"] + 5.0)


class FixedLogits(nn.Module):
    """Logits = the first 3 input features (for a hand-computed evaluation)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x[:, :3] + self.dummy


def test_evaluate_hand_computed():
    x = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]])
    y = torch.tensor([0, 1, 0, 1])  # first two right, last two wrong
    split = TensorDataset(x, y)
    data = ToyData(split, split, split, num_classes=3, input_shape=(3,))
    out = evaluate(FixedLogits(), data, "test", batch_size=3)
    z = math.log(math.exp(2) + 2)  # log-sum-exp of (2, 0, 0)
    assert out["accuracy"] == 0.5 and out["n"] == 4
    assert out["loss"] == pytest.approx((2 * (z - 2) + 2 * z) / 4)
    swapped = evaluate(FixedLogits(), data, "test", forward=lambda m, x: m(x)[:, [1, 0, 2]])
    assert swapped["accuracy"] == 0.25  # classes 0 and 1 swapped: predictions 1, 0, 2, 1 -> only the last is right
    with pytest.raises(DataError, match="no split 'tset'"):
        evaluate(FixedLogits(), data, "tset")


def test_nan_from_huge_lr():
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1 step \d+ \(terms: ce="):
        train(mlp(), toy_data(), CFG.replace(lr=1e6), progress=False)


def test_resume_refuses_other_model_and_missing_file(tmp_path):
    train(mlp(), toy_data(), CFG.replace(epochs=1), checkpoint=tmp_path / "c.pt", progress=False)
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(CheckpointError, match="another model's weights"):
        train(other, toy_data(), CFG, checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    save_checkpoint(tmp_path / "partial.pt", {"model": {}})  # a valid file that is not a training checkpoint
    with pytest.raises(CheckpointError, match="missing optimizer"):
        train(mlp(), toy_data(), CFG, checkpoint=tmp_path / "partial.pt", resume=True, progress=False)


def test_log_has_one_event_per_epoch(tmp_path):
    log = RunLog(tmp_path / "log.jsonl")
    train(mlp(), toy_data(), CFG, log=log, progress=False, desc="phase")
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all('"event": "epoch"' in line and '"phase": "phase"' in line for line in lines)


def test_log_stamps_every_event_with_wall_and_cpu_time(tmp_path):
    """``cpu`` (the process's CPU seconds) measures a phase's work where other processes share the machine."""
    log = RunLog(tmp_path / "log.jsonl")
    log.write("before")
    sum(i * i for i in range(2_000_000))  # work for this process
    log.write("after")
    before, after = (json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines())
    assert after["cpu"] > before["cpu"] >= 0 and after["time"] >= before["time"]


def test_progress_bar_writes_nothing_where_the_output_is_not_a_terminal(capsys):
    """Piped into a log file, a bar would leave one blank line per epoch between the epoch summaries."""
    from netfit.engine.log import ProgressBar

    with ProgressBar(True, "seed epoch 1/1", total=2) as advance:
        advance(loss=1.0)
        advance(loss=0.5)
    assert capsys.readouterr().out == ""


def test_session_seconds_per_clock_counts_each_session_and_skips_unclocked_ones(tmp_path):
    from netfit.engine.log import session_seconds

    events = [
        {"event": "start", "time": 100.0},  # a session logged before CPU time was
        {"event": "epoch", "time": 104.0},
        {"event": "start", "time": 200.0, "cpu": 1.0},  # resumed: the process's CPU clock starts again
        {"event": "epoch", "time": 210.0, "cpu": 8.0},
        "{cut off by a kill",
        {"event": "start", "time": 300.0, "cpu": 0.5},
        {"event": "done", "time": 303.0, "cpu": 3.5},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in events))
    assert session_seconds(path) == [4.0, 10.0, 3.0]
    assert session_seconds(path, "cpu") == [7.0, 3.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"lr": 0}, "lr must be > 0"),
        ({"optimizer": "adam9"}, "unknown optimizer 'adam9' .use sgd, adamw"),
        ({"schedule": "x"}, "unknown schedule 'x'"),
        ({"bogus": 1}, "unknown training setting.*bogus"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"step_epochs": 0}, "step_epochs must be >= 1"),
        ({"plateau_factor": 1.5}, "plateau_factor must be in"),
        ({"early_stop_patience": 0}, "early_stop_patience must be >= 1"),
        ({"momentum": 0.0}, "nesterov needs momentum"),
        ({"keep_best": 1}, "keep_best must be a bool"),
        ({"precise_bn": -1}, "precise_bn must be >= 0"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(TrainConfigError, match=message) as info:
        TrainConfig().replace(**change)
    assert isinstance(info.value, NetfitError) and isinstance(info.value, ValueError)


def test_config_round_trip_and_bad_config_in_train():
    cfg = TrainConfig(epochs=4, schedule="plateau", early_stop_patience=3, keep_best=True, grad_clip=1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg.grad_clip, float)  # coerced, so checkpoints and JSON hold plain floats
    assert cfg.replace(lr=0.2).lr == 0.2 and cfg.lr == 0.05
    with pytest.raises(TrainConfigError, match="lr must be > 0"):
        train(mlp(), toy_data(), TrainConfig(lr=-1.0), progress=False)


def test_plateau_schedule_factors():
    cfg = TrainConfig(epochs=10, schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    lr = LrSchedule(cfg, steps_per_epoch=4)
    scales = []
    for acc in [0.5, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6]:
        lr.end_epoch(acc)
        scales.append(lr.factor(step=7))
    # not improved for 2 epochs -> x0.5; the counter keeps running, so every 2 more stale epochs -> x0.5 again
    assert scales == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    warm = LrSchedule(cfg.replace(warmup_epochs=1.0), steps_per_epoch=4)
    assert [warm.factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def frozen_step(ctx):
    """A step that changes nothing (zero gradients): the evaluation accuracy stays the same every epoch."""
    logits = ctx.model(ctx.x)
    return StepOutput((logits * 0).sum(), logits)


STALE = CFG.replace(lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, schedule="plateau")


def test_plateau_in_training_survives_resume(tmp_path):
    cfg = STALE.replace(epochs=7, plateau_patience=2, plateau_factor=0.5)
    straight = train(mlp(), toy_data(), cfg, step_fn=frozen_step, progress=False)
    # epoch 1 sets the best; 2 stale epochs (2, 3) -> halve from epoch 4; 2 more (4, 5) -> halve from epoch 6
    assert [r["lr"] for r in straight.history] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    with pytest.raises(KeyboardInterrupt):
        train(mlp(), toy_data(), cfg, step_fn=frozen_step, checkpoint=tmp_path / "c.pt", callbacks=[KillAt(4)])
    resumed = train(
        mlp(), toy_data(), cfg, step_fn=frozen_step, checkpoint=tmp_path / "c.pt", resume=True, progress=False
    )
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]


def test_early_stop_marks_checkpoint_finished(tmp_path):
    cfg = STALE.replace(epochs=20, schedule="constant", early_stop_patience=3)
    result = train(mlp(), toy_data(), cfg, step_fn=frozen_step, checkpoint=tmp_path / "c.pt", progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]  # best at 1, then 3 epochs without improving
    saved = load_checkpoint(tmp_path / "c.pt")
    assert saved["finished"] and saved["early_stopped"] and saved["epoch"] == 4
    calls = []

    def counting_step(ctx):
        calls.append(1)
        return frozen_step(ctx)

    again = train(mlp(), toy_data(), cfg.replace(epochs=30), step_fn=counting_step, checkpoint=tmp_path / "c.pt",
                  resume=True, progress=False)  # fmt: skip
    assert not calls and again.history == result.history


def quadrant_weights(kind):
    """Weights of nn.Linear(8, 4) for the toy task: 'good' is exact, 'half' ignores x1, 'bad' is inverted."""
    w = torch.zeros(4, 8)
    w[:, 0] = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    w[:, 1] = torch.tensor([-1.0, 1.0, -1.0, 1.0]) * (kind != "half")
    return w * (-1 if kind == "bad" else 1)


class SetWeights(Callback):
    """Sets the weights at each epoch start, so the evaluation accuracy per epoch is known in advance."""

    def __init__(self, kinds):
        self.kinds = kinds

    def on_epoch_start(self, state):
        with torch.no_grad():
            state.model.weight.copy_(quadrant_weights(self.kinds[state.epoch]))
            state.model.bias.zero_()


def linear():
    return nn.Linear(8, 4)


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_returns_and_stores_best_epoch(tmp_path, keep_best):
    data, cfg = toy_data(), STALE.replace(epochs=3, schedule="constant", keep_best=keep_best)
    kinds = ["half", "good", "bad"]
    hooks = {"step_fn": frozen_step, "callbacks": [SetWeights(kinds)], "progress": False}
    result = train(linear(), data, cfg, checkpoint=tmp_path / "c.pt", **hooks)
    accs = [r["val_acc"] for r in result.history]
    assert accs[1] == 1.0 and accs[2] == 0.0 and 0 < accs[0] < 1
    assert result.best_val_acc == 1.0
    expected = "good" if keep_best else "bad"
    assert torch.equal(result.model.weight.detach(), quadrant_weights(expected))
    assert result.final["epoch"] == (2 if keep_best else 3)
    saved = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(saved["model"]["weight"], quadrant_weights(expected))
    again = train(linear(), data, cfg, checkpoint=tmp_path / "c.pt", resume=True, **hooks)
    assert torch.equal(again.model.weight.detach(), quadrant_weights(expected)) and again.history == result.history
    if keep_best:  # growing the epochs continues from the last weights, not the best
        assert torch.equal(saved["last_model"]["weight"], quadrant_weights("bad"))
        seen = []
        spy = Callback()
        spy.on_train_start = lambda state: seen.append(state.model.weight.detach().clone())
        more = {**hooks, "callbacks": [SetWeights([*kinds, "half"]), spy]}
        grown = train(linear(), data, cfg.replace(epochs=4), checkpoint=tmp_path / "c.pt", resume=True, **more)
        assert torch.equal(seen[0], quadrant_weights("bad")) and len(grown.history) == 4
        assert torch.equal(grown.model.weight.detach(), quadrant_weights("good"))


def test_precise_bn_recalibrates_the_norms_before_every_evaluation():
    """With ``precise_bn`` the evaluated (and returned) model carries statistics re-estimated on the seeded draw
    of training samples after its last step, not the running averages of the steps; off, it keeps those."""

    def bn_mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))

    data, cfg = toy_data(), CFG.replace(precise_bn=96)
    evaluated = []
    spy = Callback()
    spy.on_epoch_end = lambda state, row: evaluated.append(state.model[1].running_mean.clone())
    result = train(bn_mlp(), data, cfg, callbacks=[spy], progress=False)
    expected = copy.deepcopy(result.model)
    recalibrate_norms(expected, data, samples=96, batch_size=cfg.batch_size, seed=cfg.seed + cfg.epochs - 1)
    assert torch.allclose(result.model[1].running_mean, expected[1].running_mean, atol=1e-6)
    assert torch.allclose(result.model[1].running_var, expected[1].running_var, atol=1e-6)
    assert torch.equal(evaluated[-1], result.model[1].running_mean) and len(evaluated) == cfg.epochs
    plain = train(bn_mlp(), data, CFG, progress=False).model
    assert not torch.allclose(plain[1].running_mean, expected[1].running_mean, atol=1e-3)
    assert torch.equal(plain[0].weight, result.model[0].weight)  # recalibration never touches the weights


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_engine import toy_data, mlp, CFG
        import torch.nn.functional as F
        from netfit.engine import train, evaluate, StepOutput
        from netfit.engine.distributed import dist_env

        def step(ctx):  # metric keys differ between ranks: the engine must all-reduce their union
            logits = ctx.model(ctx.x)
            rank = dist_env()[0]
            return StepOutput(F.cross_entropy(logits, ctx.y), logits, {{f"only{{rank}}": 1.0, "rank": float(rank)}})

        result = train(mlp(), toy_data(), CFG.replace(epochs=2), checkpoint={str(tmp_path / "c.pt")!r},
                       progress=False, device="cpu", step_fn=step)
        row = result.history[-1]
        assert row["only0"] == 1.0 and row["only1"] == 1.0 and row["rank"] == 0.5, row
        acc = evaluate(result.model, toy_data(), "test", device="cpu")["accuracy"]
        print("RANK_ACC", acc, flush=True)
    """)
    )
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    accs = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("RANK_ACC")}
    assert len(accs) == 1  # both ranks hold the same synchronised model and global metrics
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2


@dataclass
class ToyImages(ToyData):
    """The toy task as 1x2x4 images: the layout (channels_last) applies to them."""

    input_shape: tuple = (1, 2, 4)

    def prepare(self, x, train, generator=None):
        return x.float().reshape(-1, 1, 2, 4)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def test_channels_last_default_is_cpu_images_only():
    from netfit.engine import channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert channels_last(TrainConfig(), cpu, (1, 28, 28))
    assert not channels_last(TrainConfig(), cpu, (1, 40))  # signals have no channels_last layout
    assert not channels_last(TrainConfig(), gpu, (1, 28, 28))
    assert channels_last(TrainConfig(channels_last=True), gpu, (3, 32, 32))
    assert not channels_last(TrainConfig(channels_last=False), cpu, (1, 28, 28))
    with pytest.raises(TrainConfigError, match="channels_last must be a bool"):
        TrainConfig(channels_last="yes").validate()


def test_a_model_with_a_strided_pointwise_convolution_never_trains_channels_last_on_cpu(caplog):
    """oneDNN's channels_last backward of a strided 1x1 convolution with few input channels corrupts the heap on
    CPU; a ResNet's projection shortcut is one (and DNA's sliced ResNets make it narrow)."""
    from netfit.engine import channels_last
    from netfit.models import create_model

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resnet, plain = create_model("resnet18_cifar", num_classes=10, in_chans=1), small_cnn()
    assert not channels_last(TrainConfig(), cpu, (1, 28, 28), resnet)
    assert channels_last(TrainConfig(), cpu, (1, 28, 28), plain)
    assert channels_last(TrainConfig(channels_last=True), gpu, (1, 28, 28), resnet)  # cuDNN: no such fault
    assert not channels_last(TrainConfig(channels_last=True), cpu, (1, 28, 28), resnet)
    assert "channels_last is unsafe on CPU" in caplog.text
    caplog.clear()  # one training asked for channels_last says once that it does not use it
    toy = toy_data(n=64)
    shortcut = nn.Sequential(nn.Conv2d(1, 4, 1, stride=2), nn.Flatten(), nn.Linear(8, 4))
    train(shortcut, ToyImages(toy.train, toy.val, toy.test), CFG.replace(epochs=1, channels_last=True), progress=False)
    assert caplog.text.count("channels_last is unsafe on CPU") == 1


def test_the_layout_chosen_for_a_narrow_strided_pointwise_convolution_trains_without_fault():
    """The fault itself, in a fresh process with glibc's heap checks on: a [2, 4, 1, 1] stride-2 convolution
    trained in the layout netfit picks for it (in channels_last this aborted every time it was tried)."""
    script = textwrap.dedent(
        """
        import torch
        from torch import nn
        from netfit.engine import TrainConfig, channels_last
        from netfit.engine import channels_last_layout

        conv = nn.Conv2d(4, 2, 1, stride=2, bias=False)
        on = channels_last(TrainConfig(), torch.device("cpu"), (4, 8, 8), conv)
        with channels_last_layout(conv, on):
            x = torch.randn(8, 4, 8, 8, requires_grad=True)
            x = x.contiguous(memory_format=torch.channels_last) if on else x
            for _ in range(5):
                conv(x).sum().backward()
        print("layout", on)
        """
    )
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "layout False" in done.stdout


@pytest.mark.parametrize("on", [False, True])
def test_the_step_says_which_layout_the_model_trains_in(on):
    """``StepContext.channels_last`` is the engine's choice (frozen teachers follow it: CachedTeacher)."""
    toy = toy_data(n=64)
    seen = set()

    def record(ctx, logits):
        seen.add(ctx.channels_last)
        return logits.sum() * 0

    data = ToyImages(toy.train, toy.val, toy.test)
    train(small_cnn(), data, CFG.replace(epochs=1, channels_last=on), progress=False, extra_losses=[record])
    assert seen == {on}


def test_channels_last_trains_like_the_default_layout_and_resumes(tmp_path):
    """Training in channels_last computes what the default layout does (to float rounding), the model comes
    back in the default layout, and a killed run resumes exactly."""
    toy = toy_data(n=128)
    data = ToyImages(toy.train, toy.val, toy.test)
    cfg = CFG.replace(epochs=2)
    plain = train(small_cnn(), data, cfg.replace(channels_last=False), progress=False).model
    last = train(small_cnn(), data, cfg.replace(channels_last=True), progress=False).model
    conv = last[0].weight
    assert conv.is_contiguous() and conv.stride() == (9, 9, 3, 1)
    for a, b in zip(plain.state_dict().values(), last.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)
    with pytest.raises(KeyboardInterrupt):
        train(
            small_cnn(),
            data,
            cfg.replace(channels_last=True),
            checkpoint=tmp_path / "c.pt",
            progress=False,
            callbacks=[KillAt(1)],
        )
    resumed = train(
        small_cnn(), data, cfg.replace(channels_last=True), checkpoint=tmp_path / "c.pt", resume=True, progress=False
    ).model
    for a, b in zip(last.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
