"""The training engine: learning, resume equivalence, NaN detection, hooks, safe checkpoints, DDP."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from _toy import CFG, KillAt, ToyData, mlp, toy_data
from netfit.engine import (
    Callback,
    RunLog,
    StepOutput,
    TrainConfigError,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)
from netfit.errors import CheckpointError, DataError, TrainingError


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


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from _toy import toy_data, mlp, CFG
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
