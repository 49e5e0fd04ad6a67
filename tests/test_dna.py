"""DNA as a method: the search hits its budgets (condensing and expanding) on built-in and user-defined models,
grows its space only as far as they need, resumes, and refuses bad options. Its space: test_dna_growth.py; its
supernet's passes and steps: test_dna_supernet.py."""

import copy
import json
import types

import numpy as np
import pytest
import torch
from torch import nn

from _dna_models import elastic_supernet, layer_timer, small_model
from netfit.api import adapt
from netfit.budget import Budget
from netfit.cli import main
from netfit.distill import CachedTeacher
from netfit.engine.checkpoint import load_checkpoint
from netfit.engine.config import TrainConfig
from netfit.errors import NetfitError
from netfit.health import near_chance
from netfit.methods import dna as dna_module
from netfit.methods.base import Target
from netfit.methods.dna import DNA, dead_zone_loss
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow

FAST = {"epochs": 1, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_sampling_follows_the_markov_chains():
    net = elastic_supernet("resnet18_cifar")
    width, depth = torch.zeros(net.num_width_logits), torch.zeros(net.num_depth_logits)
    draws = [net.sample(width, depth, torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(1 <= u <= n for a in draws for u, n in zip(a.units, net.num_units))
    assert all(m <= d <= n for a in draws for m, d, n in zip(net.min_depths, a.depths, net.depths))
    # keep probability 1/2 per step: P(units >= 2) = 1/2, P(units >= 3) = 1/4
    first = np.array([a.units[0] for a in draws])
    assert 0.38 < (first >= 2).mean() < 0.62 and 0.14 < (first >= 3).mean() < 0.36
    again = net.sample(width, depth, torch.Generator().manual_seed(7))
    assert again == net.sample(width, depth, torch.Generator().manual_seed(7))
    sure = net.sample(torch.full_like(width, 30.0), torch.full_like(depth, 30.0), torch.Generator())
    assert sure == net.largest()


def test_dead_zone_loss():
    limit = 100.0
    for inside in (95.5, 97.0, 100.0):
        assert float(dead_zone_loss(torch.tensor(inside), limit)) == 0.0
    above = torch.tensor(150.0, requires_grad=True)
    dead_zone_loss(above, limit).backward()
    assert above.grad > 0
    below = torch.tensor(50.0, requires_grad=True)
    loss = dead_zone_loss(below, limit)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(np.log(95 / 50)) and below.grad < 0


def test_bad_options_are_refused():
    for bad in ({"grow_width": 0.5}, {"grow_width": 0.0}, {"grow_depth": -1.0}):
        with pytest.raises(NetfitError, match="grow_width"):
            DNA(**bad)
    with pytest.raises(NetfitError, match="arch_lr"):
        DNA(arch_lr=0)
    with pytest.raises(NetfitError, match="search_lr_scale"):
        DNA(search_lr_scale=0)
    with pytest.raises(NetfitError, match="kd_teacher"):
        DNA(kd_teacher="teacher")
    with pytest.raises(NetfitError, match="inplace_teacher"):
        DNA(inplace_teacher="teacher")
    with pytest.raises(NetfitError, match="finetune_warmup"):
        DNA(finetune_warmup=2)
    for name in ("finetune_clip", "search_clip"):
        with pytest.raises(NetfitError, match=name):
            DNA(**{name: 0})
    for tail in (0.0, 1.0):
        with pytest.raises(NetfitError, match="soft_tail"):
            DNA(soft_tail=tail)
    for name in ("sample_pass", "soft_pass"):
        with pytest.raises(NetfitError, match=name):
            DNA(**{name: "masked"})
    with pytest.raises(NetfitError, match="sample_pass"):
        DNA(sample_pass="joint")  # an architecture-pass way only
    with pytest.raises(NetfitError, match="joint"):
        DNA(soft_pass="joint", one_level=False)
    DNA(soft_pass="joint")  # with sample_pass auto: whichever way auto picks for the samples
    DNA(soft_pass="joint", sample_pass="batched")  # the whole step in one masked pass
    for fraction in (0, 1.5):
        with pytest.raises(NetfitError, match="arch_batch"):
            DNA(arch_batch=fraction)


def test_search_and_inherited_fine_tunes_clip_the_gradient_unless_training_settings_do():
    config = TrainConfig(epochs=4)
    assert DNA()._finetune_settings(config) == {"warmup_epochs": 1.0, "grad_clip": 10.0}
    assert DNA(finetune_clip=None)._finetune_settings(config) == {"warmup_epochs": 1.0}
    assert DNA()._finetune_settings(TrainConfig(epochs=4, grad_clip=2.0)) == {"warmup_epochs": 1.0}  # the user's
    assert DNA()._search_settings(config)["grad_clip"] == 20.0
    assert "grad_clip" not in DNA(search_clip=None)._search_settings(config)
    assert "grad_clip" not in DNA()._search_settings(TrainConfig(epochs=4, grad_clip=2.0))  # the user's


def test_search_runs_every_epoch_whatever_the_training_settings_keep_or_stop_on():
    """The search's per-epoch validation accuracy is the raw largest network's: nothing to keep weights by or
    stop on (the logits are the last epoch's; earlier weights would not match them)."""
    config = TrainConfig(epochs=4, lr=0.1, keep_best=True, early_stop_patience=1)
    settings = DNA(search_lr_scale=0.5, search_clip=None)._search_settings(config)
    assert settings == {"lr": 0.05, "keep_best": False, "early_stop_patience": None}
    assert not config.replace(**settings).keep_best
    # nothing evaluated with the frozen seed as in-place teacher (the largest network never trains whole)
    frozen = DNA()._inplace_teacher(nn.Linear(2, 2))
    assert DNA._search_eval_split(config, frozen) is None and DNA._search_eval_split(config, None) == "val"
    assert DNA._search_eval_split(config.replace(schedule="plateau", early_stop_patience=None), frozen) == "val"


@pytest.fixture(scope="module")
def dna_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("dna")
    options = {"search_epochs": 2, "warmup_epochs": 1, "units": 8, "search_lr_scale": 0.2, "kd_teacher": "best"}
    return adapt("cnn_small", digits, "50%,25%,150%", "dna", out=out, method_options=options, **FAST)


def test_dna_hits_every_budget_in_one_search(dna_run):
    summary = dna_run.summary
    seed_macs = summary["seed"]["macs"]
    assert [c["id"] for c in summary["candidates"]] == ["dna-50pct", "dna-25pct", "dna-150pct"]
    for cand, ratio in zip(summary["candidates"], (0.5, 0.25, 1.5)):
        assert 0.95 * ratio * seed_macs <= cand["macs"] <= ratio * seed_macs
        assert not near_chance(cand["accuracy"], 10)  # trained: above chance even with one fine-tune epoch
    log = _log(dna_run.out)
    assert sum(1 for e in log if e["event"] == "dna-arch") == 2 * 2  # per search epoch and searched budget
    (space,) = [e for e in log if e["event"] == "dna-space"]  # one supernet for the budgets below the seed
    assert (space["grow_width"], space["grow_depth"]) == (1.0, 0.0)  # 150% is widened, not searched
    assert space["inplace_teacher"] == "seed"
    search_epochs = [e for e in log if e["event"] == "epoch" and e["phase"] == "dna-search"]
    assert len(search_epochs) == 2 and not any("val_acc" in e for e in search_epochs)
    assert [c["info"].get("widened", False) for c in summary["candidates"]] == [False, False, True]


def test_dna_grows_its_space_only_as_far_as_a_budget_needs():
    """By default the searched space is the seed (budgets above it are widened, not searched); with a growth
    option a budget above the seed widens the space until its widest network reaches that budget (capped), an
    explicit option as far as it says."""
    assert not DNA().searches_expansion and DNA(grow_depth=0.0).searches_expansion
    assert DNA().growth([500, 1000], 1000) == (1.0, 0.0)
    assert DNA().growth([500, 1500], 1000) == (1.0, 0.0)
    assert DNA(grow_depth=0.0).growth([500, 1500], 1000) == pytest.approx((1.5**0.5, 0.0))
    assert DNA(grow_depth=0.0).growth([1210], 1000) == pytest.approx((1.1, 0.0))
    assert DNA(grow_depth=0.0).growth([500, 9000], 1000) == (2.0, 0.0)
    assert DNA(grow_width=1.2).growth([500], 1000) == (1.2, 0.0)
    assert DNA(grow_depth=1.0).growth([4000], 1000) == (2.0, 1.0)


def test_the_largest_searched_budget_gets_a_companion_up_to_half_the_seed():
    """A companion at ``companion`` x the largest searched budget joins the search where it is at most half the
    seed; none above that, in a grown space or when switched off."""
    budget = Budget.parse("10%")
    targets = [Target(budget, 50.0), Target(budget, 100.0)]
    (companion,) = DNA().companions(targets, 1000)
    assert companion.limit == 200.0 and companion.budget is budget
    assert DNA(companion=3).companions(targets, 1000)[0].limit == 300.0
    assert DNA().companions(targets, 400)[0].limit == 200.0  # exactly half the seed
    assert DNA().companions(targets, 399) == [] and DNA().companions([], 1000) == []
    assert DNA(companion=0).companions(targets, 1000) == []
    assert DNA(grow_width=1.5).companions(targets, 1000) == []
    with pytest.raises(NetfitError, match="companion"):
        DNA(companion=0.5)


def test_a_companion_is_searched_never_returned(tmp_path, digits):
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4}
    result = adapt("cnn_small", digits, "20%", "dna", out=tmp_path / "c", method_options=options, **FAST)
    (cand,) = result.summary["candidates"]
    assert cand["id"] == "dna-20pct" and cand["macs"] <= 0.2 * result.summary["seed"]["macs"]
    log = _log(tmp_path / "c")
    (companion,) = [e for e in log if e["event"] == "dna-companion"]
    assert companion["limits"] == [pytest.approx(0.4 * result.summary["seed"]["macs"])]
    assert len([e for e in log if e["event"] == "dna-arch"]) == 2  # both budgets searched, one epoch


def test_dna_widens_a_budget_above_the_seed_as_uniform_does(tmp_path, digits):
    """Default: a budget above the seed is the seed's widest uniform widening within it (uniform's
    architecture), and no search runs when every budget is above the seed."""
    runs = {
        name: adapt("cnn_small", digits, "150%", name, out=tmp_path / name, **FAST, method_options=opts)
        for name, opts in (("dna", {}), ("uniform", {"kd": True}))  # KD: the seed becomes a frozen teacher
    }
    (dna,), (uni,) = (r.summary["candidates"] for r in runs.values())
    assert dna["info"]["widened"] and dna["info"]["width_mult"] == uni["info"]["width_mult"] > 1
    assert dna["arch"] == uni["arch"] and dna["macs"] == uni["macs"] <= 1.5 * runs["dna"].summary["seed"]["macs"]
    assert not [e for e in _log(runs["dna"].out) if e["event"] in ("dna-space", "dna-arch")]


def test_dna_searches_expansion_in_a_grown_space_when_asked(tmp_path, digits):
    options = {"grow_width": 1.3, "search_epochs": 1, "warmup_epochs": 0, "units": 4}
    result = adapt("cnn_small", digits, "150%", "dna", out=tmp_path / "g", method_options=options, **FAST)
    (cand,) = result.summary["candidates"]
    assert "widened" not in cand["info"] and cand["macs"] <= 1.5 * result.summary["seed"]["macs"]
    (space,) = [e for e in _log(tmp_path / "g") if e["event"] == "dna-space"]
    assert space["grow_width"] == 1.3 and [e for e in _log(tmp_path / "g") if e["event"] == "dna-arch"]


def test_default_inplace_teacher_is_a_frozen_copy_of_the_seed():
    seed = nn.Linear(3, 2)
    frozen = DNA()._inplace_teacher(seed)
    assert isinstance(frozen, CachedTeacher) and frozen.teacher is not seed
    assert not any(p.requires_grad for p in frozen.teacher.parameters()) and seed.weight.requires_grad
    assert DNA(inplace_teacher="largest")._inplace_teacher(seed) is None


def test_dna_searches_at_its_own_learning_rate(dna_run):
    lr = {e["phase"]: e["lr"] for e in _log(dna_run.out) if e["event"] == "epoch" and e["epoch"] == 1}
    run_lr = dna_run.summary["settings"]["train"]["lr"]
    # cosine over 2 epochs: about half the peak at the end of the first (0.5 x run_lr at the run's own lr)
    assert lr["dna-search"] == pytest.approx(0.5 * 0.2 * run_lr, rel=0.15)


def test_dna_fine_tunes_recalibrated_subnetworks_with_a_warm_up(dna_run):
    """Each searched sub-network is judged after batch-norm recalibration (recorded, far above chance) and its
    fine-tune starts from a warm-up instead of the full learning rate, with its gradient norm clipped."""
    log = _log(dna_run.out)
    inherited = {e["id"]: e for e in log if e["event"] == "inherited"}
    assert set(inherited) == {"dna-50pct", "dna-25pct", "dna-150pct"}
    for cand in dna_run.summary["candidates"]:
        assert cand["info"]["val_acc_inherited"] == inherited[cand["id"]]["val_acc"]
        assert not near_chance(cand["info"]["val_acc_inherited"], 10)
    epochs = dna_run.summary["settings"]["train"]["epochs"]
    for phase, warmup, clip in (("dna-50pct", 0.25 * epochs, 10.0), ("dna-search", 0.0, 20.0)):
        config = load_checkpoint(dna_run.out / "ckpt" / f"{phase}.pt")["config"]
        assert (config["warmup_epochs"], config["grad_clip"]) == (warmup, clip)  # finetune_clip, search_clip


def test_dna_distils_from_the_better_of_seed_and_largest_on_validation(dna_run):
    (event,) = [e for e in _log(dna_run.out) if e["event"] == "dna-kd-teacher"]
    scores = event["val_accuracy"]
    assert set(scores) == {"seed", "largest"} and all(0.1 < a <= 1 for a in scores.values())
    assert event["teacher"] == ("largest" if scores["largest"] > scores["seed"] else "seed")


def test_largest_teacher_is_a_frozen_copy_that_leaves_the_supernet_trainable():
    model, shape = small_model("resnet18_cifar")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    teacher = DNA(kd_teacher="largest")._kd_teacher(net, types.SimpleNamespace(model=model), None, None, None)
    x = torch.randn(2, *shape)
    torch.testing.assert_close(teacher(x), net.model.eval()(x))
    supernet = {p.data_ptr() for p in net.model.parameters()}
    assert all(not p.requires_grad and p.data_ptr() not in supernet for p in teacher.teacher.parameters())
    assert all(p.requires_grad for p in net.model.parameters())


def test_seed_teacher_of_the_fine_tunes_is_the_search_teacher_cache():
    """The search's frozen seed has remembered every training sample's logits; the fine-tunes reuse them."""
    model, _ = small_model("cnn_small")
    frozen = CachedTeacher(copy.deepcopy(model))
    seed = types.SimpleNamespace(model=model)
    assert DNA()._kd_teacher(None, seed, None, None, frozen) is frozen
    fresh = DNA()._kd_teacher(None, seed, None, None, None)
    assert isinstance(fresh, CachedTeacher) and fresh.teacher is model


def test_dna_expands_above_the_seed(dna_run):
    big = dna_run.summary["candidates"][2]
    seed = dna_run.summary["seed"]
    assert big["macs"] > seed["macs"] and big["params"] > seed["params"]
    assert big["info"]["layers_wider_than_seed"] > 0 or big["info"]["stages_deeper_than_seed"] > 0


def test_dna_searches_latency_budgets_on_the_measured_table(tmp_path, digits, monkeypatch):
    """With a latency budget DNA measures a per-layer table (here on a deterministic stand-in device), searches
    on it and meets the measured budget; the table is kept in the run directory for a resumed search."""
    from netfit import cost

    def fake_latency(model, shape, device="cpu", backend="torch", **_):
        assert backend == "onnxruntime"  # the budget's own backend times the layers
        return types.SimpleNamespace(median_ms=layer_timer(model, shape))

    monkeypatch.setattr(cost, "measure_latency", fake_latency)
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4}
    result = adapt(
        "cnn_small", digits, "40% latency@ort-cpu", "dna", out=tmp_path / "r", method_options=options, **FAST
    )
    (cand,) = result.summary["candidates"]
    limit = 0.4 * result.summary["seed"]["latency_ms"]
    assert cand["within_budget"] and 0.9 * limit <= cand["latency_ms"] <= limit
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    (table,) = [e for e in log if e["event"] == "dna-latency-table"]
    assert table["timed_layers"] > 0 and table["scale"] == pytest.approx(1.0, rel=1e-3)
    assert [e for e in log if e["event"] == "dna-arch"]  # searched (where the search ends is no contract)
    assert (tmp_path / "r" / "dna-latency-table.json").exists()


def test_dna_adapts_a_user_model(tmp_path, digits):
    class Digits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.fc = nn.Linear(16 * 8 * 8, 10)

        def forward(self, x):
            h = self.body(x)
            return self.fc(torch.flatten(torch.relu(h + self.res(h)), 1))

    result = adapt(
        Digits(),
        digits,
        "40%",
        "dna",
        out=tmp_path / "u",
        train_seed=True,
        method_options={"search_epochs": 1, "warmup_epochs": 0, "units": 4},
        **FAST,
    )
    (cand,) = result.summary["candidates"]
    limit = 0.4 * result.summary["seed"]["macs"]
    # one coupled group of 16 channels: 9 channels cost 0.345 x the seed, 10 channels 0.418 x (over budget)
    assert cand["macs"] == pytest.approx(0.345 * result.summary["seed"]["macs"], rel=0.01) and cand["macs"] <= limit
    # its residual block made it a staged network: one seed block, one grown (identity) block, the seed's kept
    assert cand["arch"]["family"] == "staged_graph" and cand["info"]["depths"] == [1]


def test_dna_resumes_an_interrupted_search_to_the_same_result(tmp_path, digits, monkeypatch):
    options = {"search_epochs": 3, "warmup_epochs": 1, "units": 4}
    settings = {**FAST, "seed_epochs": 1}
    plain = adapt("cnn_small", digits, "30%", "dna", out=tmp_path / "a", method_options=options, **settings)

    original = dna_module._ArchLog.on_epoch_end

    def interrupt(self, state, metrics):
        original(self, state, metrics)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(dna_module._ArchLog, "on_epoch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", digits, "30%", "dna", out=tmp_path / "b", method_options=options, **settings)
    monkeypatch.setattr(dna_module._ArchLog, "on_epoch_end", original)
    resumed = adapt(
        "cnn_small", digits, "30%", "dna", out=tmp_path / "b", method_options=options, resume=True, **settings
    )
    (a,), (b,) = plain.summary["candidates"], resumed.summary["candidates"]
    assert a["info"] == b["info"] and a["macs"] == b["macs"]
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    # the interrupted session's two search epochs count in the resumed run's search time
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    second_start = [i for i, e in enumerate(log) if e["event"] == "start"][1]
    killed_epochs = sum(e["seconds"] for e in log[:second_start] if e["event"] == "epoch")
    timing = resumed.summary["timing"]
    assert plain.summary["timing"]["interrupted_sessions_seconds"] == 0.0
    assert timing["interrupted_sessions_seconds"] >= killed_epochs > 0
    assert timing["search_seconds"] > timing["interrupted_sessions_seconds"]


def test_cli_adapt_with_dna(tmp_path, capsys):
    args = ["adapt", "--model", "cnn_small", "--data", "digits", "--budget", "50%", "--method", "dna"]
    args += ["--epochs", "1", "--seed-epochs", "1", "-x", "search_epochs=1", "-x", "units=4"]
    args += ["--out", str(tmp_path / "cli"), "--quiet"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "dna-50pct" in captured.out
    (space,) = [e for e in _log(tmp_path / "cli") if e["event"] == "dna-space"]
    assert space["inplace_teacher"] == "seed"  # the default where no budget grows the space
