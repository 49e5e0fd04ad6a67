"""netfit.space's slicing, importance and weight inheritance: sliced networks keep their shapes and function,
importance ranks channels as computed by hand, inherited weights land where they belong."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from _shapes import input_shape
from _space_models import CatNet, FlatNet, MobileBlock, ResNet, group_of, members
from netfit.errors import CheckpointError, UnsupportedLayerError
from netfit.space import (
    ChannelGroupError,
    Member,
    channel_activity,
    inherit_weights,
    keep_top,
    l1_importance,
    slice_channels,
    trace_channel_groups,
)
from netfit.space.layers import share_batch_norm
from user_zoo import randomise_bn


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(ResNet, (2, 3, 16, 16)), (MobileBlock, (2, 3, 8, 8)), (CatNet, (2, 3, 6, 6)), (FlatNet, (2, 1, 8, 8))],
)
def test_slice_halves_every_prunable_group(factory, shape) -> None:
    model = factory().eval()
    x = torch.randn(*shape)
    groups = trace_channel_groups(model, x)
    keep = {g.id: keep_top(l1_importance(model, g), max(1, g.size // 2)) for g in groups if g.prunable}
    small = slice_channels(model, groups, keep)
    assert small(x).shape == model(x).shape
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # the original is untouched and the sliced model is consistent: tracing it again gives the halved sizes
    assert model(x).shape == small(x).shape
    again = trace_channel_groups(small, x)
    assert [g.size for g in again] == [len(keep[g.id]) if g.id in keep else g.size for g in groups]


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(ResNet, (2, 3, 16, 16)), (MobileBlock, (2, 3, 8, 8)), (CatNet, (2, 3, 6, 6)), (FlatNet, (2, 1, 8, 8))],
)
def test_sliced_view_equals_slice_channels_and_leaves_the_model_alone(factory, shape) -> None:
    """The supernet's cheap skeleton: the same sliced network as slice_channels (tensors, attributes, outputs),
    the same selections as channel_selections, the original unchanged, and only untouched modules shared."""
    from netfit.space.prune import channel_selections, sliced_view

    model = factory().eval()
    x = torch.randn(*shape)
    groups = trace_channel_groups(model, x)
    keep = {g.id: keep_top(l1_importance(model, g), max(1, g.size // 2)) for g in groups if g.prunable}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = slice_channels(model, groups, keep)
    view, selections = sliced_view(model, groups, keep)
    assert {k: v.shape for k, v in view.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}
    for name, module in expected.named_modules():
        other = view.get_submodule(name)
        for attr in ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features"):
            assert getattr(other, attr, None) == getattr(module, attr, None), (name, attr)
    torch.testing.assert_close(view(x), expected(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert selections.keys() == channel_selections(model, groups, keep).keys()
    one = next(g for g in groups if g.prunable)  # slicing one group: only its layers and their ancestors copied
    part, _ = sliced_view(model, groups, {one.id: keep[one.id]})
    touched = {m.module for m in one.members}
    for name, module in model.named_modules():
        copied = any(t == name or t.startswith(f"{name}.") or not name for t in touched)
        assert (part.get_submodule(name) is module) != copied, name


def test_slice_shapes_and_attributes() -> None:
    model = MobileBlock()
    groups = trace_channel_groups(model, torch.randn(1, 3, 8, 8))
    wide, stream = group_of(groups, "expand"), group_of(groups, "stem")
    small = slice_channels(model, groups, {wide.id: torch.tensor([0, 3, 5]), stream.id: torch.tensor([1, 2])})
    assert small.expand.weight.shape == (3, 2, 1, 1) and small.expand.out_channels == 3
    assert small.dw.weight.shape == (3, 1, 3, 3) and small.dw.groups == small.dw.in_channels == 3
    assert small.bn_dw.running_var.shape == (3,) and small.bn_dw.num_features == 3
    assert small.project.weight.shape == (2, 3, 1, 1) and small.head.in_features == 2
    assert torch.equal(small.dw.weight, model.dw.weight[[0, 3, 5]])
    assert torch.equal(small.project.weight, model.project.weight[[1, 2]][:, [0, 3, 5]])
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_slice_flatten_linear_and_concat_columns() -> None:
    model = FlatNet()
    groups = trace_channel_groups(model, torch.randn(1, 1, 8, 8))
    small = slice_channels(model, groups, {group_of(groups, "conv").id: torch.tensor([2])})
    assert torch.equal(small.fc1.weight, model.fc1.weight[:, 32:48])
    cat = CatNet()
    groups = trace_channel_groups(cat, torch.randn(1, 3, 6, 6))
    small = slice_channels(cat, groups, {group_of(groups, "b").id: torch.tensor([0, 5])})
    assert torch.equal(small.mix.weight, cat.mix.weight[:, [0, 1, 2, 3, 4, 9]])
    assert torch.equal(small.bn.running_mean, cat.bn.running_mean[[0, 1, 2, 3, 4, 9]])


@pytest.mark.parametrize(("factory", "shape"), [(ResNet, (3, 3, 16, 16)), (MobileBlock, (3, 3, 8, 8))])
def test_function_preservation(factory, shape) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    randomise_bn(model)
    x = torch.randn(*shape)
    groups = trace_channel_groups(model, x)
    keep = {}
    with torch.no_grad():
        for g in groups:
            if g.prunable:
                kept = torch.arange(0, g.size, 2)
                dropped = torch.arange(1, g.size, 2)
                keep[g.id] = kept
                for m in g.members:  # make the dropped channels inert: nothing reads them
                    if m.role == "in":
                        model.get_submodule(m.module).weight[:, m.indices(dropped)] = 0
    small = slice_channels(model, groups, keep)
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    # without the inert trick the function changes: the test can fail
    assert not torch.allclose(slice_channels(factory().eval(), groups, keep)(x), factory().eval()(x), atol=1e-5)


def test_slice_errors() -> None:
    model = ResNet()
    groups = trace_channel_groups(model, torch.randn(1, 3, 8, 8))
    logits = group_of(groups, "fc")
    with pytest.raises(UnsupportedLayerError, match=rf"^channel group {logits.id} cannot be pruned: .*output"):
        slice_channels(model, groups, {logits.id: torch.tensor([0, 1])})
    slice_channels(model, groups, {logits.id: torch.arange(5)})  # full size is fine
    with pytest.raises(ChannelGroupError, match="unknown channel group 99"):
        slice_channels(model, groups, {99: torch.tensor([0])})
    stem = group_of(groups, "stem").id
    for bad in (torch.tensor([2, 1]), torch.tensor([0, 4]), torch.tensor([], dtype=torch.long), torch.tensor([0.5])):
        with pytest.raises(ChannelGroupError, match=rf"keep\[{stem}\]"):
            slice_channels(model, groups, {stem: bad})


def test_groupnorm_layernorm_slicing() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Conv2d(8, 6, 1), nn.Flatten(2), nn.LayerNorm(4), nn.Linear(4, 2)
    )
    x = torch.randn(1, 3, 2, 2)
    groups = trace_channel_groups(model, x)
    gn = group_of(groups, "0")
    assert ("1", "norm", 0, 1) in members(gn)
    small = slice_channels(model, groups, {gn.id: torch.tensor([0, 1, 4, 7])})
    assert small[1].num_channels == 4 and small[1].weight.shape == (4,) and small(x).shape == (1, 6, 2)
    with pytest.raises(UnsupportedLayerError, match=r"GroupNorm '1' has num_groups=4.*multiple of 4"):
        slice_channels(model, groups, {gn.id: torch.tensor([0, 1, 2])})
    # a LayerNorm over the features of token-like [N, T, F] tensors follows the Linear that made them
    ln = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2))
    groups = trace_channel_groups(ln, torch.randn(2, 3, 4))
    hidden = group_of(groups, "0")
    assert hidden.prunable and ("1", "norm", 0, 1) in members(hidden)
    small = slice_channels(ln, groups, {hidden.id: torch.tensor([1, 2])})
    assert small[1].normalized_shape == (2,) and small(torch.randn(2, 3, 4)).shape == (2, 3, 2)


# ---- importance -----------------------------------------------------------------------------------------


def test_l1_importance_hand_computed() -> None:
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 3.0], [-4.0, 0.0]]))  # L1 rows: 2, 3, 4
        model[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    group = group_of(trace_channel_groups(model, torch.randn(4, 2)), "0")
    scores = l1_importance(model, group)
    expected = torch.tensor([2.0, 3.0, 4.0]) / 3 * (torch.tensor([1.0, 2.0, 0.5]) / (3.5 / 3))
    torch.testing.assert_close(scores, expected)
    assert keep_top(scores, 2).tolist() == [0, 1]


def test_l1_importance_members_weigh_equally() -> None:
    model = ResNet()
    groups = trace_channel_groups(model, torch.randn(1, 3, 8, 8))
    stage = group_of(groups, "b1.conv2")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
        model.b1.conv2.weight.fill_(1000.0)  # huge but uniform: adds the same to every channel
        model.b2.conv2.weight.fill_(1.0)
        model.b1.shortcut[0].weight.fill_(0.01)
        model.b1.shortcut[0].weight[5] = 0.1
    scores = l1_importance(model, stage)
    assert scores.argmax().item() == 5 and scores.shape == (8,)
    torch.testing.assert_close(scores.sum(), torch.tensor(24.0))


def test_l1_importance_pairs_norm_with_its_producer() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 1, bias=False), nn.Conv2d(1, 4, 1, bias=False)
            self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)
            self.head = nn.Conv2d(4, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ya, yb = self.a(x), self.b(x)  # both producers run before either norm
            return self.head(self.bn_a(ya) + self.bn_b(yb))

    model = Pair()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 2.0]).view(4, 1, 1, 1))
        model.b.weight.fill_(1.0)
        model.bn_a.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 5.0]))
    group = group_of(trace_channel_groups(model, torch.randn(1, 1, 2, 2)), "a")
    assert [m.module for m in group.members][:4] == ["a", "bn_a", "b", "bn_b"]
    expected = torch.tensor([0.5, 1.0, 1.5, 1.0]) * torch.tensor([0.5, 0.5, 0.5, 2.5]) + 1.0
    torch.testing.assert_close(l1_importance(model, group), expected)


def _dead_first_block() -> MobileBlock:
    """A MobileBlock whose hidden channel 0 has the largest expand weights and |gamma| but a depthwise norm
    beta that keeps it below zero, so the ReLU after it never lets it through: weight norms rank it first."""
    torch.manual_seed(0)
    model = MobileBlock().eval()
    with torch.no_grad():
        model.expand.weight[0].mul_(10.0)
        model.bn_e.weight[0] = 5.0
        model.bn_e.bias.fill_(2.0)  # every other channel mostly passes both ReLUs
        model.bn_dw.bias.fill_(2.0)
        model.bn_dw.bias[0] = -1e3
    return model


def test_channel_activity_ranks_a_dead_channel_last(monkeypatch) -> None:
    from netfit.space import importance

    model, x = _dead_first_block(), torch.randn(16, 3, 6, 6)
    groups = trace_channel_groups(model, x[:1])
    hidden = group_of(groups, "dw", "dw")
    assert l1_importance(model, hidden).argmax().item() == 0  # weights alone pick the dead channel
    activity = channel_activity(model, groups, x)
    y = model.bn_dw(model.dw(F.relu6(model.bn_e(model.expand(model.stem(x)))))).relu()  # what project reads
    std = y.transpose(0, 1).reshape(12, -1).std(1, unbiased=False)
    torch.testing.assert_close(activity[hidden.id], std / std.mean())
    assert activity[hidden.id][0] == 0
    monkeypatch.setattr(importance, "PROBE_CHUNK", 5)  # pooled over uneven chunks: the same statistics
    torch.testing.assert_close(channel_activity(model, groups, x)[hidden.id], activity[hidden.id])
    scores = l1_importance(model, hidden, activity[hidden.id])
    assert scores.argmin().item() == 0 and scores[1:].min() > 0
    assert model.training is False  # left in the mode it came in


def test_probe_keeps_dead_channels_out_of_narrow_subnets() -> None:
    from netfit.space.grow import max_difference, order_channels
    from netfit.space.subnet import SubnetSpace

    model, x = _dead_first_block(), torch.randn(16, 3, 6, 6)
    ordered = order_channels(model, (3, 6, 6), x)
    assert max_difference(model, ordered, (3, 6, 6)) < 1e-5
    assert ordered.bn_dw.bias[-1] == -1e3 and ordered.bn_dw.bias[0] != -1e3
    assert order_channels(model, (3, 6, 6)).bn_dw.bias[0] == -1e3  # without a probe: weights decide
    space = SubnetSpace(model, (3, 6, 6), x)
    hidden = group_of(space.groups, "dw", "dw")
    narrow = space.materialize(space.full_widths() | {hidden.id: 1})
    assert narrow.bn_dw.bias.tolist() != [-1e3]


def test_keep_top() -> None:
    assert keep_top(torch.tensor([0.1, 5.0, 3.0, 5.0]), 3).tolist() == [1, 2, 3]
    assert keep_top(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]
    with pytest.raises(ChannelGroupError, match="cannot keep 0 of 3"):
        keep_top(torch.ones(3), 0)


# ---- inheritance ----------------------------------------------------------------------------------------


def test_inherit_weights_depth_change() -> None:
    deep = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    shallow = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
    report = inherit_weights(shallow, deep)
    assert report == {
        "copied": ["0.weight", "0.bias", "1.weight", "1.bias"],
        "fresh": [],
        "dropped": ["2.weight", "2.bias"],
    }
    assert torch.equal(shallow[1].weight, deep[1].weight)
    grown = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    fresh_w = grown[3].weight.clone()
    report = inherit_weights(grown, deep)
    assert report["fresh"] == ["3.weight", "3.bias"] and torch.equal(grown[3].weight, fresh_w)
    assert torch.equal(grown[2].bias, deep[2].bias)


def test_inherit_weights_shape_mismatch() -> None:
    dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))
    before = dst[0].weight.clone()
    with pytest.raises(CheckpointError, match=r"cannot inherit '1.weight': shape \(5, 4\) in the source"):
        inherit_weights(dst, src)
    assert torch.equal(dst[0].weight, before)  # nothing copied


def test_member_indices() -> None:
    assert Member("fc", "in", offset=4, repeat=3).indices(torch.tensor([0, 2])).tolist() == [4, 5, 6, 10, 11, 12]


# ---- built-in models ------------------------------------------------------------------------------------


def _builtin_models() -> list[str]:
    try:
        from netfit.models import list_models
    except ImportError:
        return []
    return list_models()


@pytest.mark.parametrize("name", _builtin_models() or [pytest.param("none", marks=pytest.mark.skip("no models"))])
def test_builtin_models_halve_and_run(name: str) -> None:
    from netfit.models import create_model

    shape = input_shape(name)
    model = create_model(name, in_chans=shape[0]).eval()
    x = torch.randn(2, *shape)
    groups = trace_channel_groups(model, x)
    keep = {g.id: keep_top(l1_importance(model, g), max(1, g.size // 2)) for g in groups if g.prunable}
    assert keep, f"{name}: nothing prunable: {[g.reason for g in groups]}"
    small = slice_channels(model, groups, keep)
    assert small(x).shape == model(x).shape


def test_fit_width_widest_network_under_the_limit_each_built_once() -> None:
    from netfit.cost import count_macs
    from netfit.models import create_model
    from netfit.space.subnet import SubnetSpace

    model = create_model("cnn_small", in_chans=1, num_classes=10)
    space = SubnetSpace(model, (1, 8, 8))
    built: list[tuple[int, ...]] = []

    def macs(net: nn.Module) -> float:
        built.append(tuple(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)))
        return count_macs(net, (1, 8, 8))

    limit = 0.4 * count_macs(model, (1, 8, 8))
    scale, net, cost = space.fit_width(macs, limit)
    assert cost == count_macs(net, (1, 8, 8)) <= limit
    assert len(built) == len(set(built)) < 18, built  # 16 bisection steps + both ends, repeats not rebuilt
    wider = space.materialize(space.scaled_widths(min(1.0, scale + 1 / 64)))
    assert count_macs(wider, (1, 8, 8)) > limit  # a step wider is over: the widest under the limit


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("name", ["mobilenetv2_cifar", "resnet18_cifar", "resnet18_1d"])
def test_fit_width_priced_by_the_formula_builds_the_counted_network_once(name, metric, monkeypatch) -> None:
    """MACs and params by the width formula: the same scale and network as counting every trial, one network
    built; a formula that is off falls back to counting."""
    from netfit.cost import count_cost
    from netfit.models import arch_of, create_model
    from netfit.space.subnet import SubnetSpace

    shape = input_shape(name)
    model = create_model(name, in_chans=shape[0], num_classes=10, width_mult=0.25)
    space = SubnetSpace(model, shape)
    cost = lambda m: getattr(count_cost(m, shape), metric)  # noqa: E731
    limit = 0.3 * cost(model)
    counted = space.fit_width(cost, limit)
    builds, materialize = [], space.materialize
    monkeypatch.setattr(space, "materialize", lambda *a: builds.append(a) or materialize(*a))
    priced = space.fit_width(cost, limit, formula=space.formula_price(metric))
    assert len(builds) == 1 and priced[0] == counted[0] and priced[2] == counted[2] <= limit
    assert arch_of(priced[1]) == arch_of(counted[1])
    exact = space.formula_price(metric)
    halved = space.fit_width(cost, limit, formula=lambda w: exact(w) / 2)  # over the limit when built
    assert len(builds) > 2 and halved[0] == counted[0] and halved[2] == counted[2]
    floor = space.fit_width(cost, limit, formula=lambda w: exact(w) * 100)  # "infeasible" by the formula alone
    assert floor[0] == counted[0] and floor[2] == counted[2]
    assert space.formula_price("latency_ms") is None
    with pytest.raises(ValueError, match="full-depth"):
        space.fit_width(cost, limit, depths=[1, 1, 1, 1], formula=exact)


@pytest.mark.parametrize(
    ("shape", "channels_last"), [((12, 5, 3, 3), False), ((12, 5, 3, 3), True), ((12, 5, 7), False), ((12, 5), False)]
)
@pytest.mark.parametrize("sizes", [(4, 4, 4), (5, 4, 3)])
def test_share_batch_norm_normalises_each_share_alone(shape, channels_last, sizes):
    """A training-mode batch norm per share (outputs and gradients), in the input's memory layout."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    x.requires_grad_()
    weight, bias = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    parts = [slice(int(a), int(b)) for a, b in itertools.pairwise(np.cumsum((0, *sizes)))]
    out = share_batch_norm(x, parts, weight, bias, 1e-5)
    ref = torch.cat([F.batch_norm(x[p], None, None, weight, bias, True, 0.0, 1e-5) for p in parts])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert out.stride() == x.stride()
