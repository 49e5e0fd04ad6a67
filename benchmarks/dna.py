"""DNA vs uniform vs random on the same seed, data split, budgets and epochs.

    python -m benchmarks.dna --data mnist1d --model resnet18_1d --seeds 0 1 2

Every method starts from the same trained seed (trained once per seed by the DNA run and reused by the others
through ``seed_weights``). DNA searches all budgets in ONE supernet run of ``--search-epochs`` and fine-tunes
each result for ``--epochs``; uniform and random get ``search + fine-tune`` epochs per budget, so every
adapted network has had at least as many epochs of training after the seed as DNA's. Writes
benchmarks/results/dna_<data>_<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from netfit.api import adapt
from netfit.data import load_data
from netfit.models import create_model

from .common import RESULTS, environment, mean_std, write_results


def _epoch_seconds(run_dir: Path, phase: str) -> float:
    """Median wall seconds of one epoch of ``phase`` from the run log."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rows if r.get("event") == "epoch" and r.get("phase") == phase]
    return statistics.median(seconds) if seconds else float("nan")


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    data = load_data(args.data)
    budgets = ",".join(f"{b:g}%" for b in args.budgets)
    common = {"seed": seed, "progress": False, "train": {"batch_size": args.batch_size, "lr": args.lr}}
    model = create_model(args.model, num_classes=data.num_classes, in_chans=data.input_shape[0], width_mult=args.width)
    t0 = time.perf_counter()
    dna = adapt(
        model,
        data,
        budgets,
        "dna",
        out=root / f"dna-{seed}",
        epochs=args.epochs,
        seed_epochs=args.seed_epochs,
        train_seed=True,
        method_options={"search_epochs": args.search_epochs, "warmup_epochs": args.warmup},
        **common,
    )
    dna_seconds = time.perf_counter() - t0
    seed_dir = root / f"dna-{seed}" / "seed"
    seed_epoch = _epoch_seconds(root / f"dna-{seed}", "seed")
    rows = {"dna": dna.summary["candidates"]}
    seconds = {"dna": dna_seconds}
    for method, options in (("uniform", {}), ("random", {"samples": 1})):
        t0 = time.perf_counter()
        result = adapt(
            args.model,
            data,
            budgets,
            method,
            out=root / f"{method}-{seed}",
            epochs=args.search_epochs + args.epochs,
            seed_weights=seed_dir,
            method_options=options,
            **common,
        )
        seconds[method] = time.perf_counter() - t0
        rows[method] = result.summary["candidates"]
    return {
        "seed": seed,
        "seed_net": {k: dna.summary["seed"][k] for k in ("macs", "params", "accuracy")},
        "budgets": args.budgets,
        "results": {
            method: [
                {k: c[k] for k in ("id", "macs", "params", "accuracy")} | {"info": _short(c["info"])} for c in cands
            ]
            for method, cands in rows.items()
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seed_epoch_seconds": round(seed_epoch, 2),
        "search_epoch_seconds": round(_epoch_seconds(root / f"dna-{seed}", "dna-search"), 2),
        "search_vs_seed_training": round(
            args.search_epochs * _epoch_seconds(root / f"dna-{seed}", "dna-search") / (args.seed_epochs * seed_epoch),
            3,
        ),
    }


def _short(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in ("expected_widths", "width_ratios")}


def to_markdown(args: argparse.Namespace, runs: list[dict]) -> str:
    seed_acc = mean_std([r["seed_net"]["accuracy"] for r in runs])
    lines = [
        f"# DNA vs baselines on {args.data} with {args.model} (width x{args.width})",
        "",
        f"Seeds {[r['seed'] for r in runs]}; seed network trained {args.seed_epochs} epochs "
        f"({runs[0]['seed_net']['macs']:,} MACs, {runs[0]['seed_net']['params']:,} params, test accuracy "
        f"{100 * seed_acc[0]:.2f} ± {100 * seed_acc[1]:.2f}%).",
        f"DNA: one supernet search of {args.search_epochs} epochs ({args.warmup} warm-up) for all budgets, then "
        f"{args.epochs} fine-tune epochs per budget (KD from the seed). uniform (L1 width) and random (1 sample, "
        f"per-group widths + depths): {args.search_epochs + args.epochs} fine-tune epochs per budget.",
        f"Data: {load_data(args.data).source}.",
        "",
        "| budget (of seed MACs) | method | test accuracy (mean ± std) | MACs | params | vs best baseline |",
        "|---|---|---|---|---|---|",
    ]
    for i, budget in enumerate(args.budgets):
        stats = {}
        for method in ("dna", "uniform", "random"):
            acc = [r["results"][method][i]["accuracy"] for r in runs]
            stats[method] = (mean_std(acc), statistics.fmean(r["results"][method][i]["macs"] for r in runs))
            params = statistics.fmean(r["results"][method][i]["params"] for r in runs)
            stats[method] += (params,)
        best = max(stats["uniform"][0][0], stats["random"][0][0])
        for method, ((m, s), macs, params) in stats.items():
            delta = f"{100 * (m - best):+.2f}" if method == "dna" else ""
            lines.append(
                f"| {budget:g}% | {method} | {100 * m:.2f} ± {100 * s:.2f}% | {macs:,.0f} | {params:,.0f} | {delta} |"
            )
    ratio = mean_std([r["search_vs_seed_training"] for r in runs])
    step = mean_std([r["search_epoch_seconds"] / r["seed_epoch_seconds"] for r in runs])
    lines += [
        "",
        f"Supernet search epoch / dense seed epoch (same run, same data): {step[0]:.2f}x "
        "(largest grown net + soft architecture pass + smallest + 1 sampled sub-net per step).",
        f"DNA search wall time / training the seed once: {ratio[0]:.2f}x.",
        "MACs of one forward pass at batch 1 (conv/linear); FLOPs = 2 x MACs. Accuracy on the held-out test split.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="resnet18_1d")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[50, 25, 10, 5, 2, 1, 150])
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the committed JSON")
    args = parser.parse_args()
    name = f"dna_{args.data}_{args.model}"
    if args.rewrite:
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, payload, to_markdown(argparse.Namespace(**payload["settings"]), payload["runs"]))
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-dna-"))
    runs = [run_seed(args, s, root) for s in args.seeds]
    payload = {"benchmark": "dna", "settings": vars(args) | {"root": str(root)}, "environment": environment()}
    payload["runs"] = runs
    write_results(name, payload, to_markdown(args, runs))
    print(to_markdown(args, runs))


if __name__ == "__main__":
    main()
