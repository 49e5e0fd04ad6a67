"""Checkpoints: written atomically, read with ``weights_only=True`` so a planted pickle can never run code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_write

FORMAT = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file beside ``path``, fsync, rename: a crash leaves the previous checkpoint intact."""
    atomic_write(path, lambda tmp: torch.save({**state, "format": FORMAT}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; anything else raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a netfit checkpoint ({reason[:200]}); delete it "
            "or start without --resume"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a netfit checkpoint (format {FORMAT}); delete it or start without --resume"
        )
    return state
