"""netfit.space's tracing: channel groups couple what must stay equal, and block what cannot be sliced."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from _space_models import CatNet, CustomNet, FlatNet, MobileBlock, ResNet, Untraceable, group_of, members
from netfit.errors import UnsupportedLayerError
from netfit.space import trace_channel_groups


def test_resnet_groups_couple_residual_convs() -> None:
    groups = trace_channel_groups(ResNet(), torch.randn(2, 3, 16, 16))
    assert [g.id for g in groups] == list(range(len(groups)))
    # input, stem, b1.conv1, stage (b1.conv2 + shortcut + b2.conv2), b2.conv1, logits
    assert len(groups) == 6
    stage = group_of(groups, "b1.conv2")
    assert stage is group_of(groups, "b1.shortcut.0") is group_of(groups, "b2.conv2")
    assert members(stage) == {
        ("b1.conv2", "out", 0, 1),
        ("b1.bn2", "norm", 0, 1),
        ("b1.shortcut.0", "out", 0, 1),
        ("b1.shortcut.1", "norm", 0, 1),
        ("b2.conv1", "in", 0, 1),
        ("b2.conv2", "out", 0, 1),
        ("b2.bn2", "norm", 0, 1),
        ("fc", "in", 0, 1),
    }
    assert stage.size == 8 and stage.prunable
    assert {m.module for m in stage.producers} == {"b1.conv2", "b1.shortcut.0", "b2.conv2"}
    stem = group_of(groups, "stem")
    assert members(stem) == {
        ("stem", "out", 0, 1),
        ("bn", "norm", 0, 1),
        ("b1.conv1", "in", 0, 1),
        ("b1.shortcut.0", "in", 0, 1),
    }
    assert groups[0].size == 3 and not groups[0].prunable and "input" in groups[0].reason
    assert members(groups[0]) == {("stem", "in", 0, 1)}
    logits = group_of(groups, "fc")
    assert not logits.prunable and "output" in logits.reason
    assert sum(g.prunable for g in groups) == 4


def test_trace_does_not_touch_bn_statistics() -> None:
    model = ResNet().train()
    before = model.bn.running_mean.clone()
    trace_channel_groups(model, torch.randn(2, 3, 8, 8) + 3)
    assert torch.equal(model.bn.running_mean, before) and model.training and model.bn.training


def test_depthwise_block_with_residual() -> None:
    groups = trace_channel_groups(MobileBlock(), torch.randn(1, 3, 8, 8))
    assert len(groups) == 4  # input, residual stream (stem + project), expanded, logits
    wide = group_of(groups, "expand")
    assert members(wide) == {
        ("expand", "out", 0, 1),
        ("bn_e", "norm", 0, 1),
        ("dw", "dw", 0, 1),
        ("bn_dw", "norm", 0, 1),
        ("project", "in", 0, 1),
    }
    stream = group_of(groups, "stem")
    assert stream is group_of(groups, "project")
    assert ("head", "in", 0, 1) in members(stream) and stream.prunable


def test_concatenation_gives_offsets() -> None:
    groups = trace_channel_groups(CatNet(), torch.randn(1, 3, 6, 6))
    a, b = group_of(groups, "a"), group_of(groups, "b")
    assert a is not b and a.prunable and b.prunable
    assert members(a) == {("a", "out", 0, 1), ("bn", "norm", 0, 1), ("mix", "in", 0, 1)}
    assert members(b) == {("b", "out", 0, 1), ("bn", "norm", 4, 1), ("mix", "in", 4, 1)}
    assert members(groups[0]) == {("a", "in", 0, 1), ("b", "in", 0, 1)}


def test_flatten_into_linear_repeats() -> None:
    groups = trace_channel_groups(FlatNet(), torch.randn(2, 1, 8, 8))
    conv = group_of(groups, "conv")
    assert members(conv) == {("conv", "out", 0, 1), ("fc1", "in", 0, 16)}
    assert conv.prunable and group_of(groups, "fc1").prunable


def test_hard_coded_view_is_not_prunable() -> None:
    class Fixed(FlatNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(self.conv(x), 2)
            return self.fc2(self.fc1(x.view(-1, 48)))

    conv = group_of(trace_channel_groups(Fixed(), torch.randn(2, 1, 8, 8)), "conv")
    assert not conv.prunable and "hard-codes the channel count 48" in conv.reason


def test_unknown_parametric_layer_blocks_its_group() -> None:
    groups = trace_channel_groups(CustomNet(), torch.randn(1, 3, 4, 4))
    c1 = group_of(groups, "c1")
    assert not c1.prunable and "unknown layer" in c1.reason
    assert group_of(groups, "c2").prunable


def test_unknown_leaf_module_with_parameters_blocks() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 4, 2), nn.Conv2d(4, 5, 1))
    groups = trace_channel_groups(model, torch.randn(1, 3, 4, 4))
    first = group_of(groups, "0")
    assert not first.prunable and "'1' (ConvTranspose2d)" in first.reason
    assert group_of(groups, "2", "out").prunable is False  # feeds the output


def test_channel_changing_parameter_free_op_blocks() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PixelShuffle(2), nn.Conv2d(2, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    groups = trace_channel_groups(model, torch.randn(1, 3, 2, 2))
    assert not group_of(groups, "0").prunable
    assert group_of(groups, "2").prunable
    assert ("4", "in", 0, 16) in members(group_of(groups, "2"))


def test_grouped_conv_is_not_prunable() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 2, 1))
    groups = trace_channel_groups(model, torch.randn(1, 3, 5, 5))
    assert not group_of(groups, "0").prunable and "groups=2" in group_of(groups, "0").reason
    assert not group_of(groups, "1").prunable


def test_untraceable_model_error() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"^cannot trace Untraceable: .*fx-traceable model"):
        trace_channel_groups(Untraceable(), torch.randn(1, 3, 4, 4))


def test_wrong_example_input_error() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"example input of shape \(1, 5, 4, 4\)"):
        trace_channel_groups(ResNet(), torch.randn(1, 5, 4, 4))
