"""End-to-end runs of the pipeline on the offline digits data with tiny settings."""

import copy
import json

import pytest
import torch
from torch import nn

from netfit.api import adapt
from netfit.cli import print_result
from netfit.errors import BudgetInfeasibleError, CheckpointError, NetfitError
from netfit.export import load_model
from netfit.methods.base import METHODS, Candidate
from netfit.methods.uniform import Uniform

FAST = {"epochs": 1, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("uniform")
    return adapt("cnn_small", digits, "50%,25%", "uniform", out=out, **FAST)


def test_result_contract(uniform_run):
    summary = json.loads((uniform_run.out / "result.json").read_text())
    assert set(summary) >= {
        "netfit_version",
        "method",
        "model",
        "data",
        "budget",
        "seed",
        "candidates",
        "pareto",
        "selected",
    }
    assert summary["budget"]["metric"] == "macs" and summary["budget"]["spec"] == "50%"
    assert summary["seed"]["flops"] == 2 * summary["seed"]["macs"]
    assert all(isinstance(summary["seed"][k], int) for k in ("macs", "flops", "params"))
    assert len(summary["candidates"]) == 2
    for row in summary["candidates"]:
        assert set(row) >= {"id", "arch", "macs", "flops", "params", "accuracy", "within_budget", "weights"}
        assert row["flops"] == 2 * row["macs"] and 0.0 <= row["accuracy"] <= 1.0
        assert all(isinstance(row[k], int) for k in ("macs", "flops", "params"))
        assert (uniform_run.out / row["weights"] / "model.safetensors").exists()
    assert set(summary["pareto"]) <= {r["id"] for r in summary["candidates"]}
    for name in ("report.md", "front.png", "log.jsonl", "run.json"):
        assert (uniform_run.out / name).stat().st_size > 0


def test_budgets_met(uniform_run):
    summary = uniform_run.summary
    seed_macs = summary["seed"]["macs"]
    for row, fraction in zip(summary["candidates"], (0.5, 0.25)):
        assert row["within_budget"]
        assert row["macs"] <= fraction * seed_macs
        assert row["macs"] >= 0.8 * fraction * seed_macs  # uniform takes the largest width that fits


def test_saved_models_reload_identically(uniform_run, digits):
    x = digits.prepare(digits.test.tensors[0][:16], train=False)
    for cid, model in uniform_run.models.items():
        loaded = load_model(uniform_run.out / cid)
        with torch.no_grad():
            assert torch.equal(loaded(x), model.eval()(x))


def test_selected_is_best_within_budget(uniform_run):
    summary = uniform_run.summary
    fitting = [r for r in summary["candidates"] if r["macs"] <= summary["budget"]["limit"]]
    assert summary["selected"] == max(fitting, key=lambda r: r["val_accuracy"])["id"]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in summary["candidates"])
    assert uniform_run.selected_model is uniform_run.models[summary["selected"]]


def test_each_budget_names_its_best_candidate(uniform_run):
    summary = uniform_run.summary
    assert [b["spec"] for b in summary["budgets"]] == ["50%", "25%"]
    for budget in summary["budgets"]:
        fitting = [r for r in summary["candidates"] if r["macs"] <= budget["limit"]]
        assert budget["selected"] == max(fitting, key=lambda r: r["val_accuracy"])["id"]
    assert summary["budgets"][0]["selected"] == summary["selected"]
    report = (uniform_run.out / "report.md").read_text()
    assert all(f"'{b['spec']}' = " in report and b["selected"] in report for b in summary["budgets"])


class SeedCopy:
    """A test method: one candidate, a copy of the seed (it meets a 150% budget, not a 50% one)."""

    name, description = "seed-copy", "the seed itself"

    def search(self, seed, data, targets, run):
        return [Candidate("copy", copy.deepcopy(seed.model), targets[-1])]


def test_a_budget_without_candidate_is_said(tmp_path, digits, monkeypatch, capsys):
    monkeypatch.setitem(METHODS._items, SeedCopy.name, SeedCopy)
    result = adapt("cnn_small", digits, "50%,150%", SeedCopy.name, out=tmp_path / "r", **FAST)
    assert [b["selected"] for b in result.summary["budgets"]] == [None, "copy"]
    assert result.summary["selected"] is None
    events = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    warnings = [e for e in events if e["event"] == "warning" and e.get("budget") == "50%"]
    assert len(warnings) == 1 and "no candidate within budget '50%'" in warnings[0]["message"]
    assert "no candidate within it" in (tmp_path / "r" / "report.md").read_text()
    print_result(result.summary)
    printed = capsys.readouterr().out
    assert printed.count("'50%'") == 1 and "no candidate within it" in printed  # said once, on the budget's line


class TwoCopies:
    """A test method: two copies of the seed, tagged so that a scripted evaluation can tell them apart."""

    name, description = "two-copies", "the seed twice"

    def search(self, seed, data, targets, run):
        copies = [copy.deepcopy(seed.model) for _ in range(2)]
        for tag, model in zip("ab", copies):
            model.tag = tag
        return [Candidate(tag, model, targets[0]) for tag, model in zip("ab", copies)]


def test_selection_reads_validation_not_test_accuracy(tmp_path, digits, monkeypatch):
    """a is the better on test, b on validation: b is selected, and each split's number is reported as measured."""
    import netfit.api

    scripted = {("a", "test"): 0.9, ("a", "val"): 0.6, ("b", "test"): 0.8, ("b", "val"): 0.7}
    measured = netfit.api.evaluate

    def evaluate(model, data, split, **kwargs):
        tag = getattr(model, "tag", None)
        return {"accuracy": scripted[tag, split]} if tag else measured(model, data, split, **kwargs)

    monkeypatch.setattr(netfit.api, "evaluate", evaluate)
    monkeypatch.setitem(METHODS._items, TwoCopies.name, TwoCopies)
    result = adapt("cnn_small", digits, "150%", TwoCopies.name, out=tmp_path / "r", **FAST)
    rows = {r["id"]: r for r in result.summary["candidates"]}
    assert (rows["a"]["accuracy"], rows["a"]["val_accuracy"]) == (0.9, 0.6)
    assert result.summary["selected"] == "b" and result.summary["pareto"] == ["a"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "**b** (selected)" in report and "| 60.00% |" in report


def test_finished_run_refuses_overwrite_and_resumes(uniform_run, digits):
    with pytest.raises(NetfitError, match="already holds a run"):
        adapt("cnn_small", digits, "50%,25%", "uniform", out=uniform_run.out, **FAST)
    with pytest.raises(CheckpointError, match="settings differ"):
        adapt("cnn_small", digits, "50%", "uniform", out=uniform_run.out, resume=True, **FAST)
    again = adapt("cnn_small", digits, "50%,25%", "uniform", out=uniform_run.out, resume=True, **FAST)
    assert [r["accuracy"] for r in again.summary["candidates"]] == [
        r["accuracy"] for r in uniform_run.summary["candidates"]
    ]


def test_interrupted_run_resumes_to_same_result(tmp_path, digits, monkeypatch, uniform_run):
    real_search = Uniform.search

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Uniform, "search", crash)
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", digits, "50%,25%", "uniform", out=tmp_path, **FAST)
    assert (tmp_path / "ckpt" / "seed.pt").exists() and not (tmp_path / "result.json").exists()
    monkeypatch.setattr(Uniform, "search", real_search)
    resumed = adapt("cnn_small", digits, "50%,25%", "uniform", out=tmp_path, resume=True, **FAST)
    straight = uniform_run.summary
    assert resumed.summary["seed"] == straight["seed"]
    assert [(r["macs"], r["accuracy"]) for r in resumed.summary["candidates"]] == [
        (r["macs"], r["accuracy"]) for r in straight["candidates"]
    ]


def test_random_method(tmp_path, digits):
    result = adapt("cnn_small", digits, "40%", "random", out=tmp_path, method_options={"samples": 2}, **FAST)
    rows = result.summary["candidates"]
    assert len(rows) == 2 and all(r["within_budget"] for r in rows)
    assert rows[0]["arch"] != rows[1]["arch"]


def test_depth_variant(tmp_path, digits):
    result = adapt("cnn_small", digits, "80%", "uniform", out=tmp_path, method_options={"variant": "depth"}, **FAST)
    (row,) = result.summary["candidates"]
    assert row["within_budget"]
    assert sum(len(s["blocks"]) for s in row["arch"]["stages"]) < 4  # cnn_small has 2 stages x 2 blocks


@pytest.mark.parametrize("variant", ["width", "depth"])
def test_uniform_scales_up_to_a_budget_above_the_seed(tmp_path, digits, variant):
    options = {"variant": variant}
    result = adapt("cnn_small", digits, "160%", "uniform", out=tmp_path / "grow", method_options=options, **FAST)
    seed = result.summary["seed"]
    (row,) = result.summary["candidates"]
    assert row["within_budget"] and 1.4 * seed["macs"] < row["macs"] <= 1.6 * seed["macs"]
    if variant == "depth":
        assert sum(len(s["blocks"]) for s in row["arch"]["stages"]) == 6  # +1 identity block per stage
    kept = adapt(
        "cnn_small", digits, "160%", "uniform", out=tmp_path / "keep", method_options={**options, "grow": False}, **FAST
    )
    assert kept.summary["candidates"][0]["macs"] == seed["macs"]


def test_infeasible_budget_says_range(tmp_path, digits):
    with pytest.raises(BudgetInfeasibleError, match="reachable range"):
        adapt("cnn_small", digits, "10 macs", "uniform", out=tmp_path, **FAST)


def test_unknown_method_option(tmp_path, digits):
    with pytest.raises(NetfitError, match=r"unknown option.*variant"):
        adapt("cnn_small", digits, "50%", "random", out=tmp_path, method_options={"variant": "x"}, **FAST)


class UserNet(nn.Module):
    """A model that is not in the zoo: residual CNN with flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


def test_user_model(tmp_path, digits):
    result = adapt(UserNet(), digits, "50%", "uniform", out=tmp_path, train_seed=True, **FAST)
    (row,) = result.summary["candidates"]
    assert row["within_budget"] and row["arch"]["family"] == "graph"
    loaded = load_model(tmp_path / row["weights"])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.models[row["id"]].eval()(x))


def test_incompatible_model_is_one_clear_error(tmp_path, digits):
    with pytest.raises(NetfitError, match="cannot process samples of shape"):
        adapt("resnet18_1d", digits, "50%", "uniform", out=tmp_path, **FAST)
