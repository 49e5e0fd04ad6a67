"""The JSONL run log: one JSON object per line, appended and flushed, written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .distributed import is_main


class RunLog:
    """Append-only event log.

    Example:
        >>> RunLog("runs/x/log.jsonl").write("epoch", epoch=1, val_acc=0.97)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, event: str, **fields: Any) -> None:
        if not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
