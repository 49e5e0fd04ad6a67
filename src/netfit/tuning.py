"""Choices measured once per machine and remembered, so that runs stay reproducible.

Some choices change only the speed of a run, not what it computes (DNA's ``sample_pass``: the same outputs and
gradients either way), and the faster one depends on the network and the device. Timing them in every run
would let timing noise pick differently from one run to the next, and two runs of the same seed would then
differ in their last float bits. So the first run measures, and every later run on the same machine with the
same network and settings reads the choice back (the idea of cuDNN's benchmark mode, kept across runs).

The cache is one small JSON file per choice under ``$NETFIT_CACHE_DIR`` (default ``~/.cache/netfit``), in
``tuning/``; deleting it makes the next run measure again. A cache that cannot be written only costs a new
measurement next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .fileio import atomic_write_text

CACHE_ENV = "NETFIT_CACHE_DIR"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "netfit"
    return Path(root) / "tuning"


def machine(device: torch.device) -> dict:
    """What a timing depends on besides the work itself: the device, the torch build and its threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": device.type, "name": name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):  # Linux names the model here; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def remembered_choice(
    name: str, key: dict, choices: Sequence[str], measure: Callable[[], tuple[str, dict]]
) -> tuple[str, dict | None]:
    """The choice among ``choices`` for ``key`` on this machine, and the seconds measured for it: ``measure()``
    (returning the choice and its timings) the first time, then read back (seconds None)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir() / f"{name}-{digest}.json"
    try:
        choice = json.loads(path.read_text())["choice"]
        if choice in choices:
            return choice, None
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet (or an unreadable entry): measure
    choice, seconds = measure()
    with contextlib.suppress(OSError):  # a read-only cache: measured again next time
        atomic_write_text(path, json.dumps({"key": key, "choice": choice, "seconds": seconds}, default=str))
    return choice, seconds
