"""Wall-clock inference latency of one forward pass, with plain torch or with onnxruntime.

Each timed call is measured on its own with ``time.perf_counter`` after ``warmup`` untimed calls; the
model runs in eval mode under ``no_grad``. On CPU the torch thread count is pinned to ``threads`` for the
measurement and restored afterwards; on CUDA every timed call is bracketed by ``torch.cuda.synchronize``
so the time covers the kernels, not just their launch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._registry import Registry
from ..errors import NetfitError, require
from .counting import eval_no_grad, example_input, model_on, resolve_device

__all__ = ["BACKENDS", "LatencyStats", "measure_latency"]


@dataclass
class LatencyStats:
    """Summary of repeated latency measurements (all times in milliseconds)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    repeats: int
    warmup: int
    backend: str
    device: str
    threads: int | None
    batch_size: int

    def as_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return asdict(self)


# A backend takes (model on device, input batch, device, warmup, repeats, threads) and returns the
# per-call times in seconds.
Timer = Callable[[nn.Module, torch.Tensor, torch.device, int, int, "int | None"], list[float]]
BACKENDS: Registry[Timer] = Registry("latency backend")


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for ``device``'s queued work before a clock is read: CUDA's synchronize, nothing elsewhere."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_calls(call: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    """Run ``call`` warmup times untimed, then time each of ``repeats`` calls between two syncs."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Pin torch's intra-op thread count for the block and restore the previous value."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@BACKENDS.register("torch")
def _time_torch(
    model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, repeats: int, threads: int | None
) -> list[float]:
    if device.type == "cuda":
        with eval_no_grad(model):
            return time_calls(lambda: model(x), warmup, repeats, device_sync(device))
    with _torch_threads(threads), eval_no_grad(model):
        return time_calls(lambda: model(x), warmup, repeats, device_sync(device))


@BACKENDS.register("onnxruntime")
def _time_onnxruntime(
    model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, repeats: int, threads: int | None
) -> list[float]:
    ort = require("onnxruntime", "onnx")
    if device.type != "cpu":
        raise NetfitError(f"the onnxruntime backend measures on CPU only, not {device}; use device='cpu'")
    with tempfile.TemporaryDirectory(prefix="netfit-latency-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        from ..export import write_onnx

        with eval_no_grad(model):
            write_onnx(model, x, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0 = onnxruntime's own default
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    return time_calls(lambda: session.run(None, feed), warmup, repeats, lambda: None)


def _check_counts(batch_size: int, warmup: int, repeats: int, threads: int | None) -> None:
    """Reject nonsensical measurement settings with a message naming the bad one."""
    for name, value, low in (("batch_size", batch_size, 1), ("warmup", warmup, 0), ("repeats", repeats, 1)):
        if not isinstance(value, int) or value < low:
            raise NetfitError(f"{name} must be an integer >= {low}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise NetfitError(f"threads must be a positive integer or None, got {threads!r}")


def _summarize(times_s: list[float]) -> dict[str, float]:
    """Median, 10th/90th percentile, mean and standard deviation, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": float(ms.mean()),
        "std_ms": std,
    }


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    device: str = "cpu",
    backend: str = "torch",
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = 1,
) -> LatencyStats:
    """Time the forward pass of ``model`` on a random batch.

    Args:
        model: The network; it is copied to ``device`` if it lives elsewhere (the caller's model is not moved).
        input_shape: Shape of one sample without the batch dimension.
        device: "cpu" or "cuda[:N]".
        backend: "torch" (eager PyTorch) or "onnxruntime" (exported to ONNX, CPUExecutionProvider).
        batch_size: Samples per forward pass.
        warmup: Untimed calls before measuring.
        repeats: Timed calls.
        threads: Intra-op CPU threads (torch.set_num_threads / onnxruntime intra_op_num_threads); None keeps
            the library default. Ignored on CUDA.

    Returns:
        The latency statistics over the ``repeats`` timed calls.

    Raises:
        UnknownNameError: For an unknown backend.
        NetfitError: For an unusable device or invalid counts.
    """
    timer = BACKENDS.get(backend)
    dev = resolve_device(device)
    _check_counts(batch_size, warmup, repeats, threads)
    net = model_on(model, dev)
    x = example_input(net, input_shape, batch_size)
    times = timer(net, x, dev, warmup, repeats, threads)
    return LatencyStats(
        **_summarize(times),
        repeats=repeats,
        warmup=warmup,
        backend=backend,
        device=str(dev),
        threads=None if dev.type == "cuda" else threads,
        batch_size=batch_size,
    )
