"""Helpers shared by benchmark scripts: seeded seed networks, environment facts and writing JSON + markdown results."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from netfit.api import train_model
from netfit.cost.latency import device_sync, time_calls
from netfit.engine import seed_everything
from netfit.models import create_model

RESULTS = Path(__file__).parent / "results"


def seed_network(name: str, data, width: float, seed: int) -> torch.nn.Module:
    """A built-in model for ``data`` whose initial weights depend on the seed alone (torch starts every process
    from a random seed, so without this a seed's network would differ from run to run)."""
    seed_everything(seed)
    return create_model(name, num_classes=data.num_classes, in_chans=data.input_shape[0], width_mult=width)


def trained_seed(name: str, data, width: float, seed: int, out: Path, epochs: int, train: dict) -> Path:
    """``out``, holding the case's seed network (``seed_network``) trained ``epochs`` with ``train``: trained once,
    resumed when a run was cut off, reused when complete."""
    if not (out / "model.safetensors").exists():
        net = seed_network(name, data, width, seed)
        resume = (out / "run.json").exists()
        train_model(net, data, out=out, epochs=epochs, seed=seed, train=train, progress=False, resume=resume)
    return out


def environment() -> dict:
    """Hardware and software facts that every committed figure carries."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({_cpu_name()})",
        "cost_convention": "MACs of one forward pass at batch 1 (conv/linear/matmul); FLOPs = 2 x MACs",
    }


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def log_events(run_dir: Path) -> list[dict]:
    """A run directory's JSONL log (log.jsonl), one dict per event."""
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def epoch_seconds(run_dir: Path, phase: str) -> list[float]:
    """Wall seconds of every logged epoch of ``phase`` in a run directory."""
    return [e["seconds"] for e in log_events(run_dir) if e.get("event") == "epoch" and e.get("phase") == phase]


def dna_finetune_epochs(epochs: int, search_epochs: int, budgets: int) -> int:
    """DNA's fine-tune epochs per budget when every other entry trains ``epochs`` per budget: its one search
    serves all ``budgets``, so each fine-tune gives up its share of the search and DNA's total (search + all
    fine-tunes) does not exceed anyone's."""
    return epochs - math.ceil(search_epochs / budgets)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def noise_ceiling(accuracies) -> dict:
    """How far repeated trainings of the same architectures (rows: architectures, columns: trainings with
    different seeds) agree: the mean Kendall tau between two trainings (how well one training ranks another, so
    about the most any predictor of accuracy can reach against a single training), and accuracy's standard
    deviation within an architecture against the spread between the architectures' means."""
    from scipy.stats import kendalltau  # scipy comes with the data extra, not with netfit itself

    runs = np.asarray(accuracies, dtype=float)
    pairs = itertools.combinations(range(runs.shape[1]), 2)
    return {
        "tau_between_retrains": float(np.mean([kendalltau(runs[:, a], runs[:, b]).statistic for a, b in pairs])),
        "std_within": float(np.mean(runs.std(axis=1, ddof=1))),
        "std_between": float(runs.mean(axis=1).std(ddof=1)),
    }


def noise_ceiling_text(ceilings: list[dict]) -> str:
    """One sentence for a results table: each seed's noise ceiling (``noise_ceiling``'s keys), in order."""

    def each(key: str, scale: float = 1.0) -> str:
        return ", ".join(f"{scale * c[key]:.2f}" for c in ceilings)

    return (
        "Noise ceiling: two trainings of the same architectures rank each other with tau "
        f"{each('tau_between_retrains')} (mean over pairs; about the most any predictor reaches against one "
        f"training); accuracy's standard deviation within an architecture {each('std_within', 100)} points, "
        f"between the architectures' means {each('std_between', 100)} points."
    )


def merge_runs(paths: list[Path]) -> tuple[dict, list[dict]]:
    """Seeds measured by separate processes (one result JSON each, same settings): the first payload and every
    run, ordered by seed."""
    payloads = [json.loads(p.read_text()) for p in paths]
    return payloads[0], sorted((r for p in payloads for r in p["runs"]), key=lambda r: r["seed"])


def add_case_arguments(parser: argparse.ArgumentParser, budgets: list[float], width: float = 0.25) -> None:
    """The options that name a benchmark case: data set, built-in model, its width and the budgets (% MACs)."""
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="resnet18_1d")
    parser.add_argument("--width", type=float, default=width)
    parser.add_argument("--budgets", type=float, nargs="+", default=budgets)


def write_results(name: str, payload: dict, markdown: str, out: Path = RESULTS) -> None:
    """<out>/<name>.json and <name>.md (out: benchmarks/results by default)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{name}.md").write_text(markdown)


class _OperationCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def operation_count(fn) -> int:
    """The aten operations one call of ``fn`` dispatches (forward and backward), views left out: about one
    kernel launch each on a GPU, where a small network's step costs its launches rather than its MACs. Counted
    the same on any device, so a CPU measures what a step would cost a launch-bound GPU."""
    fn()  # built and cached what a first call builds (sliced layers, index tensors)
    with _OperationCounter() as counter:
        fn()
    return counter.count


def median_seconds(fn, repeats: int, cuda: bool = False) -> float:
    """Median wall seconds of ``fn`` after one warm-up (on CUDA, the queued kernels included)."""
    sync = device_sync(torch.device("cuda" if cuda else "cpu"))
    return statistics.median(time_calls(fn, 1, repeats, sync))
