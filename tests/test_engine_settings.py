"""Training settings: validation, the plateau schedule, early stop, keep-best and precise BN, each surviving a
resume."""

import copy

import pytest
import torch
from torch import nn

from _toy import CFG, KillAt, mlp, toy_data
from netfit.engine import Callback, StepOutput, TrainConfig, TrainConfigError, load_checkpoint, train
from netfit.engine.config import LrSchedule
from netfit.engine.norms import recalibrate_norms
from netfit.errors import NetfitError


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
