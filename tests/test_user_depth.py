"""Depth of user-defined models: residual blocks found by tracing become stages (the same function), whose
blocks DNA gates, grows as identities, removes from the exported graph and costs exactly, as for built-ins."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netfit
from netfit.api import adapt
from netfit.cost import count_cost
from netfit.export import export_onnx, save_model
from netfit.models.staged_graph import GraphStagedNet
from netfit.space.blocks import find_stages, stage_blocks
from netfit.space.elastic import ElasticNet
from netfit.space.grow import deepen, grow, max_difference
from netfit.space.subnet import truncate_depth
from user_zoo import BasicBlock

SHAPE = (1, 8, 8)
FAST = {"epochs": 1, "seed_epochs": 1, "progress": False, "train": {"batch_size": 64}}


class UserResNet(nn.Module):
    """Stem conv-bn-relu; stage 1: two identity blocks; stage 2: a strided projection block + two identity blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16), BasicBlock(16, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class PreActBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv plus the shortcut, no activation after the add."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return out + (x if self.proj is None else self.proj(x))


class UserPreActResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(
            PreActBlock(8, 8), PreActBlock(8, 8), PreActBlock(8, 16, 2), PreActBlock(16, 16), PreActBlock(16, 16)
        )
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SiLUResNet(nn.Module):
    """Blocks silu(x + f(x)): skippable, but a copy with a zero branch computes silu(x) != x."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.body = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(2))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        for f in self.body:
            x = F.silu(x + f(x))
        return self.fc(x.mean((2, 3)))


class PlainNet(nn.Module):
    """No residual block at all."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def _randomized(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that preservation checks can fail."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


USER_MODELS = [UserResNet, UserPreActResNet]


def _names(piece) -> set[str]:
    return {n.target for n in piece.nodes if n.op == "call_module"}


@pytest.mark.parametrize("factory", USER_MODELS)
def test_blocks_are_found_and_the_staged_model_computes_the_same(factory):
    model = _randomized(factory())
    plan = find_stages(model, SHAPE)
    assert plan.depths == [2, 3]
    first, second = plan.stages
    assert all(b.residual for b in first) and [b.residual for b in second] == [False, True, True]
    # the projection block is not skippable: it opens stage 2
    assert any("layer2.0.shortcut" in n or "blocks.2.proj" in n for n in _names(second[0]))
    assert _names(plan.stem) <= {"stem.0", "stem.1", "stem.2", "conv"} and "fc" in _names(plan.head)
    staged = stage_blocks(model, SHAPE)
    assert isinstance(staged, GraphStagedNet) and [len(s) for s in staged.stages] == [2, 3]
    assert max_difference(model, staged, SHAPE) < 1e-6
    assert stage_blocks(staged, SHAPE) is staged  # already staged: kept as it is


def test_a_model_without_residual_blocks_keeps_width_only_search():
    model = _randomized(PlainNet())
    assert find_stages(model, SHAPE) is None and stage_blocks(model, SHAPE) is model
    with pytest.warns(UserWarning, match="depth growth skipped: the model has no residual block"):
        grown = grow(model, SHAPE, 1.5, 0.5, np.random.default_rng(0))
    assert ElasticNet(grown, SHAPE, units=4).depths is None


def test_blocks_of_a_model_that_cannot_be_exported_are_not_cut():
    class MishNet(PlainNet):  # Mish is not a layer the graph spec can rebuild
        def __init__(self) -> None:
            super().__init__()
            self.res = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Mish())

        def forward(self, x):
            h = self.body(x)
            return self.fc((h + self.res(h)).mean((2, 3)))

    model = MishNet().eval()
    assert find_stages(model, SHAPE).depths == [1]
    with pytest.warns(UserWarning, match="depth search skipped: the model's blocks cannot be exported"):
        assert stage_blocks(model, SHAPE) is model


@pytest.mark.parametrize("factory", USER_MODELS)
def test_truncated_blocks_are_gone_from_the_exported_graph(factory, tmp_path):
    staged = stage_blocks(_randomized(factory()), SHAPE)
    short = truncate_depth(staged, [1, 1])
    assert [len(s) for s in short.stages] == [1, 1]
    assert len(list(short.modules())) < len(list(staged.modules()))
    assert count_cost(short, SHAPE).params < count_cost(staged, SHAPE).params
    save_model(short, tmp_path, input_shape=SHAPE)
    text = (tmp_path / "arch.json").read_text()
    dropped = ("layer1.1.", "layer2.1.", "layer2.2.") if factory is UserResNet else ("blocks.1.", "blocks.3.")
    assert not any(name in text for name in dropped)
    loaded = netfit.load(tmp_path)
    assert not any(name in key for key in loaded.state_dict() for name in dropped)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), short.eval()(x))
    assert export_onnx(loaded, tmp_path / "m.onnx", SHAPE)["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("factory", USER_MODELS)
def test_deeper_network_keeps_the_function(factory):
    model = _randomized(factory())
    deeper, seed_depths = deepen(stage_blocks(model, SHAPE), 0.5)
    assert seed_depths == [2, 3] and [len(s) for s in deeper.stages] == [3, 5]
    assert max_difference(model, deeper, SHAPE) < 1e-5
    grown = grow(model, SHAPE, 1.5, 1.0, np.random.default_rng(0))
    assert [len(s) for s in grown.stages] == [4, 6] and max_difference(model, grown, SHAPE) < 1e-4


def test_depth_growth_falls_back_when_copies_cannot_start_as_the_identity():
    model = _randomized(SiLUResNet())
    with pytest.warns(UserWarning, match="depth growth skipped: blocks appended with their last BatchNorm at zero"):
        grown = grow(model, SHAPE, 1.5, 0.5, np.random.default_rng(0))
    assert [len(s) for s in grown.stages] == [2] and max_difference(model, grown, SHAPE) < 1e-4
    net = ElasticNet(grown, SHAPE, units=4)
    assert net.depths == [2] and net.blocks == [(0, 1)]  # blocks can still be removed


@pytest.mark.parametrize("factory", USER_MODELS)
def test_elastic_depth_gates_cost_exactly_and_compute_the_materialised_network(factory):
    model = _randomized(factory())
    net = ElasticNet(grow(model, SHAPE, 1.5, 0.5, np.random.default_rng(0)), SHAPE, units=4)
    assert net.depths == [3, 5] and net.min_depths == [1, 1] and len(net.blocks) == 6
    gen = torch.Generator().manual_seed(0)
    archs = [net.smallest(), net.largest()] + [
        net.sample(torch.randn(net.num_width_logits) + b, torch.randn(net.num_depth_logits), gen) for b in (-1, 0, 2)
    ]
    assert len({tuple(a.depths) for a in archs}) >= 3
    x = torch.randn(4, *SHAPE)
    for arch in archs:
        sub = net.materialize(arch)
        assert [len(s) for s in sub.stages] == arch.depths
        counted, formula = count_cost(sub, SHAPE), net.cost(arch)
        assert formula["macs"] == pytest.approx(counted.macs, rel=1e-6)
        assert formula["params"] == pytest.approx(counted.params, rel=1e-6)
        net.model.train()
        net.attach()
        try:
            net.set_hard(arch)
            with torch.no_grad():
                gated = net.model(x)
                torch.testing.assert_close(net.run_sliced(arch, x), gated, atol=1e-5, rtol=1e-5)
        finally:
            net.detach()
        with torch.no_grad():
            torch.testing.assert_close(sub.train()(x), gated, atol=1e-5, rtol=1e-5)


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_dna_widens_a_user_resnet_above_the_seed_and_searches_below(tmp_path, digits):
    """Default options: 25% is searched over the user model cut into stages, 150% is the user model as given,
    widened uniformly; both export and load back to the same function."""
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4}
    out = tmp_path / "w"
    torch.manual_seed(0)
    result = adapt(UserResNet(), digits, "25%,150%", "dna", out=out, train_seed=True, method_options=options, **FAST)
    small, large = result.summary["candidates"]
    seed = result.summary["seed"]["macs"]
    assert small["arch"]["family"] == "staged_graph" and small["macs"] <= 0.25 * seed
    assert large["info"]["widened"] and large["arch"]["family"] == "graph" and seed < large["macs"] <= 1.5 * seed
    x = torch.randn(4, *SHAPE)
    for cand in (small, large):
        with torch.no_grad():
            torch.testing.assert_close(netfit.load(out / cand["id"])(x), result.models[cand["id"]].cpu().eval()(x))


def test_dna_searches_the_depth_of_a_user_resnet(tmp_path, digits):
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4, "grow_depth": 0.5}  # depth grows when asked
    out = tmp_path / "r"
    torch.manual_seed(0)  # the user's initial weights, whatever ran before
    result = adapt(UserResNet(), digits, "25%,150%", "dna", out=out, train_seed=True, method_options=options, **FAST)
    log = _log(out)
    (blocks,) = [e for e in log if e["event"] == "dna-blocks"]
    (space,) = [e for e in log if e["event"] == "dna-space"]
    assert blocks["depths"] == [2, 3] and space["depths"] == [3, 5] and space["min_depths"] == [1, 1]
    assert [e for e in log if e["event"] == "dna-arch"]
    seed = result.summary["seed"]["macs"]
    small, large = result.summary["candidates"]
    assert small["within_budget"] and small["macs"] <= 0.25 * seed
    assert large["within_budget"] and large["macs"] <= 1.5 * seed
    x = torch.randn(4, *SHAPE)
    for cand in (small, large):
        assert cand["arch"]["family"] == "staged_graph"
        assert [len(s["blocks"]) for s in cand["arch"]["stages"]] == cand["info"]["depths"]
        loaded = netfit.load(out / cand["id"])
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), result.models[cand["id"]].cpu().eval()(x))
    assert sum(small["info"]["depths"]) < sum(blocks["depths"])  # measured: [2, 2] of the seed's [2, 3]
