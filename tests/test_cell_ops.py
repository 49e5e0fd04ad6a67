"""The cell operation library: every operation keeps C channels and the size, or halves it (ceil) at stride 2."""

from __future__ import annotations

import pytest
import torch

from netfit.cost import count_cost
from netfit.models.cell_ops import OPS, make_op


@pytest.mark.parametrize("ndim,size", [(1, 7), (1, 40), (2, 7), (2, 8)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OPS)
def test_every_op_keeps_channels_and_maps_the_size(name: str, ndim: int, size: int, stride: int) -> None:
    op = make_op(name, ndim, 6, stride)
    x = torch.randn(2, 6, *[size] * ndim)
    expected = size if stride == 1 else (size + 1) // 2
    assert op(x).shape == (2, 6, *[expected] * ndim)


def test_parameter_free_ops_cost_nothing() -> None:
    for name in ("none", "avg_pool_3x3", "max_pool_3x3", "skip_connect"):
        cost = count_cost(make_op(name, 2, 8, 1), (8, 8, 8))
        assert (cost.macs, cost.params) == (0, 0), name


def test_sep_conv_costs_two_separable_units() -> None:
    c, k, hw = 8, 3, 8 * 8
    unit = hw * c * k * k + hw * c * c  # depthwise + pointwise MACs at stride 1
    assert count_cost(make_op("sep_conv_3x3", 2, c, 1), (c, 8, 8)).macs == 2 * unit


def test_unknown_op_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        make_op("sep_conv_4x4", 2, 8)
