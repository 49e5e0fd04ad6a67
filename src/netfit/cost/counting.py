"""Parameter and MAC counting: the one cost model every part of netfit uses.

Convention: MACs = multiply-accumulates of one forward pass at batch 1, counted at the aten level
(``torch.utils.flop_counter``) for conv (any groups/dilation), linear/addmm, mm, bmm, baddbmm, matmul,
scaled-dot-product attention. FLOPs = 2 x MACs. BatchNorm, activations, pooling, additions and other
elementwise ops are NOT counted (they are < 2% on the built-ins; fvcore agrees exactly on conv+linear).
Params = trainable parameters. Elastic layers slice their weights before the aten call, so a layer
running at an effective width is counted at that width by construction.

Details of the aten-level count:

* Bias additions (conv bias, the bias of ``addmm``/``baddbmm``) are not counted, like any other addition.
* A transposed conv is counted over its *input* positions: ``H_in * W_in * C_in * C_out / groups * k_h * k_w``.
* Attention is counted as its two batched matmuls, ``Q @ K^T`` and ``softmax(.) @ V``:
  ``batch * heads * L_q * L_k * (E_qk + E_v)``; the softmax and scaling are elementwise and not counted,
  and a causal mask does not halve the count. The CPU flash kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``), which the stock counter misses, is added here,
  and the fused fast paths of ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` are switched off
  while counting so their projections and attention are seen as the ops above.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter

from ..errors import NetfitError

__all__ = ["Cost", "count_cost", "count_macs", "count_params", "format_count"]


@dataclass(frozen=True)
class Cost:
    """Static cost of a network at batch 1.

    Attributes:
        macs: Multiply-accumulates of one forward pass.
        params: Trainable parameters (shared ones counted once).
    """

    macs: int
    params: int

    @property
    def flops(self) -> int:
        """Floating-point operations, by convention exactly ``2 * macs``."""
        return 2 * self.macs

    def as_dict(self) -> dict[str, int]:
        """``{"macs", "flops", "params"}`` as plain ints (JSON-ready)."""
        return {"macs": self.macs, "flops": self.flops, "params": self.params}


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters; a parameter shared by several modules is counted once.

    Args:
        model: Any module.

    Returns:
        The sum of ``numel`` over the distinct parameters with ``requires_grad``.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already drops repeats of the same Parameter object
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel: the same two matmuls as every other SDPA kernel."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_flop_formulas() -> dict:
    """Formulas for kernels the stock counter lacks (looked up lazily: older torch may not have the op)."""
    extra = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None and op not in flop_counter.flop_registry:
        extra[op] = _cpu_flash_attention_flop
    return extra


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """Validate a per-sample input shape (no batch dimension) and return it as a tuple of ints.

    Raises:
        NetfitError: If the shape is empty or has a non-positive or non-integer entry.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) > 0 and all(s > 0 and s == d for s, d in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise NetfitError(
            f"invalid input shape {input_shape!r}: give the positive sizes of one sample without the batch "
            "dimension, e.g. (3, 32, 32) or (1, 40)"
        )
    return shape


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (cpu for a model without any)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> torch.Tensor:
    """A random input batch on the model's device, in the dtype of its first floating-point parameter."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    shape = (batch_size, *check_input_shape(input_shape))
    return torch.randn(shape, device=model_device(model), dtype=dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a measurement device ("cpu", "cuda", "cuda:1") and check that it is usable here.

    Raises:
        NetfitError: For an unparsable or unsupported device, or CUDA on a machine without it.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise NetfitError(f"invalid device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type not in ("cpu", "cuda"):
        raise NetfitError(f"cannot measure on device {device!r}: only 'cpu' and 'cuda[:N]' are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NetfitError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NetfitError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def model_on(model: nn.Module, device: torch.device) -> nn.Module:
    """The model itself if it already lives on ``device``, else a copy moved there (the caller's stays put)."""
    current = model_device(model)
    same = current.type == device.type and (device.index is None or current.index == device.index)
    return model if same else copy.deepcopy(model).to(device)


@contextlib.contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with the model in eval mode and no_grad; restore every submodule's own flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """Disable the fused MHA/transformer fast path, whose single fused op the counter cannot see into."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (see the module docstring for the convention).

    The model runs once in eval mode under ``no_grad`` on its own device; its train/eval flags are restored.

    Args:
        model: The network; it must accept one tensor of shape ``(1, *input_shape)``.
        input_shape: Shape of one sample without the batch dimension, e.g. ``(3, 32, 32)`` or ``(1, 40)``.

    Returns:
        The MAC count as an exact int.
    """
    x = example_input(model, input_shape)
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with eval_no_grad(model), _mha_fastpath_off(), counter:
        model(x)
    # Every aten formula is 2 * (multiplications); integer halving keeps the count exact.
    return int(counter.get_total_flops()) // 2


def count_cost(model: nn.Module, input_shape: Sequence[int]) -> Cost:
    """Params and MACs of a model at batch 1 (see ``count_macs`` and ``count_params``)."""
    return Cost(macs=count_macs(model, input_shape), params=count_params(model))


_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def format_count(n: float) -> str:
    """Short human form of a count: 1234567 -> "1.23M", 2.5e9 -> "2.50G", 950 -> "950".

    Args:
        n: Any count (params, MACs, FLOPs, bytes...).

    Returns:
        Two decimals with a K/M/G/T suffix from one thousand on; the plain number below.
    """
    size = abs(n)
    for scale, suffix in _UNITS:
        # Compare after rounding so 999_999 prints as "1.00M", not "1000.00K".
        if round(size / scale, 2) >= 1:
            return f"{n / scale:.2f}{suffix}"
    if float(n).is_integer():
        return str(int(n))
    return f"{n:.3g}"
