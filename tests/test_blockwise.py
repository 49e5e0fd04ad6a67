"""Block-wise supervised NAS (blockwise): block cutting, candidate spaces, rating, the exact search, assembly,
rank-parallel blocks, resume and bad input."""

import copy
import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import netfit
from netfit.api import adapt
from netfit.errors import BudgetInfeasibleError, NetfitError, UnsupportedLayerError
from netfit.export import export_onnx, save_model
from netfit.methods.blockwise import _assemble, _template
from netfit.models import arch_of, build_model, create_model
from netfit.space.block_search import top_k
from netfit.space.blockwise import BlockSpace, BlockSupernet, TeacherBlocks, rate_block, rate_naively

TINY = {"expansions": [3], "kernels": [3, 5], "max_layers": 2, "top_k": 2, "recal_samples": 64, "rate_samples": 64}
ONE = {**TINY, "top_k": 1}
FAST = {"epochs": 1, "seed_epochs": 1, "progress": False, "train": {"batch_size": 32}}


@pytest.fixture(scope="module")
def small(digits):
    """A third of digits' training split and 200 test samples: the contracts, not accuracy, are under test."""
    cut = lambda ds, n: torch.utils.data.TensorDataset(*(t[:n] for t in ds.tensors))  # noqa: E731
    return dataclasses.replace(digits, train=cut(digits.train, 420), test=cut(digits.test, 200))


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet18_cifar", (1, 8, 8)),
        ("resnet18_1d", (1, 40)),
        ("cnn_small", (1, 8, 8)),
        ("mobilenetv2_cifar", (1, 8, 8)),
    ],
)
def test_chained_teacher_blocks_reproduce_the_teacher(name, shape):
    torch.manual_seed(0)
    teacher = create_model(name, num_classes=10, in_chans=1).eval()
    cut = TeacherBlocks(teacher, shape)
    assert len(cut) == len(teacher.stages)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        expected = teacher(x)
        feats = cut.features(x)
        h = teacher.stem(x)
        assert torch.equal(feats[0][0], h)
        for i, (inp, out) in enumerate(feats):  # each block's input is the previous output; chained = the teacher
            assert torch.equal(inp, h)
            h = cut.modules[i](h)
            assert torch.allclose(h, out, atol=1e-6)
            assert all(torch.equal(a, b) for a, b in zip(cut.io(x, i), (inp, out)))
            assert torch.allclose(cut.hybrid(x, i, copy.deepcopy(cut.modules[i])), expected, atol=1e-6)
        assert torch.allclose(teacher.head(h), expected, atol=1e-6)
    assert cut.ndim == len(shape) - 1 and all(s in (1, 2) for s in cut.strides)


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.conv(x))).mean((2, 3)))


def test_named_blocks_of_a_user_model():
    net = _UserNet().eval()
    cut = TeacherBlocks(net, (1, 8, 8), ["layer1", "layer2"])
    assert cut.strides == [1, 2] and cut.in_shapes[1] == (8, 8, 8) and cut.stem_stride == 1
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(cut.hybrid(x, 1, copy.deepcopy(net.layer2)), net(x))
    with pytest.raises(NetfitError, match="exactly once, in this order"):
        TeacherBlocks(net, (1, 8, 8), ["layer2", "layer1"])
    with pytest.raises(NetfitError, match="does not take"):
        TeacherBlocks(net, (1, 8, 8), ["conv", "layer2"])  # layer1 sits between them
    with pytest.raises(UnsupportedLayerError, match="blocks="):
        TeacherBlocks(net, (1, 8, 8))
    with pytest.raises(NetfitError, match="no module"):
        TeacherBlocks(net, (1, 8, 8), ["layer9"])


@pytest.mark.parametrize(
    ("options", "count"),
    [({}, 6 + 36 + 216), ({"expansions": (3,), "kernels": (3, 5), "min_layers": 2, "max_layers": 3}, 4 + 8)],
)
def test_candidate_enumeration(options, count):
    space = BlockSpace(**options)
    paths = space.candidates()
    assert len(paths) == len(set(paths)) == count
    assert {len(p) for p in paths} == set(range(space.min_layers, space.max_layers + 1))
    rng = np.random.default_rng(0)
    assert all(space.sample(rng) in set(paths) for _ in range(50))
    net = BlockSupernet(space, 1, 4, 8, 2).eval()
    x = torch.randn(2, 4, 10)
    assert all(net(x, p).shape == (2, 8, 5) for p in paths[:20])


def test_rating_is_deterministic_and_equals_per_candidate_recalibration():
    torch.manual_seed(0)
    space = BlockSpace((3, 6), (3,), 1, 3)
    net = BlockSupernet(space, 2, 4, 6, 2)
    recal, inputs, targets = torch.randn(50, 4, 6, 6), torch.randn(20, 4, 6, 6), torch.randn(20, 6, 3, 3)
    first = rate_block(net, recal, inputs, targets, seed=3, batch_size=16)
    again = rate_block(net, recal, inputs, targets, seed=3, batch_size=16)
    naive = rate_naively(net, recal, inputs, targets, seed=3, batch_size=16)
    assert list(first) == space.candidates() and first == again
    assert all(abs(first[p] - naive[p]) <= 1e-6 * abs(naive[p]) for p in first)
    assert len(set(first.values())) == len(first)  # every candidate has its own rating


def _brute(losses, costs, limit, k):
    combos = itertools.product(*(range(len(b)) for b in losses))
    fits = [
        (sum(losses[b][c] for b, c in enumerate(ch)), ch)
        for ch in combos
        if sum(costs[b][c] for b, c in enumerate(ch)) <= limit
    ]
    return sorted(fits)[:k]


def test_exact_search_equals_brute_force_including_top_k():
    rng = np.random.default_rng(0)
    for trial in range(150):
        sizes = rng.integers(1, 7, size=rng.integers(1, 5))
        costs = [rng.integers(1, 30, size=s).astype(float).tolist() for s in sizes]
        losses = [rng.random(s).tolist() for s in sizes]
        limit, k = float(rng.integers(0, 80)), int(rng.integers(1, 7))
        got = top_k(losses, costs, limit, k, grid=int(rng.integers(1, 64)))
        assert [(c.loss, c.choices) for c in got] == _brute(losses, costs, limit, k), trial
        assert all(c.cost == sum(costs[b][i] for b, i in enumerate(c.choices)) <= limit for c in got)
    assert top_k([[0.1, 0.2]], [[5, 6]], limit=4) == []
    with pytest.raises(NetfitError):
        top_k([[0.1]], [[1.0, 2.0]], limit=4)


def test_assembled_network_is_a_plain_loadable_model(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("resnet18_1d", num_classes=10, in_chans=1, width_mult=0.25).eval()
    cut = TeacherBlocks(teacher, (1, 40))
    space = BlockSpace((3, 6), (3, 7), 1, 2)
    paths = [space.candidates()[i % 6] for i in range(len(cut))]
    arch = _assemble(_template(cut, teacher, 10, True), cut, paths)
    model = build_model(arch).eval()
    assert arch_of(model) == arch
    x = torch.randn(3, 1, 40)
    save_model(model, tmp_path, input_shape=(1, 40))
    assert torch.allclose(netfit.load(tmp_path)(x), model(x), atol=1e-6)
    with torch.no_grad():  # every block maps the teacher block's input shape to its output shape
        h = model.stem(x)
        for stage, out_shape in zip(model.stages, cut.out_shapes):
            h = stage(h)
            assert tuple(h.shape[1:]) == out_shape
    assert export_onnx(model, tmp_path / "m.onnx", (1, 40))["max_abs_diff"] < 1e-4


def _tables(out):
    return [json.loads((out / "blockwise" / f"block{i}.json").read_text()) for i in range(2)]


def test_adapt_end_to_end(tmp_path, small):
    result = adapt("cnn_small", small, "40%,70%", "blockwise", out=tmp_path, method_options=TINY, **FAST)
    rows = result.summary["candidates"]
    assert [r["id"] for r in rows] == ["bw-40pct-1", "bw-40pct-2", "bw-70pct-1", "bw-70pct-2"]
    assert all(r["within_budget"] and r["arch"]["family"] == "blocknet" for r in rows)
    for budget in (rows[:2], rows[2:]):  # top-k in order of predicted loss
        assert budget[0]["info"]["predicted_loss"] <= budget[1]["info"]["predicted_loss"]
        assert all(r["info"]["predicted_macs"] == r["macs"] for r in budget)  # the block costs add up exactly
    for table in _tables(tmp_path):
        assert len(table["candidates"]) == 2 + 4
        assert [r["loss"] for r in table["candidates"]] == sorted(r["loss"] for r in table["candidates"])
    csv = (tmp_path / "blockwise" / "block0.csv").read_text().splitlines()
    assert csv[0] == "candidate,depth,loss,macs,params" and len(csv) == 7
    model = netfit.load(tmp_path / rows[0]["id"])
    assert arch_of(model) == rows[0]["arch"]


def test_resume_between_blocks_and_retrains(tmp_path, small, monkeypatch):
    from netfit.methods import blockwise as module

    reference = adapt("cnn_small", small, "50%", "blockwise", out=tmp_path / "ref", method_options=ONE, **FAST)
    real = module.rate_block
    calls = []

    def crash_on_second_block(net, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(net, *args, **kwargs)

    monkeypatch.setattr(module, "rate_block", crash_on_second_block)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", small, "50%", "blockwise", out=out, method_options=ONE, **FAST)
    monkeypatch.setattr(module, "rate_block", real)
    assert (out / "blockwise" / "block0.json").exists() and not (out / "blockwise" / "block1.json").exists()
    ckpt0 = (out / "ckpt" / "blockwise-block0.pt").stat().st_mtime_ns
    real_finetune = module.finetune

    def crash_after_first_retrain(*args, **kwargs):
        real_finetune(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "finetune", crash_after_first_retrain)
    with pytest.raises(KeyboardInterrupt):  # resumes between blocks, then stops after the first retrain
        adapt("cnn_small", small, "50%", "blockwise", out=out, method_options=ONE, resume=True, **FAST)
    monkeypatch.setattr(module, "finetune", real_finetune)
    assert (out / "ckpt" / "blockwise-block0.pt").stat().st_mtime_ns == ckpt0  # block 0 was not trained again
    retrained = {p.name: p.stat().st_mtime_ns for p in (out / "ckpt").glob("bw-*.pt")}
    assert retrained
    resumed = adapt("cnn_small", small, "50%", "blockwise", out=out, method_options=ONE, resume=True, **FAST)
    assert retrained == {p.name: p.stat().st_mtime_ns for p in (out / "ckpt").glob("bw-*.pt")}  # not trained again
    timings = ("train_seconds", "rate_seconds")  # everything but the measured times is the same
    same = [{k: v for k, v in t.items() if k not in timings} for t in _tables(out)]
    assert same == [{k: v for k, v in t.items() if k not in timings} for t in _tables(tmp_path / "ref")]
    key = [(r["id"], r["macs"], r["info"]["blocks"]) for r in reference.summary["candidates"]]
    assert key == [(r["id"], r["macs"], r["info"]["blocks"]) for r in resumed.summary["candidates"]]


@pytest.mark.parametrize(
    ("budget", "options", "error", "message"),
    [
        ("0.1%", {}, BudgetInfeasibleError, "below the smallest network"),
        ("50%", {"kernels": []}, NetfitError, "empty"),
        ("50%", {"kernels": [4]}, NetfitError, "odd"),
        ("50%", {"max_layers": 0}, NetfitError, "min_layers"),
        ("20MB memory", {}, NetfitError, "budgets"),
        ("50%", {"blocks": "stages.1,stages.0"}, NetfitError, "in this order"),
    ],
)
def test_bad_input(tmp_path, small, budget, options, error, message):
    with pytest.raises(error, match=message):
        adapt("cnn_small", small, budget, "blockwise", out=tmp_path, method_options={**TINY, **options}, **FAST)


def test_teacher_without_stages(tmp_path, small):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(UnsupportedLayerError, match="no stages"):
        adapt(model, small, "50%", "blockwise", out=tmp_path, method_options=TINY, **FAST)


def test_cli_one_line_exit_2(tmp_path, capsys):
    from netfit.cli import main

    args = ["adapt", "--model", "cnn_small", "--method", "blockwise", "-x", "expansions=[]", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "empty" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_torchrun_blocks_on_two_ranks(tmp_path, digits):
    """Two gloo ranks train one block each (rank-independent) and every rank gets both tables; the tables equal
    a single process's (the same block training, on CPU), and the run completes with the same candidates."""
    seed = tmp_path / "seed"
    model = create_model("cnn_small", num_classes=10, in_chans=1)
    save_model(copy.deepcopy(model), seed, input_shape=(1, 8, 8))
    base = [sys.executable, "-m", "netfit.cli", "adapt", "--seed-weights", str(seed), "--data", "digits"]
    base += ["--method", "blockwise", "--budget", "50%", "--epochs", "1", "--batch-size", "64", "-q"]
    base += [x for k, v in {**TINY, "top_k": 1}.items() for x in ("-x", f"{k}={json.dumps(v)}")]
    # torchrun gives each rank one thread; the single process gets one too, or its float sums differ slightly
    # and the block trainings drift apart.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for procs in (1, 2):
        cmd = [*base, "--out", str(tmp_path / f"p{procs}")]
        if procs == 2:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *cmd[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        results[procs] = json.loads((tmp_path / f"p{procs}" / "result.json").read_text())
    one, two = (_tables(tmp_path / f"p{p}") for p in (1, 2))
    for a, b in zip(one, two):
        assert [(r["id"], r["macs"]) for r in a["candidates"]] == [(r["id"], r["macs"]) for r in b["candidates"]]
        assert all(abs(r["loss"] - s["loss"]) <= 1e-5 for r, s in zip(a["candidates"], b["candidates"]))
    assert [c["info"]["blocks"] for c in results[1]["candidates"]] == [
        c["info"]["blocks"] for c in results[2]["candidates"]
    ]
    log = (tmp_path / "p2" / "log.jsonl").read_text()
    assert log.count('"event": "blockwise-block"') == 2
