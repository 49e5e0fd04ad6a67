"""The training engine: learning, resume equivalence, NaN detection, hooks, safe checkpoints, DDP."""

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netfit.engine import Callback, RunLog, StepOutput, TrainConfig, evaluate, load_checkpoint, train
from netfit.errors import CheckpointError, NetfitError, TrainingError


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


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_equals_uninterrupted(tmp_path, optimizer):
    data, cfg = toy_data(), CFG.replace(optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 0.01)
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
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    train(mlp(), toy_data(), CFG.replace(epochs=1), checkpoint=tmp_path / "ok.pt", progress=False)
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "ok.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
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
    assert float(scale) != 1.0 and "a" in result.history[0]
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


def test_plateau_early_stop_keep_best(tmp_path):
    data = toy_data()
    cfg = CFG.replace(
        epochs=40,
        schedule="plateau",
        plateau_patience=1,
        plateau_factor=0.5,
        early_stop_patience=2,
        keep_best=True,
        lr=0.5,
    )
    result = train(mlp(), data, cfg, checkpoint=tmp_path / "c.pt", progress=False)
    assert len(result.history) < 40  # stopped on the plateau
    lrs = [r["lr"] for r in result.history]
    assert min(lrs) < 0.5  # reduced at least once
    assert evaluate(result.model, data, "val")["accuracy"] == pytest.approx(result.best_val_acc)
    again = train(mlp(), data, cfg, checkpoint=tmp_path / "c.pt", resume=True, progress=False)
    assert len(again.history) == len(result.history)


def test_log_has_one_event_per_epoch(tmp_path):
    log = RunLog(tmp_path / "log.jsonl")
    train(mlp(), toy_data(), CFG, log=log, progress=False, desc="phase")
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all('"event": "epoch"' in line and '"phase": "phase"' in line for line in lines)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"optimizer": "adam9"}, "optimizer"),
        ({"schedule": "x"}, "schedule"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(NetfitError, match=message):
        TrainConfig().replace(**change)


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_engine import toy_data, mlp, CFG
        from netfit.engine import train, evaluate
        result = train(mlp(), toy_data(), CFG.replace(epochs=2), checkpoint={str(tmp_path / "c.pt")!r},
                       progress=False, device="cpu")
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
