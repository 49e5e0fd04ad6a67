"""Export and load plain models: model.safetensors + arch.json (never pickle), and ONNX with a parity check."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, NetfitError, require
from .fileio import atomic_write, atomic_write_text
from .models import arch_of, build_model

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "netfit.arch/1"


def save_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    arch: dict | None = None,
    input_shape: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/arch.json`` atomically; returns ``out_dir``.

    Raises:
        UnsupportedLayerError: ``arch`` is not given and the model is neither built-in nor made of standard layers.
        NetfitError: ``out_dir`` cannot be written, or ``meta`` is not JSON-serialisable (nothing is left behind).

    Example:
        >>> save_model(model, "deploy/", input_shape=(1, 28, 28))
        >>> same = load_model("deploy/")
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    arch = arch if arch is not None else arch_of(model)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    document = {
        "format": FORMAT,
        "netfit_version": __version__,
        "arch": arch,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "meta": meta or {},
    }
    try:  # checked before any file is touched
        text = json.dumps(document, indent=2)
    except (TypeError, ValueError) as e:
        raise NetfitError(f"arch and meta must be JSON-serialisable (plain dicts, lists, numbers, strings): {e}") from e
    written: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
        written.append(out_dir / WEIGHTS_FILE)
        atomic_write_text(out_dir / ARCH_FILE, text)
    except OSError as e:
        for file in written:  # weights without their arch.json would be an unloadable half model
            file.unlink(missing_ok=True)
        raise NetfitError(f"cannot write the model to {out_dir}: {e.strerror or e}; choose a writable folder") from e
    return out_dir


def read_arch(path: str | Path) -> dict:
    """The arch.json document of a model folder."""
    file = Path(path) / ARCH_FILE
    try:
        document = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file} not found; is {path} a model folder written by netfit?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from e
    if not isinstance(document, dict) or document.get("format") != FORMAT or "arch" not in document:
        raise CheckpointError(f"{file} is not a netfit arch file (expected format {FORMAT})")
    return document


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a saved model from arch.json and load model.safetensors, checking every tensor's name and shape.

    Returns:
        The model in eval mode; ``netfit_input_shape`` is set when arch.json records an input shape.

    Raises:
        CheckpointError: a file is missing, malformed or corrupt, or the weights do not fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    document = read_arch(path)
    model = build_model(document["arch"])
    file = Path(path) / WEIGHTS_FILE
    try:
        tensors = load_file(str(file))
    except FileNotFoundError:
        raise CheckpointError(f"{file} not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is corrupt ({e})") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [
        f"{k} expects {s}, file has {tuple(tensors[k].shape)}"
        for k, s in expected.items()
        if k in tensors and tuple(tensors[k].shape) != s
    ]
    problems += [f"{k} is missing from the file" for k in expected if k not in tensors]
    problems += [f"{k} in the file is not in the architecture" for k in tensors if k not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"arch.json does not match model.safetensors in {path}: {'; '.join(problems[:3])}{more}")
    model.load_state_dict(tensors, strict=True)
    if document.get("input_shape"):
        model.netfit_input_shape = tuple(document["input_shape"])
    return model.eval()


def write_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = 17) -> None:
    """Write ``model`` as ONNX with a dynamic batch axis: the legacy exporter first (it needs only onnx), the
    dynamo exporter when that fails; raises ``NetfitError`` when neither can export the model."""
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation notices are not the user's concern
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                **names,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as legacy_error:  # the legacy exporter can fail on new ops
            try:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, **names, dynamic_shapes=({0: torch.export.Dim("batch")},)
                )  # positional: any arg name
            except Exception as e:
                raise NetfitError(f"cannot export {type(model).__name__} to ONNX: {str(e).splitlines()[0]}") from (
                    legacy_error
                )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: Sequence[int],
    *,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export to ONNX (dynamic batch) and, when ``check``, compare ONNX Runtime's outputs with torch's."""
    require("onnx", "onnx")
    path = Path(path)
    model = model.eval().cpu()
    example = torch.randn(2, *input_shape)

    atomic_write(path, lambda tmp: write_onnx(model, example, tmp, opset=opset))
    report: dict[str, Any] = {"path": str(path), "opset": opset, "max_abs_diff": None}
    if check:
        ort = require("onnxruntime", "onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(example).numpy()
        got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        report["max_abs_diff"] = float(abs(got - expected).max())
        if report["max_abs_diff"] > atol:
            raise NetfitError(
                f"ONNX outputs differ from torch by {report['max_abs_diff']:.2e} > {atol}; the export "
                f"of {type(model).__name__} is not faithful"
            )
    return report
