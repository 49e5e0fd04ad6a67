"""User models whose concatenations meet single convs in elementwise ops (squeeze-excite on a concatenation, a
projection residual, Ghost, DenseNet and Inception blocks, chunks): the tracer splits the coarser groups instead
of freezing them, and slicing, importance, the elastic space and growth handle layers covered by several groups.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from netfit.cost import count_cost, count_macs
from netfit.space import ChannelGroup, keep_top, l1_importance, slice_channels, trace_channel_groups
from netfit.space.elastic import Arch, ElasticNet
from netfit.space.grow import grow, max_difference
from netfit.space.prune import sliced_view
from netfit.space.subnet import SubnetSpace
from user_zoo import (
    SHAPE,
    ChunkNet,
    DenseNet,
    EfficientNet,
    FixedSplitNet,
    GhostNet,
    InceptionNet,
    MobileNetV2,
    MobileNetV3,
    ResNet,
    SENet,
    SharedNet,
    randomise_bn,
)

MODELS = [SENet, GhostNet, DenseNet, InceptionNet, ChunkNet, ResNet, MobileNetV2, MobileNetV3, EfficientNet]


def _model(factory) -> nn.Module:
    """A model with non-trivial norm statistics, so slicing mistakes show up in the outputs."""
    torch.manual_seed(0)
    return randomise_bn(factory().eval())


def _trace(model: nn.Module) -> list[ChannelGroup]:
    return trace_channel_groups(model, torch.randn(2, *SHAPE))


def _group_of(groups: list[ChannelGroup], module: str, role: str = "out", offset: int = 0) -> ChannelGroup:
    found = [g for g in groups if any((m.module, m.role, m.offset) == (module, role, offset) for m in g.members)]
    assert len(found) == 1, (module, role, offset, found)
    return found[0]


def _members(group: ChannelGroup) -> set[tuple[str, str, int]]:
    return {(m.module, m.role, m.offset) for m in group.members}


# ---- tracing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "prunable", "total"),
    [
        (SENet, 10, 12),
        (GhostNet, 1, 3),
        (DenseNet, 5, 7),
        (InceptionNet, 11, 13),
        (ChunkNet, 2, 4),
        (ResNet, 9, 11),
        (MobileNetV2, 9, 11),
        (MobileNetV3, 12, 14),
        (EfficientNet, 14, 16),
    ],
)
def test_only_input_and_logits_are_frozen(factory, prunable, total) -> None:
    groups = _trace(factory())
    assert (sum(g.prunable for g in groups), len(groups)) == (prunable, total)
    frozen = {g.reason for g in groups if not g.prunable}
    assert frozen == {"these are the model input channels", "it feeds the model output"}
    assert [g.id for g in groups] == list(range(len(groups)))


def test_concat_se_block_splits_the_gate_and_projection() -> None:
    """The SE expand conv and the projection (one group of C each) meet the concatenation (two groups of C/2):
    both are split, every half joins the branch it faces."""
    groups = _trace(SENet())
    for block, c, reduce_ in (("b1", 32, "conv"), ("b2", 48, "linear"), ("b3", 64, "conv")):
        h, nxt = c // 2, {"b1": "b2", "b2": "b3", "b3": None}[block]
        for branch, offset in (("a", 0), ("b", h)):
            group = _group_of(groups, f"{block}.{branch}.0")
            assert group.prunable and group.size == h, reduce_
            expected = {
                (f"{block}.{branch}.0", "out", 0),
                (f"{block}.{branch}.1", "norm", 0),
                (f"{block}.reduce", "in", offset),
                (f"{block}.expand", "out", offset),
                (f"{block}.proj.0", "out", offset),
                (f"{block}.proj.1", "norm", offset),
            }
            if nxt:
                expected |= {(f"{nxt}.{m}.0", "in", offset) for m in ("a", "b", "proj")}
            else:
                expected |= {("fc", "in", offset)}
            assert _members(group) == expected
        squeeze = _group_of(groups, f"{block}.reduce")
        assert squeeze.prunable and _members(squeeze) == {(f"{block}.reduce", "out", 0), (f"{block}.expand", "in", 0)}


def test_ghost_and_chunk_join_the_halves_of_one_layer() -> None:
    """Halves that are added to (or gated by) each other are the same channels: one group covering two ranges
    of one layer, so keeping channel j keeps it in both halves."""
    (ghost,) = [g for g in _trace(GhostNet()) if g.prunable]
    assert ghost.size == 8
    assert {("stem.0", "out", 0), ("stem.0", "out", 8), ("stem.1", "norm", 8), ("g1.cheap.0", "dw", 0)} <= _members(
        ghost
    )
    assert {("g2.primary.0", "in", 0), ("g2.primary.0", "in", 8), ("fc", "in", 0), ("fc", "in", 8)} <= _members(ghost)
    groups = _trace(ChunkNet())
    glu = _group_of(groups, "glu")
    assert glu.size == 8 and {("glu", "out", o) for o in (0, 8, 16, 24)} <= _members(glu)
    assert _group_of(groups, "branch.0") is glu


def test_dense_block_offsets() -> None:
    groups = _trace(DenseNet())
    for k, offset in enumerate((8, 14, 20)):
        group = _group_of(groups, f"layers.{k}.2")
        assert (
            group.prunable
            and ("norm", "norm", offset) in _members(group)
            and ("trans", "in", offset) in _members(group)
        )
    stem = _group_of(groups, "stem")
    assert {(f"layers.{k}.0", "norm", 0) for k in range(3)} <= _members(stem)


def test_inception_residual_splits_the_stem() -> None:
    groups = _trace(InceptionNet())
    for branch, offset in (("b1.0", 0), ("b3.1.0", 6), ("b5.2.0", 10), ("bp.0", 13)):
        group = _group_of(groups, f"i1.{branch}")
        assert group is _group_of(groups, "stem.0", "out", offset) is _group_of(groups, f"i2.{branch}")
        assert ("head", "in", offset) in _members(group)


def test_layer_called_on_one_group_and_on_a_concatenation() -> None:
    model = SharedNet().eval()
    groups = _trace(model)
    assert _members(_group_of(groups, "b")) == {("a", "out", 0), ("shared", "in", 0), ("b", "out", 0)}
    assert _members(_group_of(groups, "c")) == {("a", "out", 4), ("shared", "in", 4), ("c", "out", 0)}
    assert all(g.prunable for g in groups[1:-1])
    keep = {g.id: torch.tensor([1, 2]) for g in groups if g.prunable}
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(sliced_view(model, groups, keep)[0](x), slice_channels(model, groups, keep)(x))


def test_fixed_split_sizes_freeze_only_what_they_split() -> None:
    groups = _trace(FixedSplitNet())
    conv = _group_of(groups, "conv")
    assert not conv.prunable and "splits the channel dim at fixed positions" in conv.reason
    assert _group_of(groups, "stem.0").prunable and _group_of(groups, "head").prunable


# ---- slicing and the consumers of the groups --------------------------------------------------------------


@pytest.mark.parametrize("factory", MODELS)
def test_slicing_keeps_the_function_of_the_kept_channels(factory) -> None:
    model = _model(factory)
    x = torch.randn(3, *SHAPE)
    groups = _trace(model)
    keep = {g.id: keep_top(l1_importance(model, g), max(1, g.size // 2)) for g in groups if g.prunable}
    full = model(x)
    with torch.no_grad():  # make the dropped channels inert: nothing reads them
        for g in groups:
            if g.id in keep:
                dropped = torch.tensor([c for c in range(g.size) if c not in keep[g.id].tolist()], dtype=torch.long)
                for m in g.members:
                    if m.role == "in" and len(dropped):
                        model.get_submodule(m.module).weight[:, m.indices(dropped)] = 0
    small = slice_channels(model, groups, keep)
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, model(x), atol=1e-5)  # dropping the channels did change the function
    view, _ = sliced_view(model, groups, keep)
    torch.testing.assert_close(view(x), small(x))
    again = _trace(small)
    assert [g.size for g in again] == [len(keep[g.id]) if g.id in keep else g.size for g in groups]


def test_importance_pairs_each_range_with_its_own_norm() -> None:
    model = _model(GhostNet)
    (ghost,) = [g for g in _trace(model) if g.prunable]

    def scaled(t: torch.Tensor) -> torch.Tensor:
        return t / t.mean()

    def l1(name: str, offset: int, dim: int = 0) -> torch.Tensor:
        w = model.get_submodule(name).weight.detach().abs().transpose(0, dim)
        return w.reshape(w.shape[0], -1).sum(1)[offset : offset + 8]

    def gamma(name: str, offset: int) -> torch.Tensor:
        return model.get_submodule(name).weight.detach().abs()[offset : offset + 8]

    expected = sum(scaled(l1("stem.0", o)) * scaled(gamma("stem.1", o)) for o in (0, 8))
    expected = expected + sum(
        scaled(l1(f"{g}.primary.0", 0)) * scaled(gamma(f"{g}.primary.1", 0)) for g in ("g1", "g2")
    )
    torch.testing.assert_close(l1_importance(model, ghost), expected)


def test_smallest_concat_se_network_is_under_a_tenth_of_the_macs() -> None:
    model = SENet().eval()
    space = SubnetSpace(model, SHAPE)
    smallest = space.materialize({g.id: 1 for g in space.prunable})
    assert count_macs(smallest, SHAPE) <= 0.1 * count_macs(model, SHAPE)


@pytest.mark.parametrize("factory", [SENet, GhostNet, InceptionNet])
def test_elastic_space_costs_and_slices_split_layers(factory) -> None:
    net = ElasticNet(_model(factory), SHAPE, units=4)
    x = torch.randn(8, *SHAPE)
    for arch in (net.smallest(), Arch([2] * len(net.gated)), net.largest()):
        counted = count_cost(net.materialize(arch), SHAPE)
        cost = net.cost(arch)
        assert cost["macs"] == pytest.approx(counted.macs, rel=1e-6) and cost["params"] == pytest.approx(counted.params)
        net.model.train()
        net.attach()
        try:
            net.set_hard(arch)
            masked = net.model(x)
            torch.testing.assert_close(net.run_sliced(arch, x), masked, atol=1e-5, rtol=1e-5)
        finally:
            net.detach()
            net.model.eval()


@pytest.mark.parametrize("factory", MODELS)
def test_growth_keeps_the_function(factory) -> None:
    model = _model(factory)
    grown = grow(model, SHAPE, 1.5, 0, np.random.default_rng(0))
    assert max_difference(model, grown, SHAPE) < 1e-4
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())


# ---- end to end ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options", [("uniform", {}), ("dna", {"search_epochs": 1, "warmup_epochs": 0, "units": 4})]
)
def test_adapt_concat_se_network_to_a_tenth(tmp_path, digits, method, options) -> None:
    from netfit.api import adapt
    from netfit.export import load_model

    fast = {"epochs": 1, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}
    torch.manual_seed(0)
    result = adapt(SENet(), digits, "10%", method, out=tmp_path, train_seed=True, method_options=options, **fast)
    (row,) = result.summary["candidates"]
    assert row["within_budget"] and row["arch"]["family"] == "graph"
    loaded = load_model(tmp_path / row["weights"])
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.models[row["id"]].eval()(x))
