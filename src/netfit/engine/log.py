"""The JSONL run log: one JSON object per line, appended and flushed, written by rank 0 only."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
        """Append one ``{"time", "cpu", "event", **fields}`` line and flush it (rank 0 only). ``cpu`` is the
        process's CPU seconds so far (all threads): differences between events measure work, unlike wall time,
        without counting other processes that share the machine."""
        if not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = {"time": round(time.time(), 3), "cpu": round(time.process_time(), 3)}
        line = json.dumps({**stamp, "event": event, **fields}, default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()


def session_seconds(path: str | Path, clock: str = "time") -> list[float]:
    """Wall (``clock`` "time") or process CPU ("cpu") seconds of each session of a run log, from a "start" event
    to the last event before the next one, so that a resumed run can count the work of the sessions that were
    interrupted; sessions logged without that clock (CPU: before it was logged) are left out."""
    path = Path(path)
    sessions: list[list[float]] = []
    started = False
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
        if event.get("event") == "start":
            started = clock in event
            if started:
                sessions.append([event[clock], event[clock]])
        elif started and clock in event:
            sessions[-1][1] = event[clock]
    return [end - start for start, end in sessions]


class ProgressBar:
    """A transient rich progress bar over an epoch's steps; a no-op when disabled (progress=False, rank > 0) or
    when the output is not a terminal (a log file or pipe would only collect a blank line per bar).

    Example:
        >>> with ProgressBar(True, "seed epoch 1/5", total=40) as advance:
        ...     advance(loss=0.93, acc=0.61)
    """

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self) -> Callable[..., None]:
        from rich.console import Console

        self.enabled = self.enabled and Console().is_terminal
        if not self.enabled:
            return lambda **_: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, info="")

        def advance(**fields: float) -> None:
            self.progress.update(task, advance=1, info=" ".join(f"{k} {v:.4f}" for k, v in fields.items()))

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
