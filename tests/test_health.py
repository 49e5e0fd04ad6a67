"""Sound candidates: batch-norm recalibration of inherited sub-networks, flagged and never-selected broken
candidates, retried diverged fine-tunes."""

import json
import types

import numpy as np
import pytest
import torch
from torch import nn

from netfit import api
from netfit.api import adapt
from netfit.cli import print_result
from netfit.engine.norms import recalibrate_norms
from netfit.errors import TrainingError
from netfit.health import candidate_warning, fell_far_below, near_chance
from netfit.methods import METHODS, Candidate
from netfit.methods.common import finetune
from netfit.models import create_model
from netfit.space.elastic import Arch, ElasticNet
from netfit.space.grow import grow

FAST = {"epochs": 1, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _one_batch_data(x: torch.Tensor):
    """A stand-in data bundle whose training split is exactly ``x`` (no preprocessing)."""
    split = types.SimpleNamespace(tensors=(x, torch.zeros(len(x), dtype=torch.long)))
    return types.SimpleNamespace(train=split, prepare=lambda batch, train: batch)


def test_recalibration_gives_a_subnetwork_the_statistics_of_its_sliced_train_mode_pass():
    """The materialised sub-network inherits the supernet's running statistics, so in eval mode it computes
    something else than the sliced sub-network in train mode (batch statistics) did; after recalibration on
    the same samples its eval output matches that pass."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    net = ElasticNet(
        grow(create_model("cnn_small", in_chans=1), shape, 1.5, 0.0, np.random.default_rng(0)), shape, units=4
    )
    x = torch.randn(256, *shape)
    net.model.train()
    with torch.no_grad():
        for _ in range(20):  # running statistics of the FULL network, on other data
            net.model(2.0 * torch.randn(64, *shape) + 1.0)
    arch = Arch([2] * len(net.gated))
    with torch.no_grad():
        sliced_train_mode = net.run_sliced(arch, x)
    sub = net.materialize(arch).eval()
    with torch.no_grad():
        before = sub(x)
    assert not torch.allclose(before, sliced_train_mode, atol=1e-2)
    assert recalibrate_norms(sub, _one_batch_data(x), samples=len(x), batch_size=len(x)) > 0
    assert not sub.training  # the model's mode is left as it was
    with torch.no_grad():
        after = sub(x)
    # running variance is unbiased (n / (n - 1)), batch normalisation biased: equal up to that factor
    assert torch.allclose(after, sliced_train_mode, rtol=1e-2, atol=1e-2)


def test_recalibration_is_seeded_and_leaves_weights_alone():
    shape = (1, 8, 8)
    data = _one_batch_data(torch.randn(300, *shape))
    a, b = create_model("cnn_small", in_chans=1), create_model("cnn_small", in_chans=1)
    b.load_state_dict(a.state_dict())
    weights = {k: v.clone() for k, v in a.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_norms(a, data, samples=200, seed=3)
    recalibrate_norms(b, data, samples=200, seed=3)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
        if key in weights:
            assert torch.equal(value, weights[key]), key


def test_recalibration_leaves_norms_off_the_forward_path_alone():
    class Exit(nn.Module):  # a second branch that this forward never runs, like the blocks past an ODN exit
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.used(x)

    model = Exit()
    for norm in (model.used, model.unused):
        norm.running_mean.fill_(5.0)
        norm.num_batches_tracked.fill_(7)
    recalibrate_norms(model, _one_batch_data(torch.randn(300, 4)), samples=200)
    assert torch.equal(model.unused.running_mean, torch.full((4,), 5.0)) and model.unused.num_batches_tracked == 7
    assert model.used.running_mean.abs().max() < 1.0 and model.used.num_batches_tracked == 2


def test_warnings_name_near_chance_and_far_below_seed():
    assert near_chance(0.12, 10) and not near_chance(0.5, 10)
    assert "near chance" in candidate_warning(0.1, 0.98, 10)
    assert "far below the seed" in candidate_warning(0.45, 0.98, 10)
    assert candidate_warning(0.9, 0.98, 10) is None
    assert candidate_warning(0.6, None, 10) is None
    assert fell_far_below(0.5, 0.98, 10) and not fell_far_below(0.9, 0.98, 10)
    assert not fell_far_below(0.1, 0.1, 10)  # nothing to lose: a network trained from scratch starts at chance


@pytest.fixture
def broken_method():
    """A method returning one sound candidate (the seed) and one broken one (freshly initialised, untrained)."""

    class Broken:
        name, description = "broken-test", "test only"

        def search(self, seed, data, targets, run):
            fresh = create_model("cnn_small", num_classes=data.num_classes, in_chans=1)
            for m in fresh.modules():  # constant logits: one class for every sample
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.zeros_(m.weight)
            return [Candidate("sound", seed.model, targets[0]), Candidate("broken", fresh, targets[0])]

    METHODS._items["broken-test"] = Broken
    yield "broken-test"
    METHODS._items.pop("broken-test")


def test_a_chance_level_candidate_is_flagged_everywhere_and_never_selected(tmp_path, digits, broken_method, capsys):
    result = adapt("cnn_small", digits, "200%", broken_method, out=tmp_path / "r", **FAST)
    rows = {c["id"]: c for c in result.summary["candidates"]}
    assert rows["broken"]["warning"] and "chance" in rows["broken"]["warning"]
    assert rows["sound"]["warning"] is None
    assert result.summary["selected"] == "sound"
    assert "(flagged)" in (tmp_path / "r" / "report.md").read_text()
    assert any(e["event"] == "warning" and e["id"] == "broken" for e in _log(tmp_path / "r"))
    capsys.readouterr()
    print_result(result.summary)
    shown = capsys.readouterr().out
    assert "broken is near chance" in shown and "! flagged" in shown


def test_selection_prefers_a_sound_candidate_over_a_more_accurate_flagged_one(
    tmp_path, digits, broken_method, monkeypatch
):
    """Selection goes by the flag first: here the accurate candidate is (artificially) the flagged one."""
    monkeypatch.setattr(api, "candidate_warning", lambda acc, seed, n: "flagged for the test" if acc > 0.5 else None)
    result = adapt("cnn_small", digits, "200%", broken_method, out=tmp_path / "r", **FAST)
    rows = {c["id"]: c for c in result.summary["candidates"]}
    assert rows["sound"]["accuracy"] > rows["broken"]["accuracy"] and rows["sound"]["warning"]
    assert result.summary["selected"] == "broken"  # the only sound candidate within the budget


def test_a_diverged_finetune_is_retried_at_a_lower_learning_rate(tmp_path, digits, monkeypatch):
    """A fine-tune whose loss blows up is retried once from the same starting weights at a tenth of the rate,
    logged, and the retry's weights are returned. (The blow-up is injected: whether a given absurd learning
    rate overflows depends on the torch build and thread count.)"""
    model = create_model("cnn_small", num_classes=10, in_chans=1)
    run = api._new_run(tmp_path, api._train_config(1, 0, {"batch_size": 64, "lr": 0.5}), "cpu", digits, False, False)
    train = run.train

    def diverging_first_try(model, data, phase, **kwargs):
        if phase == "ft":
            raise TrainingError("loss became inf at epoch 1 step 3 (terms: ce=inf)")
        return train(model, data, phase, **kwargs)

    monkeypatch.setattr(run, "train", diverging_first_try)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, digits, run, "ft", None)
    log = _log(tmp_path)
    retries = [e for e in log if e["event"] == "finetune-retry"]
    assert [(e["id"], e["lr"]) for e in retries] == [("ft", pytest.approx(0.05))]
    assert "inf" in retries[0]["reason"]
    epochs = [e for e in log if e["event"] == "epoch"]
    assert epochs and {e["phase"] for e in epochs} == {"ft-retry"}
    assert any(not torch.equal(v, start[k]) for k, v in tuned.state_dict().items())  # the retry trained it


def test_a_sound_finetune_is_not_retried(tmp_path, digits):
    model = create_model("cnn_small", num_classes=10, in_chans=1)
    run = api._new_run(tmp_path, api._train_config(1, 0, {"batch_size": 64}), "cpu", digits, False, False)
    finetune(model, digits, run, "ft", None)
    assert not any(e["event"] == "finetune-retry" for e in _log(tmp_path))
