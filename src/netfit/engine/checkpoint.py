"""Checkpoints: written atomically, read with ``weights_only=True`` so a planted pickle can never run code."""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_write
from .config import TrainConfig

FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    torch.save goes to a temp file beside ``path``, which is fsynced and renamed over ``path``, so a crash
    mid-write leaves the previous checkpoint intact.

    Example:
        >>> save_checkpoint("runs/x/ckpt/seed.pt", {"model": model.state_dict(), "epoch": 3})
    """
    try:
        atomic_write(path, lambda tmp: torch.save({**state, "format": FORMAT}, tmp))
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e}; free disk space or choose another --out "
            "(the previous checkpoint is intact)"
        ) from e


def _corrupt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is corrupt or not a netfit checkpoint ({reason}); delete it or start without --resume"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` onto the CPU.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not written by netfit, or holds objects that
            would need arbitrary unpickling (which is never done).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests loading with weights_only=False: exactly what must not be done here
        raise _corrupt(path, "it holds objects other than tensors and plain data") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _corrupt(path, reason[:200]) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _corrupt(path, f"no netfit format {FORMAT} marker")
    return state


_REQUIRED = (
    "model",
    "optimizer",
    "extra_optimizers",
    "extra_params",
    "scaler",
    "callbacks",
    "lr_control",
    "epoch",
    "step",
    "history",
    "extra",
    "best_model",
    "rng",
    "config",
    "finished",
    "early_stopped",
)


def callback_keys(callbacks: Sequence[object]) -> list[str]:
    """Checkpoint keys of callbacks: class name and its index among callbacks of that class ("Ctl#0")."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__qualname__
        keys.append(f"{name}#{seen.get(name, 0)}")
        seen[name] = seen.get(name, 0) + 1
    return keys


def check_compatible(
    saved: dict, config: TrainConfig, callbacks: list[str], n_extra_opts: int, path: Path, losses: list[str]
) -> None:
    """Refuse a checkpoint of another netfit version, other settings (epochs may grow), other hooks or other extra
    losses (``loss_signature``s; a checkpoint written before they were recorded is not checked for them).

    Stateless callbacks (progress, logging) may come and go; a saved callback state needs its callback back.
    """
    missing = [k for k in _REQUIRED if k not in saved]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a netfit checkpoint (missing {', '.join(missing)}); delete it "
            "or start without --resume"
        )
    current = config.to_dict()
    differ = sorted(k for k in current if k != "epochs" and saved["config"].get(k) != current[k])
    if differ:
        was = ", ".join(f"{k}={saved['config'].get(k)!r} now {current[k]!r}" for k in differ)
        raise CheckpointError(
            f"cannot resume from {path}: training settings differ ({was}); use the settings of the interrupted "
            "run or start without --resume"
        )
    lost = sorted(k for k, v in saved["callbacks"].items() if v and k not in callbacks)
    if lost or len(saved["extra_optimizers"]) != n_extra_opts:
        what = f"callback(s) {', '.join(lost)}" if lost else f"{len(saved['extra_optimizers'])} extra optimizer(s)"
        raise CheckpointError(
            f"cannot resume from {path}: it was written with {what}, which this run does not have; resume with "
            "the same method and options or start without --resume"
        )
    was_losses = saved.get("extra_losses")
    if was_losses is not None and list(was_losses) != losses:
        raise CheckpointError(
            f"cannot resume from {path}: it trained with extra losses {was_losses or 'none'}, this run has "
            f"{losses or 'none'}; resume with the same teacher and weights or start without --resume"
        )


@contextlib.contextmanager
def as_checkpoint_error(path: Path, what: str) -> Iterator[None]:
    """Turn a state-dict mismatch (another model, optimizer or parameters) into a CheckpointError."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"cannot resume from {path}: it {what} ({first}); resume with the same model and method or start "
            "without --resume"
        ) from error
