"""DNA's space: growth preserves the function, the fit-to-limit scale-ups are the widest / deepest within it,
the expected cost and the latency table agree with what the networks cost, rebuilt specs keep their topology."""

import types

import numpy as np
import pytest
import torch

from _dna_models import elastic_supernet, layer_timer, small_model
from netfit.cost import count_cost
from netfit.errors import NetfitError
from netfit.methods.dna_networks import searched_network, top_up
from netfit.models import arch_of
from netfit.space.channels import trace_channel_groups
from netfit.space.elastic import ElasticNet
from netfit.space.grow import deepen, deepen_to_fit, grow, max_difference, order_channels, widen, widen_to_fit
from netfit.space.latency_table import measure_table
from netfit.space.prune import remap_channels, slice_channels

BUILT_INS = ["resnet18_cifar", "mobilenetv2_cifar", "resnet18_1d", "cnn_small"]


@pytest.mark.parametrize("name", [*BUILT_INS, "user"])
def test_growth_preserves_the_function_and_grows(name):
    model, shape = small_model(name)
    grown = grow(model, shape, 1.5, 0.5, np.random.default_rng(0))
    assert max_difference(model, grown, shape) < 1e-4
    seed_groups = [g for g in trace_channel_groups(model, torch.zeros(1, *shape)) if g.prunable]
    seed_width = sum(g.size for g in seed_groups)
    grown_groups = [g for g in trace_channel_groups(grown, torch.zeros(1, *shape)) if g.prunable]
    assert sum(g.size for g in grown_groups) >= 1.5 * seed_width
    if name != "user":
        assert [len(s) for s in grown.stages] == [n + -(-n // 2) for n in (len(s) for s in model.stages)]


def test_growth_steps_each_preserve_the_function():
    model, shape = small_model("resnet18_cifar")
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
    model, shape = small_model(name)
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
    model, shape = small_model("resnet18_cifar")
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
    model, shape = small_model(name)
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
    model, shape = small_model("user")
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


def test_top_up_is_the_greedy_walk_priced_in_batches():
    """``top_up`` prices every group's trial in one call; it must add the same channels as the plain greedy
    walk (one ``cost_at`` per trial, first fitting group in the order of the searched shares)."""
    net = elastic_supernet("mobilenetv2_cifar")
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
    model, shape = small_model(name)
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
    net = elastic_supernet(name)
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
    net = elastic_supernet(name)
    measure_table(net, layer_timer)
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


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_latency_table_predicts_measured_networks(name):
    net = elastic_supernet(name)
    assert set(net.metrics) == set(net.cost(net.smallest())) == {"macs", "params"}
    table = measure_table(net, layer_timer)  # installs itself on net
    assert set(net.metrics) == set(net.cost(net.smallest())) == {"macs", "params", "latency_ms"}
    assert table.summary()["timed_layers"] == sum(layer.kind != "norm" for layer in net.layers)
    assert table.scale == pytest.approx(1.0, rel=1e-3) and abs(table.offset) < 1e-3
    gen = torch.Generator().manual_seed(1)
    for bias in (-1, 0, 2):
        arch = net.sample(torch.randn(net.num_width_logits) + bias, torch.randn(net.num_depth_logits), gen)
        measured = layer_timer(net.materialize(arch), net.input_shape)
        assert net.cost(arch)["latency_ms"] == pytest.approx(measured, rel=0.01)
    # the expectation is differentiable and, at saturated probabilities, the largest network's latency
    width = torch.full((net.num_width_logits,), 30.0, requires_grad=True)
    expected = net.expected_cost(width, torch.full((net.num_depth_logits,), 30.0))["latency_ms"]
    assert float(expected.detach()) == pytest.approx(layer_timer(net.model, net.input_shape), rel=1e-3)
    expected.backward()
    assert width.grad is not None and torch.isfinite(width.grad).all()


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_rebuilt_spec_keeps_block_topology_when_slicing_equalises_widths(name):
    """A first block whose input and output widths become equal keeps its projection / lack of residual."""
    from netfit.models import arch_of, build_model
    from netfit.space.inherit import inherit_weights
    from netfit.space.subnet import SubnetSpace

    model, shape = small_model(name)
    space = SubnetSpace(model, shape)
    sliced = space.materialize({g.id: 3 for g in space.prunable})  # every group at 3 channels
    rebuilt = build_model(arch_of(sliced))
    inherit_weights(rebuilt, sliced)
    assert max_difference(sliced, rebuilt, shape) < 1e-5
