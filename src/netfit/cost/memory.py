"""Peak inference memory of one forward pass (eval mode, no_grad).

On CUDA the allocator's own peak is used: ``max_memory_allocated`` after ``reset_peak_memory_stats``,
minus what was allocated before the input was created, plus the parameter and buffer bytes.

On CPU there is no allocator peak to read, so live tensor memory is tracked instead: a
``TorchDispatchMode`` sees every aten op's outputs, adds the bytes of each output storage it has not seen
(deduplicated by storage data pointer, so views and in-place results cost nothing) and, through
``weakref.finalize`` on the output tensors, subtracts a storage's bytes when its last tracked tensor is
freed. The input tensor is tracked from the start; storages of parameters and buffers (and views of them,
e.g. an elastic layer's ``weight[:k]``) are excluded because they are counted once in ``param_bytes``.
This is an estimate: scratch buffers that a kernel allocates and frees internally, allocator rounding and
fragmentation, and non-tensor Python memory are not seen.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import NetfitError
from .counting import eval_no_grad, example_input, model_on, resolve_device

__all__ = ["MemoryStats", "peak_memory"]


@dataclass
class MemoryStats:
    """Peak inference memory in bytes: ``peak_bytes = param_bytes + activation_bytes``."""

    peak_bytes: int
    param_bytes: int
    activation_bytes: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict."""
        return asdict(self)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(data pointer, bytes) of a tensor's storage."""
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def param_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, each storage counted once."""
    sizes = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        ptr, nbytes = _storage_key(t)
        sizes[ptr] = max(sizes.get(ptr, 0), nbytes)
    return sum(sizes.values())


class _LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created by aten ops, and their running peak."""

    def __init__(self, excluded: set[int]) -> None:
        super().__init__()
        self._excluded = excluded  # storage pointers never counted (parameters, buffers)
        self._refs: dict[int, int] = {}  # storage pointer -> number of live tracked tensors using it
        self._sizes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self.live = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage as live until the last tracked tensor on it is freed."""
        if t.device.type == "meta" or t.layout != torch.strided:
            return
        ptr, nbytes = _storage_key(t)
        if nbytes == 0 or ptr in self._excluded:
            return
        if ptr not in self._refs:
            self._refs[ptr] = 0
            self._sizes[ptr] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._refs[ptr] += 1
        self._finalizers.append(weakref.finalize(t, self._release, ptr))

    def _release(self, ptr: int) -> None:
        self._refs[ptr] -= 1
        if self._refs[ptr] == 0:
            del self._refs[ptr]
            self.live -= self._sizes.pop(ptr)

    def close(self) -> None:
        """Drop the finalizers still pending so tensors outliving the measurement do not call back."""
        for fin in self._finalizers:
            fin.detach()
        self._finalizers.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


def _cpu_activation_peak(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> int:
    """Peak live activation bytes (input included) of one CPU forward, by tensor tracking."""
    excluded = {_storage_key(t)[0] for t in itertools.chain(model.parameters(), model.buffers())}
    tracker = _LiveTensorTracker(excluded)
    x = example_input(model, input_shape, batch_size)
    tracker.track(x)
    try:
        with eval_no_grad(model), tracker:
            model(x)
    finally:
        tracker.close()
    return tracker.peak


def _cuda_activation_peak(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device) -> int:
    """Peak bytes the CUDA allocator held above its pre-input baseline during one forward."""
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = example_input(model, input_shape, batch_size)
    with eval_no_grad(model):
        model(x)
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - baseline)


def peak_memory(
    model: nn.Module, input_shape: Sequence[int], *, device: str = "cpu", batch_size: int = 1
) -> MemoryStats:
    """Peak memory of one inference forward pass: parameters and buffers plus the peak of live activations.

    See the module docstring for how each device is measured; on CPU the figure is an estimate from live
    tensor tracking (method ``"cpu_tensor_tracking"``), on CUDA the allocator's peak
    (method ``"cuda_max_memory_allocated"``).

    Args:
        model: The network; it is copied to ``device`` if it lives elsewhere (the caller's model is not moved).
        input_shape: Shape of one sample without the batch dimension.
        device: "cpu" or "cuda[:N]".
        batch_size: Samples in the forward pass.

    Returns:
        The memory statistics in bytes.

    Raises:
        NetfitError: For an unusable device or a batch size below 1.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise NetfitError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    dev = resolve_device(device)
    net = model_on(model, dev)
    weights = param_bytes(net)
    if dev.type == "cuda":
        activations, method = _cuda_activation_peak(net, input_shape, batch_size, dev), "cuda_max_memory_allocated"
    else:
        activations, method = _cpu_activation_peak(net, input_shape, batch_size), "cpu_tensor_tracking"
    return MemoryStats(
        peak_bytes=weights + activations, param_bytes=weights, activation_bytes=activations, method=method
    )
