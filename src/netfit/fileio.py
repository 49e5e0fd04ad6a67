"""Atomic file writes: a crash never leaves a half-written result, checkpoint or weights file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    Example:
        >>> with atomic_path("out/model.safetensors") as tmp:
        ...     save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and atomically move the file into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def inside(root: str | Path, relative: str) -> Path:
    """``root / relative``, refusing a path (from a run's own files) that would lead outside ``root``."""
    from .errors import CheckpointError

    root = Path(root).resolve()
    path = (root / relative).resolve()
    if not isinstance(relative, str) or Path(relative).is_absolute() or not path.is_relative_to(root):
        raise CheckpointError(f"{relative!r} in {root} points outside the run directory; the run files were edited")
    return path
