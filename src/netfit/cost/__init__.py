"""The cost model: params, MACs/FLOPs, latency and peak memory of a network.

Every part of netfit measures networks through this package, so budgets, searches and reports agree.
MACs follow one convention (see ``netfit.cost.counting``): multiply-accumulates of one forward pass at
batch 1 counted at the aten level for conv, linear/matmul and attention; FLOPs = 2 x MACs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .._registry import Registry
from .counting import Cost, count_cost, count_macs, count_params, format_count
from .latency import BACKENDS, LatencyStats, measure_latency
from .memory import MemoryStats, peak_memory

__all__ = [
    "BACKENDS",
    "METRICS",
    "Cost",
    "LatencyStats",
    "MemoryStats",
    "count_cost",
    "count_macs",
    "count_params",
    "format_count",
    "measure",
    "measure_latency",
    "peak_memory",
]

# metric name -> (model, input_shape, device, latency backend) -> value
METRICS: Registry[Callable[[nn.Module, Sequence[int], str, str], float]] = Registry("cost metric")
METRICS.register("macs")(lambda model, shape, device, backend: float(count_macs(model, shape)))
METRICS.register("params")(lambda model, shape, device, backend: float(count_params(model)))
METRICS.register("latency_ms")(
    lambda model, shape, device, backend: measure_latency(model, shape, device=device, backend=backend).median_ms
)
METRICS.register("memory_bytes")(
    lambda model, shape, device, backend: float(peak_memory(model, shape, device=device).peak_bytes)
)


def measure(
    model: nn.Module, input_shape: Sequence[int], metric: str, *, device: str = "cpu", backend: str = "torch"
) -> float:
    """The model's value of one budget metric.

    Args:
        model: The network.
        input_shape: Shape of one sample without the batch dimension.
        metric: "macs", "params", "latency_ms" (median of ``measure_latency``) or "memory_bytes"
            (``peak_memory(...).peak_bytes``).
        device: Device for latency and memory ("cpu" or "cuda[:N]"); counts do not depend on it.
        backend: Latency backend ("torch" or "onnxruntime"); only latency depends on it.

    Returns:
        The metric's value as a float.

    Raises:
        UnknownNameError: For an unknown metric.
    """
    return METRICS.get(metric)(model, input_shape, device, backend)
