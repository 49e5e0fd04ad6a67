"""The ``netfit`` command line: a thin typer layer over the Python API.

User mistakes raise ``NetfitError``; ``main`` prints that one line and exits with code 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import NetfitError

app = typer.Typer(
    name="netfit",
    help="Fit a neural network to a compute budget (MACs, params, latency, memory).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Built-in model name (netfit list models) or timm:NAME.")]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="digits | mnist1d | mnist1d_hard | mnist10k | a path (IDX, CIFAR, image folder, .npz)."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed of the run.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoints.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu | cuda | cuda:N (default: GPU if present).")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate (default 0.05).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Batch size (default 128).")]
OptimOpt = Annotated[str | None, typer.Option("--optimizer", help="sgd | adamw.")]
ClipOpt = Annotated[float | None, typer.Option("--grad-clip", help="Clip gradient norm to this value.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
LayoutOpt = Annotated[
    bool | None,
    typer.Option(
        "--channels-last/--no-channels-last", help="Train image models channels_last (default: on CPU, not on GPU)."
    ),
]


def _train_overrides(
    lr: float | None, batch_size: int | None, optimizer: str | None, grad_clip: float | None, layout: bool | None
) -> dict:
    given = {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "grad_clip": grad_clip}
    return {k: v for k, v in (given | {"channels_last": layout}).items() if v is not None}


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values read as JSON literals (numbers, true/false, null), else kept as strings. No eval."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise NetfitError(f"method option {pair!r} must look like KEY=VALUE, e.g. -x variant=depth")
        options[key.strip()] = option_value(raw)
    return options


def option_value(raw: str) -> Any:
    """A method option's value: a JSON literal (number, true/false, null, list) or else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise NetfitError(f"--input-shape {text!r} must be positive integers like 3,32,32 (C,H,W) or 1,40 (C,L)")
    return shape


@app.command("list")
def list_cmd(
    what: Annotated[str, typer.Argument(help="models | methods | data")] = "models",
    filter: Annotated[str, typer.Option("--filter", help="Glob over names, e.g. 'resnet*'.")] = "*",
) -> None:
    """List registered models, methods or built-in data sets."""
    from .data import DATASETS
    from .methods import METHODS
    from .models import list_models

    if what == "models":
        names = list_models(filter)
    elif what == "methods":
        names = [f"{n:10s} {METHODS.get(n).description}" for n in METHODS.list(filter)]
    elif what == "data":
        names = DATASETS.list(filter)
    else:
        raise NetfitError(f"cannot list {what!r}; use models, methods or data")
    for name in names:
        console.print(name, highlight=False)


@app.command()
def cost(
    model: Annotated[str, typer.Argument(help="Built-in model name, timm:NAME, or a folder with arch.json.")],
    input_shape: Annotated[str, typer.Option("--input-shape", "-s", help="C,H,W or C,L of one sample.")] = "3,32,32",
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes of a built-in model.")] = 10,
    latency: Annotated[bool, typer.Option("--latency", help="Also measure CPU latency (torch).")] = False,
    memory: Annotated[bool, typer.Option("--memory", help="Also measure peak inference memory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count params, MACs and FLOPs (and optionally latency and peak memory) of one forward pass at batch 1."""
    from .cost import count_cost, format_count, measure_latency, peak_memory
    from .export import load_model
    from .models import create_model

    shape = _parse_shape(input_shape)
    net = load_model(model) if Path(model).is_dir() else create_model(model, num_classes, in_chans=shape[0])
    try:
        stats: dict[str, Any] = count_cost(net, shape).as_dict()
    except RuntimeError as e:
        raise NetfitError(f"{model} cannot run on input shape {shape}: {str(e).splitlines()[0]}") from e
    if latency:
        stats["latency"] = measure_latency(net, shape).as_dict()
    if memory:
        stats["memory"] = peak_memory(net, shape).as_dict()
    if as_json:
        console.print_json(json.dumps({"model": model, "input_shape": shape, **stats}))
        return
    console.print(
        f"{model} @ {shape}: {format_count(stats['params'])} params, {format_count(stats['macs'])} MACs, "
        f"{format_count(stats['flops'])} FLOPs (FLOPs = 2 x MACs, batch 1)",
        highlight=False,
    )
    if latency:
        lat = stats["latency"]
        console.print(
            f"latency (torch cpu, {lat['threads']} thread): median {lat['median_ms']:.3f} ms "
            f"[p10 {lat['p10_ms']:.3f}, p90 {lat['p90_ms']:.3f}]",
            highlight=False,
        )
    if memory:
        console.print(
            f"peak inference memory: {stats['memory']['peak_bytes'] / 1e6:.2f} MB ({stats['memory']['method']})",
            highlight=False,
        )


@app.command("train")
def train_cmd(
    model: ModelOpt,
    data: DataOpt = "digits",
    out: OutOpt = Path("runs/train"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 15,
    seed: SeedOpt = 0,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    optimizer: OptimOpt = None,
    grad_clip: ClipOpt = None,
    channels_last: LayoutOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
    teacher: Annotated[
        Path | None,
        typer.Option("--teacher", help="A trained netfit model folder to distil from (Hinton KD on its logits)."),
    ] = None,
    kd_weight: Annotated[float, typer.Option("--kd-weight", help="Weight of the KD loss (with --teacher).")] = 1.0,
) -> None:
    """Train a built-in model on a data set; saves model.safetensors + arch.json (usable as --seed-weights)."""
    from .api import train_model

    summary = train_model(
        model,
        data,
        out=out,
        epochs=epochs,
        seed=seed,
        resume=resume,
        device=device,
        train=_train_overrides(lr, batch_size, optimizer, grad_clip, channels_last),
        progress=not quiet,
        teacher=teacher,
        kd_weight=kd_weight,
    )
    console.print(
        f"trained {model} on {summary['data']}: test accuracy {summary['accuracy']:.2%}, "
        f"{summary['macs']:,} MACs, {summary['params']:,} params -> {out}",
        highlight=False,
    )


@app.command()
def adapt(
    model: ModelOpt = "resnet18_cifar",
    data: DataOpt = "digits",
    budget: Annotated[
        str,
        typer.Option(
            "--budget",
            "-b",
            help="'50%', '300M macs', '0.6G flops', '1.2M params', '2ms latency', '20MB memory'; several: '25%,50%'.",
        ),
    ] = "50%",
    method: Annotated[str, typer.Option("--method", help="Search method (netfit list methods).")] = "uniform",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per adapted network.")] = 10,
    seed_epochs: Annotated[int, typer.Option("--seed-epochs", help="Epochs to train a built-in seed.")] = 15,
    seed_weights: Annotated[
        Path | None,
        typer.Option("--seed-weights", help="Trained seed folder (netfit train --out) instead of training one."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-x", help="Method option KEY=VALUE (repeatable), e.g. -x variant=depth -x kd=true."),
    ] = None,
    out: OutOpt = Path("runs/adapt"),
    seed: SeedOpt = 0,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    optimizer: OptimOpt = None,
    grad_clip: ClipOpt = None,
    channels_last: LayoutOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Adapt a network to a budget and write the run directory (result.json, report.md, front.png, weights)."""
    from .api import adapt as run_adapt

    result = run_adapt(
        model,
        data,
        budget,
        method,
        out=out,
        epochs=epochs,
        seed_epochs=seed_epochs,
        seed=seed,
        seed_weights=seed_weights,
        method_options=_parse_options(option or []),
        train=_train_overrides(lr, batch_size, optimizer, grad_clip, channels_last),
        resume=resume,
        device=device,
        progress=not quiet,
    )
    print_result(result.summary)
    console.print(f"run directory: {out} (report.md, front.png, result.json)", highlight=False)


def print_result(summary: dict) -> None:
    """The result table: the seed, then every candidate; * = on the Pareto front, > = selected."""
    from .budget import format_metric
    from .cost import format_count
    from .report import budget_lines

    budget = summary["budget"]
    table = Table(
        title=f"{summary['method']} on {summary['model']} / {summary['data']}, budget {budget['spec']} "
        f"(= {format_metric(budget['limit'], budget['metric'])})"
    )
    for col in ("", "id", "MACs", "FLOPs", "params", "accuracy", "within budget"):
        table.add_column(col, justify="left" if col in ("", "id") else "right")
    seed = summary["seed"]
    table.add_row(
        "",
        "seed",
        format_count(seed["macs"]),
        format_count(seed["flops"]),
        format_count(seed["params"]),
        f"{seed['accuracy']:.2%}",
        "",
    )
    for row in summary["candidates"]:
        mark = (">" if row["id"] == summary["selected"] else "") + ("*" if row["id"] in summary["pareto"] else "")
        mark += "!" if row.get("warning") else ""
        table.add_row(
            mark,
            row["id"],
            format_count(row["macs"]),
            format_count(row["flops"]),
            format_count(row["params"]),
            f"{row['accuracy']:.2%}",
            "yes" if row["within_budget"] else "no",
        )
    console.print(table)
    console.print(
        "MACs of one forward pass at batch 1 (conv/linear/matmul); FLOPs = 2 x MACs. Accuracy on the test split. "
        "> selected (by validation accuracy, shown in report.md), * Pareto front, ! flagged.",
        highlight=False,
    )
    lines = budget_lines(summary)  # several budgets: one line each, an unmet one included
    for line in lines:
        console.print(line, highlight=False)
    for row in summary["candidates"]:
        if row.get("warning"):
            console.print(f"[yellow]warning:[/yellow] {row['id']} is {row['warning']}", highlight=False)
    for budget in [] if lines else summary.get("budgets", []):
        if "selected" in budget and budget["selected"] is None:
            console.print(f"[yellow]warning:[/yellow] no candidate within budget {budget['spec']!r}", highlight=False)


@app.command("eval")
def eval_cmd(
    path: Annotated[Path, typer.Argument(help="A model folder (arch.json) or a run directory (its selected model).")],
    data: DataOpt = "digits",
    split: Annotated[str, typer.Option("--split", help="test | val | train.")] = "test",
    device: DeviceOpt = None,
) -> None:
    """Evaluate a saved model on a data set split."""
    from .data import load_data
    from .engine import evaluate

    if split not in ("train", "val", "test"):
        raise NetfitError(f"unknown split {split!r}; use train, val or test")
    from .api import check_compatible
    from .export import load_model

    net = load_model(_model_dir(path))
    bundle = load_data(data)
    check_compatible(net, str(path), bundle)
    metrics = evaluate(net, bundle, split, device=device)
    console.print(
        f"{path} on {bundle.name} ({split}): accuracy {metrics['accuracy']:.2%}, loss {metrics['loss']:.4f}, "
        f"n={metrics['n']}",
        highlight=False,
    )


@app.command()
def score(
    model: Annotated[
        str, typer.Argument(help="A model folder, a run directory (scores every candidate) or a built-in name.")
    ],
    data: DataOpt = "digits",
    samples: Annotated[int, typer.Option("--samples", help="Minibatch size of the metrics.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the minibatch draw (and of a built-in's init).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Train-free metrics (NTK condition number, linear regions) with MACs and params: a cheap ranking."""
    from .cost import format_count
    from .trainfree import score_path

    rows = score_path(model, data, samples=samples, seed=seed)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"train-free metrics on {samples} samples of {data}")
    for col in ("id", "NTK cond", "linear regions", "MACs", "params", "accuracy"):
        table.add_column(col, justify="left" if col == "id" else "right")
    for row in rows:
        accuracy = f"{row['accuracy']:.2%}" if "accuracy" in row else ""
        cells = (f"{row['ntk_cond']:.4g}", str(row["linear_regions"]), format_count(row["macs"]))
        table.add_row(row["id"], *cells, format_count(row["params"]), accuracy)
    console.print(table)
    console.print(
        "NTK cond: lower trains more evenly; linear regions: higher is more expressive (see docs/methods/spider.md).",
        highlight=False,
    )


def _model_dir(path: Path) -> Path:
    """A model folder as given, or the selected candidate's folder of a run directory."""
    from .api import RESULT_FILE, load_result
    from .fileio import inside

    if (path / RESULT_FILE).exists() and not (path / "arch.json").exists():
        summary = load_result(path)
        if not summary.get("selected"):
            raise NetfitError(f"run {path} has no candidate within its budget; pass a candidate folder instead")
        return inside(path, next(r["weights"] for r in summary["candidates"] if r["id"] == summary["selected"]))
    return path


@app.command()
def export(
    path: Annotated[Path, typer.Argument(help="A model folder or a run directory (exports its selected model).")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Copy the plain model (model.safetensors + arch.json) here; default: export in place."
        ),
    ] = None,
    onnx: Annotated[
        bool, typer.Option("--onnx", help="Also write model.onnx, checked against torch with ONNX Runtime.")
    ] = False,
) -> None:
    """Export a saved model: plain safetensors + arch.json, and optionally ONNX."""
    from .export import export_onnx, load_model, save_model

    source = _model_dir(path)
    net = load_model(source)
    shape = getattr(net, "netfit_input_shape", None)
    target = out or source
    if out is not None:
        save_model(net, out, input_shape=shape)
        console.print(f"wrote {out}/model.safetensors and {out}/arch.json", highlight=False)
    if onnx:
        if shape is None:
            raise NetfitError(f"{source}/arch.json has no input_shape, which ONNX export needs; re-save with netfit")
        report = export_onnx(net, target / "model.onnx", shape)
        console.print(
            f"wrote {target / 'model.onnx'} (max |onnx - torch| = {report['max_abs_diff']:.2e})", highlight=False
        )
    if out is None and not onnx:
        console.print(f"{source} already holds the plain model; pass --out DIR to copy it or --onnx", highlight=False)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where a comparison plot of several runs goes.")
    ] = None,
) -> None:
    """Rewrite report.md and front.png of a run, or plot several runs' fronts together."""
    from .api import load_result
    from .report import plot_fronts, write_report

    results = [load_result(r) for r in runs]
    for summary, run_dir in zip(results, runs):
        write_report(summary, run_dir)
        print_result(summary)
    if len(results) > 1:
        target = out or Path("front.png")
        plot_fronts(results, target)
        console.print(f"wrote {target}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; user errors print one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(args=argv, prog_name="netfit")  # typer reports usage errors itself and exits with code 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except KeyboardInterrupt:
        err_console.print("interrupted; continue with the same command and --resume")
        return 130
    except NetfitError as e:
        err_console.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
