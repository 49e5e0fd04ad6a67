"""DNA: growth preserves the function, the elastic gates equal slicing, the expected cost equals the count,
the search hits its budgets (condensing and expanding), on built-in and user-defined models."""

import copy
import dataclasses
import json
import types

import numpy as np
import pytest
import torch
from torch import nn

from _shapes import input_shape
from netfit.api import adapt
from netfit.budget import Budget
from netfit.cli import main
from netfit.cost import count_cost
from netfit.distill import CachedTeacher
from netfit.engine.checkpoint import load_checkpoint
from netfit.engine.config import TrainConfig
from netfit.engine.norms import frozen_norm_statistics
from netfit.errors import NetfitError
from netfit.health import near_chance
from netfit.methods import dna as dna_module
from netfit.methods.base import Target
from netfit.methods.dna import DNA, dead_zone_loss
from netfit.methods.dna_networks import searched_network, top_up
from netfit.models import arch_of, create_model
from netfit.space.channels import trace_channel_groups
from netfit.space.elastic import ElasticNet
from netfit.space.grow import deepen, deepen_to_fit, grow, max_difference, order_channels, widen, widen_to_fit
from netfit.space.latency_table import measure_table
from netfit.space.prune import remap_channels, slice_channels

FAST = {"epochs": 1, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}
BUILT_INS = ["resnet18_cifar", "mobilenetv2_cifar", "resnet18_1d", "cnn_small"]


class UserNet(nn.Module):
    """Not from the zoo: a residual add, a concatenation and a flatten into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12))
        self.c = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(20 * 4 * 4, 10)

    def forward(self, x):
        h = self.a(x)
        h = torch.relu(h + self.b(h))
        h = nn.functional.adaptive_avg_pool2d(torch.cat([h, self.c(h)], 1), 4)
        return self.fc(torch.flatten(h, 1))


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that preservation tests can fail."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "user":
        return _randomize_norms(UserNet()), (1, 16, 16)
    shape = input_shape(name)
    return _randomize_norms(create_model(name, num_classes=10, in_chans=shape[0], width_mult=0.25)), shape


@pytest.mark.parametrize("name", [*BUILT_INS, "user"])
def test_growth_preserves_the_function_and_grows(name):
    model, shape = _model(name)
    grown = grow(model, shape, 1.5, 0.5, np.random.default_rng(0))
    assert max_difference(model, grown, shape) < 1e-4
    seed_groups = [g for g in trace_channel_groups(model, torch.zeros(1, *shape)) if g.prunable]
    seed_width = sum(g.size for g in seed_groups)
    grown_groups = [g for g in trace_channel_groups(grown, torch.zeros(1, *shape)) if g.prunable]
    assert sum(g.size for g in grown_groups) >= 1.5 * seed_width
    if name != "user":
        assert [len(s) for s in grown.stages] == [n + -(-n // 2) for n in (len(s) for s in model.stages)]


def test_growth_steps_each_preserve_the_function():
    model, shape = _model("resnet18_cifar")
    ordered = order_channels(model, shape)
    assert max_difference(model, ordered, shape) < 1e-5
    deeper, seed_depths = deepen(ordered, 1.0)
    assert seed_depths == [2, 2, 2, 2] and [len(s) for s in deeper.stages] == [4, 4, 4, 4]
    assert max_difference(model, deeper, shape) < 1e-4
    wider = widen(deeper, shape, 2.0, np.random.default_rng(3))
    assert max_difference(model, wider, shape) < 1e-4
    assert wider.stem.conv.out_channels == 2 * deeper.stem.conv.out_channels


@pytest.mark.parametrize("name", ["resnet18_1d", "mobilenetv2_cifar", "user"])
def test_widen_to_fit_is_the_widest_uniform_scale_up_within_the_limit(name):
    model, shape = _model(name)
    seed_macs = count_cost(model, shape).macs
    macs = lambda m: count_cost(m, shape).macs  # noqa: E731
    factor, wide, cost = widen_to_fit(model, shape, macs, 1.5 * seed_macs)
    assert factor > 1.0 and seed_macs < cost == macs(wide) <= 1.5 * seed_macs
    assert max_difference(model, wide, shape) < 1e-4  # starts as the seed
    # no uniform widening on a grid of factors is costlier and still within the limit
    grid = [macs(widen(model, shape, f, np.random.default_rng(0))) for f in np.linspace(1.0, 1.5, 51)]
    assert max(c for c in grid if c <= 1.5 * seed_macs) <= cost
    assert widen_to_fit(model, shape, macs, 0.9 * seed_macs)[0] == 1.0  # nothing wider fits: the seed


def test_deepen_to_fit_is_the_deepest_uniform_scale_up_within_the_limit():
    model, shape = _model("resnet18_cifar")
    seed_macs = count_cost(model, shape).macs
    macs = lambda m: count_cost(m, shape).macs  # noqa: E731
    fraction, deeper, cost = deepen_to_fit(model, macs, 1.6 * seed_macs)
    assert fraction == 0.5 and [len(s) for s in deeper.stages] == [3, 3, 3, 3]
    assert seed_macs < cost <= 1.6 * seed_macs < macs(deepen(model, 0.55)[0])
    assert max_difference(model, deeper, shape) < 1e-4
    assert deepen_to_fit(model, macs, seed_macs)[1] is model


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_leading_slices_of_the_widened_network_are_the_seeds_slices(name):
    """Copies start with zero outgoing weights, so a sub-network of leading channels computes exactly what the
    same sub-network of the seed computes; Net2Net's split would read the kept originals at a fraction."""
    model, shape = _model(name)
    ordered = order_channels(model, shape)
    x = torch.zeros(1, *shape)
    groups = trace_channel_groups(ordered, x)
    keep = {g.id: torch.arange(max(1, g.size // 2)) for g in groups if g.prunable}
    seed_slice = slice_channels(ordered, groups, keep)
    for outgoing, same in (("zero", True), ("split", False)):
        wide = widen(ordered, shape, 1.5, np.random.default_rng(0), outgoing=outgoing)
        wide_groups = trace_channel_groups(wide, x)
        assert [g.size for g in wide_groups if g.id in keep] == [-(-3 * g.size // 2) for g in groups if g.id in keep]
        difference = max_difference(seed_slice, slice_channels(wide, wide_groups, keep), shape)
        assert (difference < 1e-5) == same, (outgoing, difference)


def test_remap_duplicates_split_outgoing_weights_and_rejects_bad_index():
    model, shape = _model("user")
    groups = trace_channel_groups(model, torch.zeros(1, *shape))
    gid = next(g.id for g in groups if g.prunable and g.size == 12)
    twice = torch.cat([torch.arange(12), torch.arange(12)])
    wide = remap_channels(model, groups, {gid: twice})
    assert max_difference(model, wide, shape) < 1e-5
    zeroed = remap_channels(model, groups, {gid: twice}, outgoing="zero")
    assert max_difference(model, zeroed, shape) < 1e-5
    unsplit = remap_channels(model, groups, {gid: twice}, outgoing="keep")
    assert max_difference(model, unsplit, shape) > 1e-3  # the split (or the zeroed copies) preserves the function
    with pytest.raises(NetfitError, match="index"):
        remap_channels(model, groups, {gid: torch.tensor([12])})


def _elastic(name: str) -> ElasticNet:
    model, shape = _model(name)
    return ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=8)


def test_top_up_is_the_greedy_walk_priced_in_batches():
    """``top_up`` prices every group's trial in one call; it must add the same channels as the plain greedy
    walk (one ``cost_at`` per trial, first fitting group in the order of the searched shares)."""
    net = _elastic("mobilenetv2_cifar")
    sizes = {g.id: g.size for g in net.gated}
    gen = np.random.default_rng(0)
    ratios = {g: float(r) for g, r in zip(sizes, gen.uniform(0.1, 1.0, len(sizes)))}
    start = {g: max(1, int(0.3 * ratios[g] * sizes[g])) for g in sizes}
    depths = net.min_depths
    limit = 1.3 * net.cost_at(start, depths)["macs"]

    def walk(widths):
        while True:
            order = sorted((g for g in sizes if widths[g] < sizes[g]), key=lambda g: widths[g] / (ratios[g] * sizes[g]))
            for g in order:
                if net.cost_at({**widths, g: widths[g] + 1}, depths)["macs"] <= limit:
                    widths = {**widths, g: widths[g] + 1}
                    break
            else:
                return widths

    topped = top_up(net, start, depths, "macs", limit, ratios)
    assert topped == walk(dict(start)) and topped != start
    assert net.cost_at(topped, depths)["macs"] <= limit
    batched = net.costs_at([start, topped], depths)
    assert batched["macs"].tolist() == [net.cost_at(w, depths)["macs"] for w in (start, topped)]


@pytest.mark.parametrize("name", ["mobilenetv2_cifar", "resnet18_cifar"])
def test_searched_network_prices_its_trials_by_the_formula_and_builds_one_network(name, monkeypatch):
    """A MACs budget's network: bisection and top-up priced by the cost formula, one network built, the same one
    as pricing every trial by the cost model; where the formula is off, the counted bisection takes over."""
    model, shape = _model(name)
    net = ElasticNet(model, shape, units=8)
    gen = torch.Generator().manual_seed(0)
    arch = types.SimpleNamespace(
        width=torch.randn(1, net.num_width_logits, generator=gen), depth=torch.randn(1, net.num_depth_logits)
    )
    macs = lambda m: count_cost(m, shape).macs  # noqa: E731
    run = types.SimpleNamespace(measure=lambda m, metric, **_: macs(m))
    budget = types.SimpleNamespace(device=None, backend=None)
    target = types.SimpleNamespace(limit=0.3 * macs(model), metric="macs", budget=budget)
    seed = types.SimpleNamespace(model=model)
    builds = []
    materialize = net.space.materialize
    monkeypatch.setattr(net.space, "materialize", lambda *a: builds.append(a) or materialize(*a))
    built, info = searched_network(net, arch, 0, target, seed, run)
    assert len(builds) == 1 and macs(built) <= target.limit
    assert info["budget_fill"] == round(macs(built) / target.limit, 4)

    ratios, rounded = net.most_probable(arch.width[0], arch.depth[0])  # the same walk, every trial counted
    scale, _, _ = net.space.fit_width(macs, target.limit, ratios, rounded.depths)
    widths = net.space.scaled_widths({g: min(1.0, scale * r) for g, r in ratios.items()})
    widths = top_up(net, widths, rounded.depths, "macs", target.limit, ratios)
    counted = materialize(widths, rounded.depths)
    assert info["width_scale"] == round(scale, 4) and arch_of(built) == arch_of(counted)

    cost_at = net.cost_at  # a formula that prices everything at half: its top-up would overrun the budget
    monkeypatch.setattr(net, "cost_at", lambda *a: {k: v / 2 for k, v in cost_at(*a).items()})
    built, info = searched_network(net, arch, 0, target, seed, run)
    assert 0.9 * target.limit < macs(built) <= target.limit and info["budget_fill"] <= 1


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_expected_cost_agrees_with_the_cost_model(name):
    net = _elastic(name)
    gen = torch.Generator().manual_seed(0)
    archs = [net.smallest(), net.largest()] + [
        net.sample(torch.randn(net.num_width_logits) + b, torch.randn(net.num_depth_logits), gen) for b in (-1, 0, 2)
    ]
    for arch in archs:
        counted = count_cost(net.materialize(arch), net.input_shape)
        formula = net.cost(arch)
        assert abs(formula["macs"] - counted.macs) <= 0.01 * counted.macs
        assert abs(formula["params"] - counted.params) <= 0.01 * counted.params
    # the expectation at saturated probabilities is the largest network's cost, and it is differentiable
    width = torch.full((net.num_width_logits,), 30.0, requires_grad=True)
    expected = net.expected_cost(width, torch.full((net.num_depth_logits,), 30.0))
    assert float(expected["macs"].detach()) == pytest.approx(count_cost(net.model, net.input_shape).macs, rel=1e-4)
    (-expected["macs"]).backward()
    assert width.grad is not None and torch.isfinite(width.grad).all()


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_expected_cost_of_rows_is_each_rows_cost(name):
    """The search asks for every budget's expected cost in one batched call: each row's value and gradient are
    what a call for that row alone gives, and at 0/1 probabilities the row's cost is its architecture's."""
    net = _elastic(name)
    measure_table(net, _layer_timer)
    gen = torch.Generator().manual_seed(2)
    width = torch.randn(3, net.num_width_logits, generator=gen).requires_grad_()
    depth = torch.randn(3, net.num_depth_logits, generator=gen).requires_grad_()
    rows = net.expected_cost(width, depth)
    alone = [net.expected_cost(width[r], depth[r]) for r in range(3)]
    for metric in net.metrics:
        assert rows[metric].shape == (3,)
        torch.testing.assert_close(rows[metric], torch.stack([a[metric] for a in alone]))
    grads = torch.autograd.grad(rows["macs"].log().sum(), (width, depth))
    separate = torch.autograd.grad(sum(a["macs"].log() for a in alone), (width, depth))
    for got, want in zip(grads, separate):
        torch.testing.assert_close(got, want)
    arch = net.sample(width[0].detach(), depth[0].detach(), gen)

    def chain(lengths, kept):  # logits that keep the first ``kept`` of each chain with probability ~1
        return torch.cat([torch.where(torch.arange(n) < k, 30.0, -30.0) for n, k in zip(lengths, kept)])

    saturated = chain([n - 1 for n in net.num_units], [k - 1 for k in arch.units])
    skippable = [d - m for d, m in zip(net.depths, net.min_depths)]
    kept = chain(skippable, [k - m for k, m in zip(arch.depths, net.min_depths)])
    expected = net.expected_cost(torch.stack([saturated] * 2), torch.stack([kept] * 2))
    for metric, value in net.cost(arch).items():
        assert float(expected[metric][1]) == pytest.approx(value, rel=1e-4)


def _layer_timer(module: nn.Module, shape) -> float:
    """A deterministic stand-in for a device: 0.01 ms per conv/linear layer plus 1 ms per million MACs."""
    layers = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in module.modules())
    return 0.01 * layers + 1e-6 * count_cost(module, shape).macs


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_latency_table_predicts_measured_networks(name):
    net = _elastic(name)
    assert set(net.metrics) == set(net.cost(net.smallest())) == {"macs", "params"}
    table = measure_table(net, _layer_timer)  # installs itself on net
    assert set(net.metrics) == set(net.cost(net.smallest())) == {"macs", "params", "latency_ms"}
    assert table.summary()["timed_layers"] == sum(layer.kind != "norm" for layer in net.layers)
    assert table.scale == pytest.approx(1.0, rel=1e-3) and abs(table.offset) < 1e-3
    gen = torch.Generator().manual_seed(1)
    for bias in (-1, 0, 2):
        arch = net.sample(torch.randn(net.num_width_logits) + bias, torch.randn(net.num_depth_logits), gen)
        measured = _layer_timer(net.materialize(arch), net.input_shape)
        assert net.cost(arch)["latency_ms"] == pytest.approx(measured, rel=0.01)
    # the expectation is differentiable and, at saturated probabilities, the largest network's latency
    width = torch.full((net.num_width_logits,), 30.0, requires_grad=True)
    expected = net.expected_cost(width, torch.full((net.num_depth_logits,), 30.0))["latency_ms"]
    assert float(expected.detach()) == pytest.approx(_layer_timer(net.model, net.input_shape), rel=1e-3)
    expected.backward()
    assert width.grad is not None and torch.isfinite(width.grad).all()


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_hard_gates_compute_the_sliced_network(name):
    net = _elastic(name)
    for m in net.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, *net.input_shape)
    for _ in range(3):
        arch = net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen)
        sliced = net.materialize(arch).train()
        net.attach()
        try:
            net.set_hard(arch)
            with torch.no_grad():
                gated = net.model.train()(x)
        finally:
            net.detach()
        with torch.no_grad():
            assert torch.allclose(gated, sliced(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_sliced_runs_follow_the_supernets_mode(name):
    """A sliced pass runs in the supernet's train/eval mode, also after it changes between passes (the runner
    sets its skeletons' mode only when the supernet's changes): batch statistics in training, running ones in
    eval, as the materialised sub-network does."""
    net, shape = _float64_elastic(name)
    for m in net.model.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics unlike any batch's
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    gen = torch.Generator().manual_seed(5)
    arch = net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen)
    x = torch.randn(8, *shape, dtype=torch.float64)
    for training in (True, False, True, False):
        net.model.train(training)
        plain = net.materialize(arch).double().train(training)
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0  # the sliced pass never writes statistics
        with torch.no_grad():  # plain's weights went through float32: agreement to 1e-6, not 1e-10
            torch.testing.assert_close(net.run_sliced(arch, x), plain(x), atol=1e-6, rtol=1e-5)


def _float64_elastic(name: str) -> tuple[ElasticNet, tuple[int, ...]]:
    """A seeded elastic supernet without dropout, in float64: with small batches, a train-mode norm whose batch
    variance is tiny amplifies float32 rounding (two equivalent passes sum in different orders) into gradient
    differences of a few percent for some weights."""
    torch.manual_seed(0)
    model, shape = _model(name)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=8)
    net.model.double()
    return net, shape


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_sliced_runs_match_the_gated_network_in_outputs_and_gradients(name, channels_last):
    """run_sliced computes the sub-network on slices of the supernet's parameters (leading channels as views,
    which keep a channels_last supernet's layout): the masked pass's outputs and gradients, and the supernet's
    normalisation statistics stay as they were."""
    net, shape = _float64_elastic(name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, *shape, dtype=torch.float64)
    if channels_last:
        net.model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    archs = [net.smallest()] + [
        net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen) for _ in range(2)
    ]

    def outputs_and_grads(run):
        net.model.zero_grad(set_to_none=True)
        out = run()
        out.square().sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad for p in net.model.parameters()]

    for arch in archs:
        net.model.train()
        stats = {n: b.clone() for n, b in net.model.named_buffers()}
        sliced, sliced_grads = outputs_and_grads(lambda arch=arch: net.run_sliced(arch, x))
        for n, b in net.model.named_buffers():
            assert torch.equal(b, stats[n]), n
        net.attach()
        try:
            net.set_hard(arch)
            with frozen_norm_statistics(net.model):
                gated, gated_grads = outputs_and_grads(lambda: net.model(x))
        finally:
            net.detach()
        assert torch.allclose(sliced, gated, atol=1e-10)
        for a, b in zip(sliced_grads, gated_grads):  # each relative to its tensor's scale
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "resnet18_1d", "user"])
def test_soft_sliced_pass_is_the_expected_network_without_its_negligible_tail(name):
    """run_soft_sliced drops the units and blocks whose keep probability is below the tail and gates the rest
    by their probabilities: the set_soft pass's outputs and gradients (weights and logits) where the dropped
    part's gates are negligible, on a skeleton narrower than the supernet; tail 0 keeps everything, exactly."""
    net, shape = _float64_elastic(name)
    x = torch.randn(4, *shape, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    width = torch.randn(net.num_width_logits, generator=gen, dtype=torch.float64) + 2
    depth = torch.randn(net.num_depth_logits, generator=gen, dtype=torch.float64)
    start = 0
    for n in net.num_units:  # every gate's chain falls off (to ~1e-40) after a random unit, a block chain too
        cut = int(torch.randint(0, n - 1, (1,), generator=gen))
        width[start + cut : start + n - 1] = -90.0
        start += n - 1
    depth[: len(depth) // 2] = -90.0

    def outputs_and_grads(run):
        w, d = width.clone().requires_grad_(), depth.clone().requires_grad_()
        net.model.zero_grad(set_to_none=True)
        out = run(w, d)
        out.square().sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in net.model.parameters()]
        return out.detach(), [*grads, w.grad, torch.zeros_like(d) if d.grad is None else d.grad]

    def gated(w, d):
        net.attach()
        try:
            net.set_soft(w, d)
            with frozen_norm_statistics(net.model):
                return net.model(x)
        finally:
            net.detach()

    net.model.train()
    reference, reference_grads = outputs_and_grads(gated)
    for tail in (0.0, 1e-6):
        stats = {n: b.clone() for n, b in net.model.named_buffers()}
        sliced, sliced_grads = outputs_and_grads(lambda w, d, tail=tail: net.run_soft_sliced(w, d, x, tail))
        for n, b in net.model.named_buffers():
            assert torch.equal(b, stats[n]), n
        assert torch.allclose(sliced, reference, atol=1e-10)
        for a, b in zip(sliced_grads, reference_grads):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()
    skeleton = next(reversed(net._sliced.skeletons.values())).module  # the tail's, built last
    assert sum(t.numel() for t in skeleton.parameters()) < sum(p.numel() for p in net.model.parameters())


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_each_pass_builds_its_consumer_masks_once(name):
    """A pass builds each consumer's input mask once, shared by the consumers of the same channels (fewer masks
    than consumers: fewer launches on a GPU); the next pass, after the first one's backward freed its graph,
    builds its own from the gates set for it and computes the same gradients."""
    net, shape = _float64_elastic(name)
    net.model.train()
    x = torch.randn(6, *shape, dtype=torch.float64)
    width = torch.randn(net.num_width_logits, dtype=torch.float64, requires_grad=True)
    depth = torch.randn(net.num_depth_logits, dtype=torch.float64, requires_grad=True)
    grads = []
    net.attach()
    try:
        for _ in range(2):
            width.grad = None
            net.set_soft(width, depth)
            with frozen_norm_statistics(net.model):
                net.model(x).square().sum().backward()
            grads.append(width.grad.clone())
            assert 0 < len(net._input_masks) < len(net._consumers)
    finally:
        net.detach()
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_one_pass_per_batch_matches_one_pass_per_budget(name):
    """set_soft_rows runs every budget's expected network on its share of the batch in one pass: the same
    outputs and gradients (weights and architecture logits) as one set_soft pass per share; set_hard_rows runs
    one sampled sub-network per share in one masked pass: the same as running each sliced on its share. Both
    again in one pass of the sliced union of the rows' networks (run_rows_sliced)."""
    net, shape = _float64_elastic(name)
    net.model.train()
    x = torch.randn(10, *shape, dtype=torch.float64)
    shares = [slice(0, 4), slice(4, 7), slice(7, 10)]
    logits = [
        (torch.randn(net.num_width_logits, dtype=torch.float64), torch.randn(net.num_depth_logits, dtype=torch.float64))
        for _ in shares
    ]
    for w, d in logits:
        w.requires_grad_(), d.requires_grad_()
    params = list(net.model.parameters()) + [t for pair in logits for t in pair]

    def outputs_and_grads(run):
        for p in params:
            p.grad = None
        out = run()
        out.square().sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    def one_pass_per_share():
        outs = []
        for (w, d), part in zip(logits, shares):
            net.set_soft(w, d)
            outs.append(net.model(x[part]))
        return torch.cat(outs)

    def one_pass():
        net.set_soft_rows([(w, d, part) for (w, d), part in zip(logits, shares)])
        return net.model(x)

    gen = torch.Generator().manual_seed(1)
    archs = [net.sample(w.detach() + 1, d.detach(), gen) for w, d in logits[:2]] + [net.smallest()]

    def sliced_per_share():
        net.set_full()
        return torch.cat([net.run_sliced(arch, x[part]) for arch, part in zip(archs, shares)])

    def one_masked_pass():
        net.set_hard_rows(list(zip(archs, shares)))
        return net.model(x)

    def one_sliced_pass():  # the union of the rows' expected networks, sliced (tail 0: nothing left out)
        return net.run_rows_sliced(x, 0.0, soft=[(w, d, part) for (w, d), part in zip(logits, shares)])

    def one_sliced_hard_pass():
        return net.run_rows_sliced(x, 0.5, hard=list(zip(archs, shares)))

    stats = {n: b.clone() for n, b in net.model.named_buffers() if "running" in n}
    net.attach()
    try:
        with frozen_norm_statistics(net.model):
            soft = [outputs_and_grads(one_pass_per_share), outputs_and_grads(one_pass)]
            hard = [outputs_and_grads(sliced_per_share), outputs_and_grads(one_masked_pass)]
    finally:
        net.detach()
    soft_sliced, hard_sliced = outputs_and_grads(one_sliced_pass), outputs_and_grads(one_sliced_hard_pass)
    for n, b in net.model.named_buffers():
        if n in stats:
            assert torch.equal(b, stats[n]), n  # running statistics untouched
    assert any(g.abs().sum() > 0 for g in soft[1][1][-2 * len(shares) :])  # the logits did get gradients
    pairs = (soft, hard, (soft[0], soft_sliced), (hard[0], hard_sliced))
    for (apart, apart_grads), (together, together_grads) in pairs:
        assert torch.allclose(apart, together, atol=1e-10)
        for a, b in zip(apart_grads, together_grads):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()


def test_sampling_follows_the_markov_chains():
    net = _elastic("resnet18_cifar")
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
    model, shape = _model("resnet18_cifar")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    teacher = DNA(kd_teacher="largest")._kd_teacher(net, types.SimpleNamespace(model=model), None, None, None)
    x = torch.randn(2, *shape)
    torch.testing.assert_close(teacher(x), net.model.eval()(x))
    supernet = {p.data_ptr() for p in net.model.parameters()}
    assert all(not p.requires_grad and p.data_ptr() not in supernet for p in teacher.teacher.parameters())
    assert all(p.requires_grad for p in net.model.parameters())


def test_seed_teacher_of_the_fine_tunes_is_the_search_teacher_cache():
    """The search's frozen seed has remembered every training sample's logits; the fine-tunes reuse them."""
    model, _ = _model("cnn_small")
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
        return types.SimpleNamespace(median_ms=_layer_timer(model, shape))

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


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_rebuilt_spec_keeps_block_topology_when_slicing_equalises_widths(name):
    """A first block whose input and output widths become equal keeps its projection / lack of residual."""
    from netfit.models import arch_of, build_model
    from netfit.space.inherit import inherit_weights
    from netfit.space.subnet import SubnetSpace

    model, shape = _model(name)
    space = SubnetSpace(model, shape)
    sliced = space.materialize({g.id: 3 for g in space.prunable})  # every group at 3 channels
    rebuilt = build_model(arch_of(sliced))
    inherit_weights(rebuilt, sliced)
    assert max_difference(sliced, rebuilt, shape) < 1e-5


@pytest.mark.parametrize("split_batch", [True, False])
def test_architecture_step_moves_every_budget_or_one(split_batch):
    """split_batch: every budget's logits get a gradient at every step; else only the round-robin budget's."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = _model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    method = DNA(samples=0, warmup_epochs=0, split_batch=split_batch)
    arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    net.attach()
    try:
        out = method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
            StepContext(net.model.train(), net.model, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
        )
    finally:
        net.detach()
    moved = [bool(row.abs().sum() > 0) for row in arch.width.grad]
    assert moved == ([True] * 3 if split_batch else [False, True, False])  # step 4 -> budget 4 % 3 = 1
    assert out.metrics["expected_cost_ratio_min"] <= out.metrics["expected_cost_ratio_max"]


def test_architecture_pass_on_a_fraction_of_the_batch_is_that_fraction_alone():
    """arch_batch=0.5: the logits' gradient is the whole architecture pass's on the batch's first half (the
    budget loss unchanged), so the pass costs half as much."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = _model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    grads = []
    for arch_batch, size in ((0.5, 16), (1.0, 8)):
        method = DNA(samples=0, warmup_epochs=0, arch_batch=arch_batch)
        arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(net.model.train(), net.model, x[:size], y[:size], 0, 0, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads.append((arch.width.grad, arch.depth.grad))
    for half, alone in zip(*grads):
        assert half.abs().sum() > 0 and torch.allclose(half, alone, atol=1e-6)


@pytest.mark.parametrize("one_level", [False, True])
def test_architecture_step_and_weight_gradients(one_level):
    """Alternating: the soft expected-network pass only trains the logits, the weights get the sandwich's
    gradients alone. One-level: the soft pass's weight gradients are added to the sandwich's."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = _model("cnn_small")
    grown = grow(model, shape, 1.5, 0.5, np.random.default_rng(0))
    net = ElasticNet(grown, shape, units=4)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    grads, arch_grads = {}, {}
    for warmup in (0, 1):  # warmup 0: the architecture pass runs at epoch 0; warmup 1: it does not
        method = DNA(samples=0, warmup_epochs=warmup, one_level=one_level)
        arch = method.init_arch(net, [1e5], ["macs"], [len(s) for s in model.stages])
        grown.zero_grad(set_to_none=True)
        net.attach()
        try:
            method.step_fn(net, arch, [1e5], ["macs"], 0)(
                StepContext(grown.train(), grown, x, y, 0, 0, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads[warmup] = [p.grad.clone() for p in grown.parameters() if p.grad is not None]
        arch_grads[warmup] = arch.width.grad
    assert arch_grads[0] is not None and arch_grads[1] is None
    assert len(grads[0]) == len(grads[1])
    same = all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))
    assert same != one_level


@pytest.mark.parametrize("every_budget", [True, False])
def test_sandwich_trains_sub_networks_of_every_budget_or_one(every_budget, monkeypatch):
    """every_budget: each step draws ``samples`` sub-networks from EVERY budget's chains, each run on its own
    share of the batch (a budget's samples in one sliced pass with group_span 0; every budget's in one sliced
    pass when a group spans them); otherwise from one budget's chains (round-robin) on the whole batch."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = _model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    method = DNA(samples=2, warmup_epochs=1, every_budget=every_budget, sample_pass="sliced", group_span=0.0)
    arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
    drawn, batches, grouped = [], [], []
    sample, run_sliced, run_rows = net.sample, net.run_sliced, net.run_rows_sliced
    monkeypatch.setattr(net, "sample", lambda w, d, gen: drawn.append(w) or sample(w, d, gen))
    monkeypatch.setattr(net, "run_sliced", lambda sub, x: batches.append(len(x)) or run_sliced(sub, x))

    def rows_pass(x, tail, soft=(), hard=()):
        grouped.append([len(x[p]) for _, p in hard])
        return run_rows(x, tail, soft, hard)

    monkeypatch.setattr(net, "run_rows_sliced", rows_pass)
    x, y = torch.randn(15, *shape), torch.randint(0, 10, (15,))

    def step(method):
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(net.model.train(), net.model, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()

    step(method)
    rows = [next(r for r in range(3) if w is arch.width[r] or torch.equal(w, arch.width[r])) for w in drawn]
    if every_budget:
        assert rows == [0, 0, 1, 1, 2, 2] and batches == [15]  # the smallest alone, on the whole batch
        assert grouped == [[5, 5]] * 3  # each budget's two samples in one pass
        batches.clear(), grouped.clear()
        step(dataclasses.replace(method, group_span=1.0))
        assert batches == [15] and grouped == [[5] * 6]  # every budget's samples at once
    else:
        assert rows == [1, 1] and grouped == [[15, 15]] and batches == [15]  # step 4 -> budget 4 % 3 = 1


def test_batched_grouped_and_joint_passes_give_the_same_gradients(monkeypatch):
    """sample_pass="batched" runs the i-th sample of every budget in one masked pass with per-sample gates,
    "sliced" with a group_span of the whole supernet every sample in one sliced pass of their union, and
    soft_pass "joint" runs the expected networks and the samples of a group in one pass (sliced samples) or every
    network of the step, the smallest included, in one masked pass (batched samples): the search step's weight
    and logit gradients are those of one sliced pass per budget (group_span 0) and a batched architecture pass,
    with the expected networks cut at a soft_tail that leaves units out (the batched pass gates them 0, the sliced
    ones do not compute them)."""
    from netfit.engine import StepContext, TrainConfig

    tail = 0.2
    torch.manual_seed(0)
    model, shape = _model("resnet18_cifar")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    grown = net.model.double()  # float64: batch shares of 5 make float32 batch-norm rounding large
    limits = [2e6, 1e6, 4e5]
    x, y = torch.randn(15, *shape, dtype=torch.float64), torch.randint(0, 10, (15,))
    run_rows, passes = net.run_rows_sliced, []

    def rows_pass(x, tail, soft=(), hard=()):
        passes[-1].append((len(soft), len(hard)))
        return run_rows(x, tail, soft, hard)

    monkeypatch.setattr(net, "run_rows_sliced", rows_pass)
    forwards = []  # the batch of every pass through the supernet itself (a sliced pass runs a copy)
    grown.register_forward_pre_hook(lambda module, args: forwards[-1].append(len(args[0])))
    grads = []
    ways = [("sliced", "batched", 0.0), ("batched", "batched", 0.25), ("sliced", "batched", 1.0)]
    ways += [("batched", "sliced", 0.25), ("sliced", "sliced", 1.0), ("batched", "joint", 0.0)]
    ways += [("sliced", "joint", 0.0), ("sliced", "joint", 1.0)]
    for sample_pass, soft_pass, span in ways:
        method = DNA(
            samples=2, warmup_epochs=0, sample_pass=sample_pass, soft_pass=soft_pass, group_span=span, soft_tail=tail
        )
        arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages]).double()
        assert min(float(p.min()) for p in net.unit_probs(arch.width.detach())) < tail  # the tail leaves units out
        grown.zero_grad(set_to_none=True)
        passes.append([]), forwards.append([])
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(grown.train(), grown, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads.append([p.grad.clone() for p in [*grown.parameters(), *arch.parameters()] if p.grad is not None])
    for other in grads[1:]:
        assert len(grads[0]) == len(other)
        for a, b in zip(grads[0], other):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()
    assert passes[2] == [(0, 6)] and passes[4] == [(3, 0), (0, 6)]  # sliced apart: a pass each
    assert passes[-1] == [(3, 6)]  # joint: one pass for all of them
    assert passes[-2] == [(1, 2)] * 3  # span 0: per budget, its expected network and its two samples
    assert forwards[1] == [15, 15, 15, 15]  # batched: the largest, the expected networks, each sample index
    assert passes[-3] == [] and forwards[-3] == [15, 15 + 2 * 15 + 15]  # fused: the largest, then all at once


def test_seed_as_inplace_teacher_drops_only_the_largest_pass():
    """inplace_teacher=seed: a step's gradients are the sandwich step's without the largest network's
    cross-entropy (given the same teacher logits), no batch norm statistics move, and no logits are reported."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = _model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.0, 0.0, np.random.default_rng(0)), shape, units=4)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    limits = [1e5, 5e4]
    method = DNA(warmup_epochs=0, samples=1)
    arch = method.init_arch(net, limits, ["macs"] * 2, [len(s) for s in model.stages])
    model_ = net.model.train()

    def step(frozen=None):
        model_.zero_grad(set_to_none=True)
        arch.width.grad = arch.depth.grad = None
        net.attach()
        try:
            out = method.step_fn(net, arch, limits, ["macs"] * 2, 0, frozen)(
                StepContext(model_, model_, x, y, 0, 3, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        return out, {n: p.grad.clone() for n, p in model_.named_parameters()}, arch.width.grad.clone()

    stats = {n: b.clone() for n, b in model_.named_buffers()}
    largest = model_(x)
    ce = torch.nn.functional.cross_entropy(largest, y)
    ce_grads = dict(zip([n for n, _ in model_.named_parameters()], torch.autograd.grad(ce, model_.parameters())))
    buffers = dict(model_.named_buffers())
    for name, value in stats.items():  # the pass above moved them: put them back
        buffers[name].copy_(value)
    sandwich, grads, width_grad = step()
    frozen_out, frozen_grads, frozen_width_grad = step(lambda inputs, ids, channels_last: largest.detach())
    assert sandwich.logits is not None and frozen_out.logits is None and torch.isfinite(frozen_out.loss)
    torch.testing.assert_close(frozen_width_grad, width_grad)
    for name, grad in grads.items():
        torch.testing.assert_close(frozen_grads[name] + ce_grads[name], grad, atol=1e-5, rtol=1e-4)
    before = {n: b.clone() for n, b in model_.named_buffers() if "running" in n}
    step(lambda inputs, ids, channels_last: largest.detach())
    assert before and all(torch.equal(buffers[n], v) for n, v in before.items())
