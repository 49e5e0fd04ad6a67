"""Tests of netfit.cost: hand-computed MACs, params, latency, peak memory, metric dispatch and errors."""

from __future__ import annotations

import itertools
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netfit.cost import (
    Cost,
    LatencyStats,
    MemoryStats,
    count_cost,
    count_macs,
    count_params,
    format_count,
    measure,
    measure_latency,
    peak_memory,
)
from netfit.errors import NetfitError, UnknownNameError

# ---------------------------------------------------------------------------------------------- MACs


def conv_macs(c_out: int, out_spatial: tuple[int, ...], c_in: int, groups: int, kernel: tuple[int, ...]) -> int:
    """Hand formula: every output element does (C_in / groups) * prod(kernel) multiply-accumulates."""
    n = c_out * (c_in // groups)
    for s in (*out_spatial, *kernel):
        n *= s
    return n


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_plain(bias: bool) -> None:
    # 3x8x8 -> 8x6x6 with a 3x3 kernel; the bias add is not a MAC.
    assert count_macs(nn.Conv2d(3, 8, 3, bias=bias), (3, 8, 8)) == 8 * 6 * 6 * 3 * 9 == 7776


@pytest.mark.parametrize(
    ("conv", "shape", "expected"),
    [
        # stride 2, padding 1: 9x9 -> 5x5
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (4, 9, 9), conv_macs(6, (5, 5), 4, 1, (3, 3))),
        # dilation 2: effective kernel 5, 10x10 -> 6x6
        (nn.Conv2d(2, 3, 3, dilation=2), (2, 10, 10), conv_macs(3, (6, 6), 2, 1, (3, 3))),
        # groups=2: each output channel sees 2 of 4 input channels
        (nn.Conv2d(4, 8, 3, groups=2, padding=1), (4, 5, 5), conv_macs(8, (5, 5), 4, 2, (3, 3))),
        # depthwise: one input channel per output channel
        (nn.Conv2d(6, 6, 3, groups=6, padding=1, bias=False), (6, 7, 7), 6 * 49 * 9),
        # non-square kernel, no padding: 6x8 -> 5x6
        (nn.Conv2d(2, 4, (2, 3)), (2, 6, 8), conv_macs(4, (5, 6), 2, 1, (2, 3))),
        # 1-D: length 20, kernel 5, stride 3 -> 6 outputs
        (nn.Conv1d(3, 5, 5, stride=3), (3, 20), conv_macs(5, (6,), 3, 1, (5,))),
        # 3-D: 5x5x5 -> 3x3x3
        (nn.Conv3d(2, 4, 3), (2, 5, 5, 5), conv_macs(4, (3, 3, 3), 2, 1, (3, 3, 3))),
    ],
)
def test_conv_variants(conv: nn.Module, shape: tuple[int, ...], expected: int) -> None:
    assert count_macs(conv, shape) == expected


def test_conv_transposed_counts_input_positions() -> None:
    # Every input element is multiplied with C_out/groups * k * k weights: 5*5 * 4 * 8 * 9.
    assert count_macs(nn.ConvTranspose2d(4, 8, 3, stride=2), (4, 5, 5)) == 25 * 4 * 8 * 9
    assert count_macs(nn.ConvTranspose2d(4, 8, 3, stride=2, groups=2), (4, 5, 5)) == 25 * 4 * 4 * 9


def test_linear_and_sequence_linear() -> None:
    assert count_macs(nn.Linear(10, 7), (10,)) == 70
    assert count_macs(nn.Linear(10, 7, bias=False), (10,)) == 70
    # a (L=5, 10) sequence: the layer runs once per position
    assert count_macs(nn.Linear(10, 7), (5, 10)) == 5 * 70


class _Matmuls(nn.Module):
    """x @ x^T, then bmm and baddbmm of the result with itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.matmul(x, x.transpose(1, 2))  # (1,4,6)@(1,6,4): 4*6*4
        h = torch.bmm(g, g)  # (1,4,4)@(1,4,4): 4*4*4
        return torch.baddbmm(h, h, g)  # another 4*4*4; the add is free


def test_matmul_bmm_baddbmm() -> None:
    assert count_macs(_Matmuls(), (4, 6)) == 96 + 64 + 64


class _Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x)


def test_scaled_dot_product_attention() -> None:
    # FlopCounterMode counts Q@K^T and P@V: batch*heads*Lq*Lk*(Eqk + Ev) = 1*2*5*5*(8+8); on CPU the
    # flash kernel is not in torch's registry, netfit adds it.
    assert count_macs(_Attention(), (2, 5, 8)) == 2 * 5 * 5 * 16 == 800


def test_transformer_layer_fast_path_is_counted() -> None:
    # L=5, d=8, 2 heads, ffn 16: in-proj 5*8*24, attention 2*5*5*(4+4), out-proj 5*8*8, ffn 5*8*16*2.
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
    expected = 5 * 8 * 24 + 2 * 5 * 5 * 8 + 5 * 8 * 8 + 2 * 5 * 8 * 16
    assert count_macs(layer, (5, 8)) == expected == 2960
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on after counting


class _Uncounted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(x)) + x
        return F.adaptive_avg_pool2d(self.pool(y), 1) * 2


def test_elementwise_norm_pool_count_zero() -> None:
    assert count_macs(_Uncounted(), (3, 8, 8)) == 0


class _ElasticConv(nn.Conv2d):
    """A conv whose forward uses only its first ``active`` output channels."""

    active: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.active
        return F.conv2d(x, self.weight[:k], self.bias[:k], self.stride, self.padding)


def test_elastic_layer_counted_at_active_width() -> None:
    elastic = _ElasticConv(3, 16, 3, padding=1)
    elastic.active = 5
    dense = nn.Conv2d(3, 5, 3, padding=1)
    assert count_macs(elastic, (3, 8, 8)) == count_macs(dense, (3, 8, 8)) == 5 * 64 * 27
    elastic.active = 16
    assert count_macs(elastic, (3, 8, 8)) == 16 * 64 * 27


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_matches_fvcore_on_conv_and_linear() -> None:
    fvcore = pytest.importorskip("fvcore.nn")
    model = _small_cnn().eval()
    ops = fvcore.FlopCountAnalysis(model, torch.randn(1, 3, 16, 16))
    ops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = ops.by_operator()
    reference = by_op.get("conv", 0) + by_op.get("linear", 0) + by_op.get("addmm", 0)
    assert reference > 0
    assert count_macs(model, (3, 16, 16)) == reference


def test_count_is_int_and_restores_flags() -> None:
    model = _small_cnn().train()
    model[1].eval()  # one submodule deliberately in its own mode
    macs = count_macs(model, (3, 16, 16))
    assert type(macs) is int
    assert model.training and model[0].training and not model[1].training


def test_follows_model_dtype() -> None:
    assert count_macs(nn.Linear(4, 3).double(), (4,)) == 12


# ---------------------------------------------------------------------------------------------- params


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4)
        self.dec = nn.Linear(4, 6, bias=False)
        self.dec.weight = self.enc.weight  # a (4,6) matrix used twice  # type: ignore[assignment]
        self.frozen = nn.Parameter(torch.zeros(100), requires_grad=False)


def test_params_shared_counted_once_and_frozen_skipped() -> None:
    assert count_params(_Tied()) == 24 + 4
    assert count_params(nn.Conv2d(3, 8, 3)) == 8 * 27 + 8


def test_cost_dataclass() -> None:
    cost = count_cost(nn.Linear(10, 7), (10,))
    assert cost == Cost(macs=70, params=77)
    assert cost.flops == 140
    assert cost.as_dict() == {"macs": 70, "flops": 140, "params": 77}


# ---------------------------------------------------------------------------------------------- latency


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_latency_stats_sane(backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    threads_before = torch.get_num_threads()
    stats = measure_latency(_small_cnn(), (3, 16, 16), backend=backend, warmup=1, repeats=7, batch_size=2)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0 and stats.std_ms >= 0
    d = stats.as_dict()
    assert (d["backend"], d["device"], d["threads"], d["batch_size"], d["repeats"]) == (backend, "cpu", 1, 2, 7)
    assert torch.get_num_threads() == threads_before


def test_latency_keeps_train_mode() -> None:
    model = _small_cnn().train()
    measure_latency(model, (3, 16, 16), warmup=0, repeats=1)
    assert model.training


# ---------------------------------------------------------------------------------------------- memory


def _chain(widths: list[int]) -> nn.Sequential:
    return nn.Sequential(*(nn.Linear(a, b) for a, b in itertools.pairwise(widths)))


def test_peak_memory_chain_hand_computed() -> None:
    widths = [8, 16, 64, 32, 4]
    stats = peak_memory(_chain(widths), (8,))
    params = sum(a * b + b for a, b in itertools.pairwise(widths)) * 4
    # input stays alive; the largest pair of consecutive activations (64 while computing 32) is the peak,
    # the 16 is freed before the 32 exists.
    activations = (8 + 64 + 32) * 4
    assert stats == MemoryStats(params + activations, params, activations, "cpu_tensor_tracking")
    assert stats.as_dict()["peak_bytes"] == params + activations


def test_peak_memory_scales() -> None:
    small = peak_memory(_small_cnn(), (3, 16, 16))
    bigger = peak_memory(_small_cnn(), (3, 32, 32))
    wider = peak_memory(_chain([8, 256, 256, 4]), (8,))
    assert bigger.activation_bytes > small.activation_bytes
    assert bigger.param_bytes == small.param_bytes
    assert wider.peak_bytes > peak_memory(_chain([8, 16, 16, 4]), (8,)).peak_bytes
    assert peak_memory(_chain([8, 16, 4]), (8,), batch_size=3).activation_bytes == 3 * (8 + 16 + 4) * 4


def test_peak_memory_ignores_weight_views() -> None:
    elastic = _ElasticConv(3, 16, 3, padding=1)
    elastic.active = 5
    stats = peak_memory(elastic, (3, 8, 8))
    assert stats.param_bytes == (16 * 27 + 16) * 4
    assert stats.activation_bytes == (3 + 5) * 64 * 4


# ---------------------------------------------------------------------------------------------- measure


def test_measure_dispatch() -> None:
    model = _chain([8, 16, 4])
    assert measure(model, (8,), "macs") == 8 * 16 + 16 * 4
    assert measure(model, (8,), "params") == 8 * 16 + 16 + 16 * 4 + 4
    assert measure(model, (8,), "memory_bytes") == peak_memory(model, (8,)).peak_bytes
    assert measure(model, (8,), "latency_ms") > 0


def test_format_count() -> None:
    assert format_count(1234567) == "1.23M"
    assert format_count(2.5e9) == "2.50G"
    assert format_count(950) == "950"
    assert format_count(1000) == "1.00K"
    assert format_count(999_999) == "1.00M"
    assert format_count(3.2e12) == "3.20T"
    assert format_count(0.5) == "0.5"


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_metric_and_backend() -> None:
    with pytest.raises(UnknownNameError, match="unknown cost metric 'flopz'"):
        measure(nn.Linear(2, 2), (2,), "flopz")
    with pytest.raises(UnknownNameError, match=r"latency backend 'tensorrt'.*known: onnxruntime, torch"):
        measure_latency(nn.Linear(2, 2), (2,), backend="tensorrt")


@pytest.mark.parametrize("device", ["tpu", "not a device", "meta"])
def test_bad_device(device: str) -> None:
    with pytest.raises(NetfitError, match="device"):
        measure_latency(nn.Linear(2, 2), (2,), device=device)
    with pytest.raises(NetfitError, match="device"):
        peak_memory(nn.Linear(2, 2), (2,), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_unavailable() -> None:
    with pytest.raises(NetfitError, match="CUDA is not available"):
        measure(nn.Linear(2, 2), (2,), "latency_ms", device="cuda")


@pytest.mark.parametrize("shape", [(), (0, 4), (3, -1), (2.5,), "abc"])
def test_bad_input_shape(shape: object) -> None:
    with pytest.raises(NetfitError, match="invalid input shape"):
        count_macs(nn.Linear(2, 2), shape)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"batch_size": 0}, "batch_size"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_latency_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(NetfitError, match=message):
        measure_latency(nn.Linear(2, 2), (2,), **kwargs)


def test_latency_budget_is_measured_with_its_backend(monkeypatch) -> None:
    """A "@ort-cpu" budget is timed by onnxruntime, not by torch (the budget's backend reaches the timer)."""
    from netfit import cost
    from netfit.budget import Budget
    from netfit.methods.base import Target
    from netfit.methods.common import LATENCY_MARGIN, cost_fn

    seen = []

    def fake(model, shape, device, backend):
        seen.append((device, backend))
        return types.SimpleNamespace(median_ms=1.0)

    monkeypatch.setattr(cost, "measure_latency", fake)
    run = types.SimpleNamespace(measure=lambda model, metric, **kw: cost.measure(model, (3,), metric, **kw))
    for spec in ("2ms latency@ort-cpu", "2ms latency"):  # methods fit latency with a margin for its noise
        assert cost_fn(run, Target(Budget.parse(spec), 2.0))(nn.Linear(3, 2)) == pytest.approx(1 / (1 - LATENCY_MARGIN))
    assert seen == [("cpu", "onnxruntime"), ("cpu", "torch")]
    assert cost_fn(run, Target(Budget.parse("50% macs"), 2.0))(nn.Linear(3, 2)) == 6  # counts: exact
