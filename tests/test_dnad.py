"""DNAD/SNPS: node mixing, deletion that removes compute, the controller, genotype round trip, KD, resume, bad input."""

import json

import numpy as np
import pytest
import torch

from netfit.api import adapt
from netfit.cli import main
from netfit.cost import count_cost
from netfit.errors import BudgetInfeasibleError, NetfitError, UnsupportedLayerError
from netfit.export import export_onnx, load_model, save_model
from netfit.methods import create_method
from netfit.methods import dnad as dnad_module
from netfit.methods.dnad import FeatureDistiller, TeacherTaps
from netfit.models import arch_of, build_model, create_model
from netfit.space.darts import ControllerConfig, ShrinkController, build_supernet, random_genotype

OPS = ["sep_conv_3x3", "skip_connect", "dil_conv_5x5"]
TINY = {"cells": 3, "channels": 4, "nodes": 2}  # 3 cells x (6 + 9) pairs
SHAPES = [(1, 8, 8), (1, 40)]


def tiny_net(shape=(1, 8, 8), ops=OPS):
    torch.manual_seed(0)
    return build_supernet(shape, 10, ops, **TINY)


def test_node_mixing_is_relu_normalised_over_live_pairs():
    net = tiny_net()
    node = net.cells[0].nodes[1]
    assert torch.allclose(node.theta, torch.full_like(node.theta, 2.0))
    assert torch.allclose(node.mixing(), torch.full((9,), 1 / 9))
    with torch.no_grad():
        node.theta.copy_(torch.tensor([3.0, -1.0, 1.0, 0.0, 2.0, 2.0, 1.0, 1.0, 1.0]))
    w = node.mixing()
    relu = torch.relu(node.theta.detach())
    assert torch.allclose(w, relu / relu.sum()) and w[1] == 0 and w[3] == 0
    node.delete(0)
    w = node.mixing()
    assert w[0] == 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    # S = sum log(1 + 50 w), differentiable in theta
    s = net.sparsity()
    expected = sum(torch.log1p(50 * n.mixing()).sum() for c in net.cells for n in c.nodes)
    assert torch.isclose(s, expected)
    s.backward()
    assert node.theta.grad is not None and node.theta.grad.abs().sum() > 0


def test_cost_weighted_sparsity_weighs_each_pair_by_its_macs():
    net = tiny_net()
    plain = net.sparsity()
    _, pairs = net.pair_table()
    mean = sum(c["macs"] for c in pairs.values()) / len(pairs)
    net.weigh_sparsity("macs")
    expected = 0.0
    for i, cell in enumerate(net.cells):
        for k, node in enumerate(cell.nodes):
            for p, term in zip(node.all_pairs, torch.log1p(50 * node.mixing())):
                c = pairs[(i, k, p)]["macs"] / mean
                expected = expected + max(0.1, c) * term
                if p[1] == "skip_connect" and not cell.reduction:
                    assert c == 0  # a free skip keeps only the floor's pressure
    assert torch.isclose(net.sparsity(), expected) and not torch.isclose(net.sparsity(), plain)
    # the weights are rebuilt, never saved: a checkpoint of a weighted net loads into a plain one unchanged
    assert not any(k.endswith("sparsity_weight") for k in net.state_dict())
    net.weigh_sparsity("pairs")
    assert torch.isclose(net.sparsity(), plain)
    with pytest.raises(ValueError, match="sparsity cost 'flops'"):
        net.weigh_sparsity("flops")


@pytest.mark.parametrize("shape", SHAPES)
def test_deleted_pairs_no_longer_run_or_cost(shape):
    net = tiny_net(shape)
    x = torch.randn(2, *shape)
    dense = count_cost(net, shape)
    assert net.cost() == {"macs": dense.macs, "params": dense.params - sum(n.theta.numel() for n in net.nodes())}
    node = net.cells[1].nodes[1]
    victim = node.ops["in0_sep_conv_3x3"]
    calls = []
    victim.register_forward_hook(lambda *a: calls.append(1))
    net(x)
    assert calls == [1]
    with torch.no_grad():
        node.theta[node.all_pairs.index((0, "sep_conv_3x3"))] = -1.0  # w = 0 < threshold
    assert net.delete_below(0.01) == [[1, 1, 0, "sep_conv_3x3"]]
    net(x)
    assert calls == [1]  # the deleted operation is gone from the forward pass
    assert "in0_sep_conv_3x3" not in node.ops
    assert not any(".in0_sep_conv_3x3." in k for k in net.state_dict() if k.startswith("cells.1.nodes.1."))
    shrunk = count_cost(net, shape)
    assert shrunk.macs < dense.macs and net.cost()["macs"] == shrunk.macs
    plain = build_model(net.plain_arch())
    assert count_cost(plain, shape).macs == shrunk.macs


def test_exhausted_when_every_node_has_one_pair():
    net = tiny_net(ops=["skip_connect"])
    assert not net.exhausted()
    for node in net.nodes():
        for i in range(1, len(node.all_pairs)):
            node.delete(i)
    assert net.exhausted() and net.live_pairs() == len(net.nodes())


def test_controller_on_a_scripted_deletion_history():
    c = ShrinkController(
        ControllerConfig(gamma0=0.01, gamma_max=0.04, phi=2.0, k=0.5, n_max=0.3, tau=0.5, t_max=2, mu0=1.0, rho=3.0)
    )
    history = [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    gammas, plateaus = [], []
    for step, n in enumerate(history):
        if c.update(n):
            plateaus.append(step)
        gammas.append(round(c.gamma, 6))
    # the deletion rate after step 5 is 1.0, 0.5, 0.25, ...: gamma decays while it is >= n_max, then grows again
    assert gammas == [0.02, 0.04, 0.04, 0.04, 0.04, 0.02, 0.01, 0.02, 0.04, 0.04, 0.04, 0.04, 0.04]
    assert plateaus == [3, 10, 12]  # two calm steps at gamma_max make a plateau; the deletion resets the count
    assert c.mu == 27.0 and c.plateaus == 3
    clone = ShrinkController(c.config)
    clone.load_state_dict(c.state_dict())
    assert clone.state_dict() == c.state_dict()
    assert ControllerConfig().check() == [] and ControllerConfig(phi=0.5).check()


@pytest.mark.parametrize("shape", SHAPES)
def test_genotype_round_trip(tmp_path, shape):
    net = tiny_net(shape)
    full = net.cost()["macs"]
    genotype = random_genotype(net, 0.6 * full, np.random.default_rng(0))
    arch = {**net.plain_arch(), "genotype": genotype}
    model = build_model(arch).eval()
    macs = count_cost(model, shape).macs
    assert macs <= 0.6 * full
    for cell, nodes in zip(net.cells, genotype):  # the table's estimate is the cost model's count
        for node, pairs in zip(cell.nodes, nodes):
            for i, pair in enumerate(node.all_pairs):
                if list(pair) not in pairs:
                    node.delete(i)
    assert net.cost()["macs"] == macs and arch_of(model) == arch
    save_model(model, tmp_path / "m", input_shape=shape)
    rebuilt = load_model(tmp_path / "m")
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert arch_of(rebuilt) == arch
    pytest.importorskip("onnxruntime")
    empty = {**arch, "genotype": [[[], *nodes[1:]] for nodes in genotype]}  # a node without pairs outputs zeros
    export_onnx(build_model(empty), tmp_path / "m.onnx", shape)  # raises when ONNX Runtime disagrees with torch


def test_stem_stride_runs_the_cells_on_half_size_maps():
    shape = (1, 16, 16)
    x = torch.randn(2, *shape)
    nets = {s: build_supernet(shape, 10, OPS, **TINY, stem_stride=s) for s in (1, 2)}
    sizes = {s: [o.shape[-1] for o in (net(x), net.stage_outputs)[1]] for s, net in nets.items()}
    assert sizes == {1: [16, 8, 4], 2: [8, 4, 2]}
    assert nets[2].cost()["macs"] < nets[1].cost()["macs"] / 3
    plain = build_model(nets[2].plain_arch())  # a member keeps the stride: the table's cost is the model's
    assert arch_of(plain)["stem_stride"] == 2 and count_cost(plain, shape).macs == nets[2].cost()["macs"]


@pytest.mark.parametrize(("name", "shape"), [("resnet18_cifar", (1, 8, 8)), ("resnet18_1d", (1, 40))])
def test_feature_kd_adapters_at_three_stage_ends(name, shape):
    teacher = create_model(name, num_classes=10, in_chans=1, width_mult=0.25)
    net = tiny_net(shape)
    taps = TeacherTaps(teacher, None, shape)
    x = torch.randn(4, *shape)
    net(x)
    assert len(net.stage_outputs) == 3
    distiller = FeatureDistiller(
        len(shape) - 1, [o.shape[1] for o in net.stage_outputs], taps.channels, [0.2, 0.3, 0.5]
    )
    _, features = taps(x)
    assert len(features) == 3 and taps.channels == [f.shape[1] for f in features]
    loss = distiller(net.stage_outputs, features)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in distiller.parameters())
    assert not any(p.requires_grad for p in taps.teacher.parameters())


def test_teacher_taps_follow_the_students_layout():
    teacher = create_model("resnet18_cifar", num_classes=10, in_chans=3, width_mult=0.25).eval()
    taps = TeacherTaps(teacher, None, (3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    logits, features = taps(x)
    features = list(features)
    last_logits, last_features = taps(x.contiguous(memory_format=torch.channels_last), channels_last=True)
    assert torch.allclose(last_logits, logits, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(last_features, features))
    conv = next(p for p in taps.teacher.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert next(p for p in teacher.parameters() if p.ndim == 4).is_contiguous()  # the model given keeps its layout


def test_bad_input_is_refused_in_one_line(tmp_path, digits):
    with pytest.raises(NetfitError, match=r"unknown operation.*sep_conv_9x9"):
        create_method("dnad", {"ops": "sep_conv_3x3,sep_conv_9x9"})
    with pytest.raises(NetfitError, match="kd_ratios"):
        create_method("snps", {"kd_ratios": "0.5,0.5"})
    with pytest.raises(NetfitError, match="gamma0"):
        create_method("dnad", {"gamma0": 1.0, "gamma_max": 0.1})
    with pytest.raises(NetfitError, match="stem_stride >= 1"):
        create_method("dnad", {"stem_stride": 0})
    with pytest.raises(NetfitError, match="sparsity_cost one of pairs, macs, params"):
        create_method("dnad", {"sparsity_cost": "flops"})
    seed = create_model("cnn_small", num_classes=10, in_chans=1)  # two stages: no three stage ends
    with pytest.raises(UnsupportedLayerError, match="stages of teacher"):
        adapt(seed, digits, "100%", "dnad", out=tmp_path / "a", method_options=TINY, epochs=1, progress=False)
    with pytest.raises(BudgetInfeasibleError, match="below the smallest network"):
        adapt(seed, digits, "1000 macs", "snps", out=tmp_path / "b", method_options=TINY, epochs=1, progress=False)
    code = main(
        ["adapt", "--model", "cnn_small", "--method", "dnad", "-x", "ops=conv_9x9", "--out", str(tmp_path / "c")]
    )
    assert code == 2


# a fast controller so that a few dozen steps on digits delete pairs and reach plateaus
FAST_SHRINK = {
    **TINY,
    "ops": "skip_connect,conv_1x1",
    "gamma0": 0.05,
    "gamma_max": 0.5,
    "phi": 1.5,
    "n_max": 0.05,
    "t_max": 3,
    "mu0": 10.0,
    "arch_lr": 1.0,
    "search_epochs": 3,
}
FAST = {"epochs": 1, "progress": False, "train": {"batch_size": 64}}


def test_snps_run_returns_the_pareto_set_as_plain_networks(tmp_path, digits):
    seed = create_model("cnn_small", num_classes=10, in_chans=1)
    result = adapt(seed, digits, "100%,30%", "snps", out=tmp_path, method_options=FAST_SHRINK, **FAST)
    rows = result.summary["candidates"]
    snaps = json.loads((tmp_path / dnad_module.SNAPSHOT_FILE).read_text())["snapshots"]
    assert len(rows) == len(snaps) >= 2
    assert [r["arch"]["genotype"] for r in rows] == [s["genotype"] for s in snaps]
    assert [r["macs"] for r in rows] == [s["macs"] for s in snaps]  # the search's table = the cost model
    assert all("step_seconds" in s and "step_seconds" not in r["info"] for s, r in zip(snaps, rows))
    assert rows[0]["macs"] > rows[-1]["macs"]
    assert all(r["arch"]["family"] == "darts" for r in rows)
    reached = [rows[-1]["macs"] <= b["limit"] for b in result.summary["budgets"]]  # the set's smallest is within
    assert [b["selected"] is not None for b in result.summary["budgets"]] == reached and reached[0]
    model = load_model(tmp_path / rows[-1]["weights"])
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), result.models[rows[-1]["id"]].cpu().eval()(x), atol=1e-6)


@pytest.mark.parametrize("sparsity_cost", ["pairs", "macs"])
def test_resume_in_the_middle_of_shrinking(tmp_path, digits, monkeypatch, sparsity_cost):
    seed = create_model("cnn_small", num_classes=10, in_chans=1)
    # no plateau: the search runs all its epochs
    options = {**FAST_SHRINK, "t_max": 1000, "sparsity_cost": sparsity_cost}
    plain = adapt(seed, digits, "100%", "snps", out=tmp_path / "a", method_options=options, **FAST)

    original = dnad_module.Shrinker.on_epoch_end

    def interrupt(self, state, metrics):
        original(self, state, metrics)
        if state.epoch == 2:  # killed before epoch 2's checkpoint: the resume starts from epoch 1's
            raise KeyboardInterrupt

    monkeypatch.setattr(dnad_module.Shrinker, "on_epoch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        adapt(seed, digits, "100%", "snps", out=tmp_path / "b", method_options=options, **FAST)
    monkeypatch.setattr(dnad_module.Shrinker, "on_epoch_end", original)
    ckpt = torch.load(tmp_path / "b" / "ckpt" / "snps-search.pt", weights_only=True)
    assert not ckpt["finished"] and ckpt["epoch"] == 1
    assert any(not v.all() for k, v in ckpt["model"].items() if k.endswith("alive"))  # pairs already deleted
    assert ckpt["callbacks"]["Shrinker#0"]["controller"]["gamma"] != options["gamma0"]
    resumed = adapt(seed, digits, "100%", "snps", out=tmp_path / "b", method_options=options, resume=True, **FAST)
    a, b = plain.summary["candidates"], resumed.summary["candidates"]
    assert [r["arch"] for r in a] == [r["arch"] for r in b]
    assert [r["info"] for r in a] == [r["info"] for r in b]  # same members, search steps, gamma, mu, val accuracy


def test_dnad_distils_the_trained_seed_through_the_api(tmp_path, digits):
    seed = create_model("resnet18_cifar", num_classes=10, in_chans=1, width_mult=0.25)  # a user's nn.Module
    options = {**TINY, "search_epochs": 1, "logit_kd": 0.5}
    result = adapt(seed, digits, "50%", "dnad", out=tmp_path, method_options=options, **FAST)
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    (search,) = [e for e in log if e["event"] == "epoch" and e["phase"] == "dnad-search"]
    assert search["kd"] > 0 and "sparsity" in search
    ckpt = torch.load(tmp_path / "ckpt" / "dnad-search.pt", weights_only=True)
    assert any(k.startswith("distiller.adapters.2.") for k in ckpt["model"])  # adapters at the three stage ends
    (row,) = result.summary["candidates"]
    assert row["id"] == "dnad-m0" and row["info"]["reason"] == "end" and row["within_budget"]
