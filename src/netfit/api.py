"""The pipeline: seed -> method search -> one cost model -> Pareto front -> run directory.

Example:
    >>> import netfit
    >>> result = netfit.adapt("resnet18_cifar", data="digits", budget="50%", method="uniform", out="runs/r18")
    >>> result.selected_model  # a plain nn.Module, also saved in runs/r18/<id>/
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .budget import Budget, format_metric, parse_budgets
from .cost import count_cost
from .cost.counting import resolve_device
from .data import DataBundle, load_data
from .distill import LogitDistiller
from .engine import RunLog, TrainConfig, evaluate, seed_everything
from .engine.distributed import default_device, is_main
from .engine.log import session_seconds
from .errors import CheckpointError, NetfitError
from .export import load_model, save_model
from .fileio import atomic_write_text
from .health import candidate_warning
from .methods import Candidate, Seed, Target, create_method
from .models import arch_of, create_model
from .pareto import pareto_front
from .report import write_report
from .run import Run

logger = logging.getLogger("netfit")

RESULT_FILE = "result.json"
SETTINGS_FILE = "run.json"


@dataclass
class Result:
    """What ``adapt`` returns: the result.json content, the run directory and the trained models by id."""

    out: Path
    summary: dict[str, Any]
    models: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def selected_model(self) -> nn.Module | None:
        selected = self.summary.get("selected")
        return self.models.get(selected) if selected else None


def adapt(
    model: str | nn.Module = "resnet18_cifar",
    data: str | DataBundle = "digits",
    budget: str | list[str] = "50%",
    method: str = "uniform",
    *,
    out: str | Path = "runs/adapt",
    epochs: int = 10,
    seed_epochs: int = 15,
    seed: int = 0,
    seed_weights: str | Path | None = None,
    train_seed: bool | None = None,
    method_options: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Result:
    """Fit ``model`` to ``budget`` on ``data`` with ``method`` and write the run directory ``out``.

    Args:
        model: a built-in name (``netfit.list_models()``), ``timm:NAME``, or your own nn.Module (taken as
            already trained unless ``train_seed=True``).
        data: a built-in data set name (``digits``, ``mnist1d``, ``mnist10k``), a path, or a DataBundle.
        budget: "50%", "300M macs", "1.2M params", "2ms latency", "20MB memory", or several: "25%,50%".
        method: a registered method (``netfit list methods``).
        out: the run directory (result.json, report.md, front.png, log.jsonl, one folder per candidate).
        epochs: training epochs of every adapted network.
        seed_epochs: epochs to train a built-in seed before adapting it.
        seed: random seed of the run (data splits use a fixed split seed, independent of it).
        seed_weights: a folder with model.safetensors + arch.json to use as the trained seed.
        train_seed: train the seed first; default: yes for names, no for nn.Modules and seed_weights.
        method_options: options of the method (see ``netfit list methods``).
        train: TrainConfig overrides (lr, batch_size, optimizer, weight_decay, ...).
        resume: continue an interrupted run in ``out`` from its checkpoints.
        device: "cpu", "cuda", "cuda:1"; default: the local GPU if any.
        progress: show progress bars.
    """
    out = Path(out)
    targets_budgets = parse_budgets(budget)
    bundle = data if isinstance(data, DataBundle) else load_data(data)
    method_impl = create_method(method, method_options)
    config = _train_config(epochs, seed, train)
    settings = {
        "netfit_version": __version__,
        "method": method,
        "method_options": method_options or {},
        "model": model if isinstance(model, str) else type(model).__name__,
        "data": bundle.name,
        "budget": [b.spec for b in targets_budgets],
        "epochs": epochs,
        "seed_epochs": seed_epochs,
        "seed": seed,
        "seed_weights": str(seed_weights) if seed_weights else None,
        "train": config.to_dict(),
    }
    _prepare_run_dir(out, settings, resume)
    seed_everything(seed)
    earlier = sum(session_seconds(out / "log.jsonl")) if resume else 0.0
    run = _new_run(out, config, device, bundle, resume, progress)
    run.log.write("start", **settings)
    started = time.perf_counter()
    seed_net = _prepare_seed(model, bundle, run, seed_epochs, seed_weights, train_seed, targets_budgets[0])
    seed_seconds = time.perf_counter() - started
    targets = [Target(b, b.resolve(seed_net.metric_value)) for b in targets_budgets]
    search_started = time.perf_counter()
    candidates = method_impl.search(seed_net, bundle, targets, run)
    search_seconds = time.perf_counter() - search_started + earlier
    summary = _summarise(settings, seed_net, targets, candidates, bundle, run)
    summary["timing"] = {
        "seed_seconds": round(seed_seconds, 2),
        "search_seconds": round(search_seconds, 2),
        "search_over_seed_training": round(search_seconds / seed_seconds, 3) if seed_seconds > 1 else None,
        "interrupted_sessions_seconds": round(earlier, 2),
    }
    if is_main():
        atomic_write_text(out / RESULT_FILE, json.dumps(summary, indent=2))
        write_report(summary, out)
    run.log.write("done", selected=summary["selected"], seconds=round(time.perf_counter() - started, 2))
    return Result(out, summary, {c.id: c.model for c in candidates})


def _train_config(epochs: int, seed: int, overrides: dict[str, Any] | None) -> TrainConfig:
    return TrainConfig(**{"epochs": epochs, "seed": seed, **(overrides or {})}).validate()


def _new_run(out: Path, config: TrainConfig, device, data: DataBundle, resume: bool, progress: bool) -> Run:
    device = resolve_device(device) if device else default_device()
    return Run(out, config, config.seed, device, data.input_shape, resume, progress, RunLog(out / "log.jsonl"))


def _prepare_run_dir(out: Path, settings: dict, resume: bool) -> None:
    if not is_main():  # rank 0 owns the run directory; other ranks would race with its writes
        return
    settings_path = out / SETTINGS_FILE
    if settings_path.exists():
        if not resume:
            raise NetfitError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        try:
            previous = json.loads(settings_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{settings_path} is unreadable ({e}); start a new run in another --out") from e
        changed = sorted(k for k in settings if k != "netfit_version" and previous.get(k) != settings[k])
        if changed:
            raise CheckpointError(
                f"cannot resume {out}: settings differ from the interrupted run ({', '.join(changed)}); "
                "resume with the same settings or choose another --out"
            )
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(settings_path, json.dumps(settings, indent=2))
    except OSError as e:
        raise NetfitError(f"cannot write the run directory {out}: {e.strerror or e}") from e


def _prepare_seed(
    model, data: DataBundle, run: Run, seed_epochs: int, seed_weights, train_seed: bool | None, budget: Budget
) -> Seed:
    """Build, load or take the seed; train it when asked (a resumable phase named "seed"); measure it."""
    if seed_weights is not None:
        net, name = load_model(seed_weights), str(seed_weights)
    elif isinstance(model, str):
        net, name = create_model(model, num_classes=data.num_classes, in_chans=data.input_shape[0]), model
    else:
        net, name = model, type(model).__name__
    check_compatible(net, name, data)
    if train_seed if train_seed is not None else (isinstance(model, str) and seed_weights is None):
        net = run.train(net, data, "seed", epochs=seed_epochs).model
        if is_main():
            save_model(net, run.out / "seed", input_shape=data.input_shape, meta={"role": "seed"})
    net = net.to(run.device).eval()
    cost = count_cost(net, data.input_shape)
    accuracy = evaluate(net, data, "test", device=run.device)["accuracy"]
    value = run.measure(net, budget.metric, device=budget.device, backend=budget.backend)
    run.log.write("seed", name=name, macs=cost.macs, params=cost.params, accuracy=accuracy)
    return Seed(net, name, tuple(data.input_shape), cost.macs, cost.params, accuracy, value)


def check_compatible(model: nn.Module, name: str, data: DataBundle) -> None:
    """One clear error when the model cannot take the data's samples or predicts the wrong number of classes."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)  # a fixed teacher may hold neither
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros(2, *data.input_shape, device=device))
    except Exception as e:  # any failure here means shape/type mismatch, reported once
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NetfitError(
            f"model {name} cannot process samples of shape {tuple(data.input_shape)} from {data.name}: {first}; "
            "pick a model for this input (e.g. a *_1d model for 1-D signals)"
        ) from e
    finally:
        model.train(was_training)
    if logits.ndim != 2 or logits.shape[1] != data.num_classes:
        raise NetfitError(
            f"model {name} outputs shape {tuple(logits.shape)} but {data.name} has {data.num_classes} classes; "
            "it must return (batch, num_classes) logits"
        )


def _summarise(
    settings: dict, seed: Seed, targets: list[Target], candidates: list[Candidate], data: DataBundle, run: Run
) -> dict:
    """Measure every candidate with the one cost model, evaluate it, save it, and build result.json."""
    primary = targets[0]
    if len({c.id for c in candidates}) != len(candidates):
        raise RuntimeError(f"method returned duplicate candidate ids: {[c.id for c in candidates]}")
    rows = []
    for cand in candidates:
        model = cand.model.to(run.device).eval()
        cost = count_cost(model, data.input_shape)
        value = run.measure(model, primary.metric, device=primary.budget.device, backend=primary.budget.backend)
        limit = (cand.target or primary).limit
        row = {
            "id": cand.id,
            primary.metric: value,  # first, so the exact integer counts below win for macs/params budgets
            **cost.as_dict(),
            "accuracy": evaluate(model, data, "test", device=run.device)["accuracy"],
            "val_accuracy": evaluate(model, data, "val", device=run.device)["accuracy"],  # what selection reads
            "target": cand.target.budget.spec if cand.target else None,
            "within_budget": bool(value <= limit),
            "weights": cand.id,
            "info": cand.info,
            "arch": arch_of(model),
        }
        row["warning"] = candidate_warning(row["accuracy"], seed.accuracy, data.num_classes)
        if row["warning"]:
            logger.warning("candidate %s: %s", cand.id, row["warning"])
            run.log.write("warning", id=cand.id, message=row["warning"])
        if is_main():
            save_model(
                model,
                run.out / cand.id,
                arch=row["arch"],
                input_shape=data.input_shape,
                meta={"method": settings["method"], "id": cand.id, "accuracy": row["accuracy"]},
            )
        rows.append(row)
    front = pareto_front([r[primary.metric] for r in rows], [r["accuracy"] for r in rows])
    smallest = min(rows, key=lambda r: r[primary.metric], default=None)
    why_none = (
        f"the smallest, {smallest['id']}, costs {format_metric(smallest[primary.metric], primary.metric)}"
        if smallest
        else "the method returned none"
    )
    budgets = []
    for target in targets:  # every budget shares the primary's metric (parse_budgets)
        budgets.append({**target.budget.describe(target.limit), "selected": _best_within(rows, target)})
        if budgets[-1]["selected"] is None:
            message = f"no candidate within budget {target.budget.spec!r} ({why_none})"
            logger.warning(message)
            run.log.write("warning", budget=target.budget.spec, message=message)
    return {
        "netfit_version": __version__,
        "method": settings["method"],
        "model": settings["model"],
        "data": data.name,
        "budget": primary.budget.describe(primary.limit),
        "budgets": budgets,
        "seed": {
            primary.metric: seed.metric_value,
            "macs": seed.macs,
            "flops": 2 * seed.macs,
            "params": seed.params,
            "accuracy": seed.accuracy,
        },
        "candidates": rows,
        "pareto": [rows[i]["id"] for i in front],
        "selected": budgets[0]["selected"],
        "settings": {**settings, "data_source": data.describe(), "device": str(run.device), "torch": torch.__version__},
    }


def _best_within(rows: list[dict], target: Target) -> str | None:
    """The candidate within ``target``'s limit with the best VALIDATION accuracy, the cheaper on a tie (a flagged
    one only when no sound one fits). Choosing on the test split would report the maximum of several noisy test
    scores as if it were one held-out measurement."""
    metric = target.budget.metric
    fitting = [r for r in rows if r[metric] <= target.limit]
    best = max(fitting, key=lambda r: (r["warning"] is None, r["val_accuracy"], -r[metric]), default=None)
    return best["id"] if best else None


def load_result(run_dir: str | Path) -> dict:
    """Read a run directory's result.json (clear error when it is missing or corrupt)."""
    path = Path(run_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NetfitError(f"{path} not found; is {run_dir} a finished netfit run directory?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e})") from e


def train_model(
    model: str | nn.Module,
    data: str | DataBundle,
    *,
    out: str | Path,
    epochs: int = 15,
    seed: int = 0,
    train: dict[str, Any] | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    teacher: str | Path | nn.Module | None = None,
    kd_weight: float = 1.0,
) -> dict:
    """Train a built-in model (a name, or one made with ``create_model`` options) on a data set and save it
    (model.safetensors + arch.json) in ``out``. With a ``teacher`` (a trained nn.Module, put in eval mode and
    frozen, or a netfit model folder) the loss adds ``kd_weight`` x Hinton KD from the teacher's logits."""
    bundle = data if isinstance(data, DataBundle) else load_data(data)
    out = Path(out)
    config = _train_config(epochs, seed, train)
    seed_everything(seed)
    if isinstance(model, str):
        name, net = model, create_model(model, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0])
    else:
        name, net = type(model).__name__, model
    check_compatible(net, name, bundle)
    extra = []
    if teacher is not None:
        if kd_weight <= 0:
            raise NetfitError(f"kd_weight must be > 0 with a teacher (got {kd_weight})")
        frozen = teacher if isinstance(teacher, nn.Module) else load_model(teacher)
        check_compatible(frozen, f"teacher {type(teacher).__name__ if frozen is teacher else teacher}", bundle)
        extra.append(LogitDistiller(frozen, weight=kd_weight))
    run = _new_run(out, config, device, bundle, resume, progress)
    result = run.train(net, bundle, "train", extra_losses=extra)
    accuracy = evaluate(result.model, bundle, "test", device=run.device)["accuracy"]
    cost = count_cost(result.model, bundle.input_shape)
    if is_main():
        save_model(
            result.model,
            out,
            input_shape=bundle.input_shape,
            meta={"model": name, "data": bundle.name, "accuracy": accuracy, "epochs": epochs},
        )
    return {"model": name, "data": bundle.name, "accuracy": accuracy, **cost.as_dict(), "out": str(out)}
