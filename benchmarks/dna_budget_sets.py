"""Does DNA's network at one budget depend on the other budgets searched with it? Same seed, same search and
fine-tune epochs; each budget set searched with and without the ``companion`` budget; `uniform` beside it.

    python -m benchmarks.dna_budget_sets --data mnist1d_hard --seeds 0 1 2 --root R
    (or one process per seed, --seeds S --tag _pS, then --merge <their JSONs>)

Per seed: the seed (``--model`` x``--width``, ``--seed-epochs`` with AdamW), then every ``--sets`` entry (budgets
in % of the seed's MACs, the first the one compared) searched by `dna` with ``-x companion=0`` and with the default,
each fine-tuned ``--epochs`` (the same for every set, so that only the search differs), and `uniform` at the first
set's first budget with ``--epochs`` + 2. Writes benchmarks/results/dna_budget_sets_<data>.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netfit.api import adapt
from netfit.data import load_data
from netfit.methods.dna import DNA

from .common import environment, mean_std, merge_runs, trained_seed, write_results

TRAIN = {"batch_size": 128, "lr": 0.003, "grad_clip": 5.0, "optimizer": "adamw"}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    data, root = load_data(args.data), args.root / f"seed-{seed}"
    seed_dir = trained_seed(args.model, data, args.width, seed, root / "seed", args.seed_epochs, TRAIN)
    runs = {}
    entries = [(budgets, "dna", companion) for budgets in args.sets for companion in (0, None)]
    for budgets, method, companion in [*entries, (args.sets[0][:1], "uniform", None)]:
        name = f"{method}_{'-'.join(b[:-1] for b in budgets)}" + ("" if method == "uniform" else f"_c{companion}")
        label = f"{method} {','.join(budgets)}"
        if method == "dna":
            label += f", companion {DNA.companion:g} (default)" if companion is None else f", companion {companion}"
        out = root / name
        options = {"search_epochs": args.search_epochs} if method == "dna" else {}
        options |= {} if companion is None else {"companion": companion}
        summary = adapt(
            args.model,
            data,
            ",".join(budgets),
            method,
            out=out,
            seed_weights=seed_dir,
            epochs=args.epochs + (2 if method == "uniform" else 0),
            seed=seed,
            train=TRAIN,
            progress=False,
            method_options=options,
            resume=(out / "run.json").exists(),
        ).summary
        runs[label] = {r["target"]: {"accuracy": r["accuracy"], "macs": r["macs"]} for r in summary["candidates"]}
    return {"seed": seed, "seed_accuracy": summary["seed"]["accuracy"], "runs": runs}


def to_markdown(payload: dict) -> str:
    s, seeds = payload["settings"], payload["runs"]
    labels = list(seeds[0]["runs"])
    budgets = sorted({b for seed in seeds for run in seed["runs"].values() for b in run}, key=lambda b: -float(b[:-1]))
    seed_mean, seed_std = mean_std([100 * r["seed_accuracy"] for r in seeds])
    lines = [
        f"# DNA: one budget's network against the budgets searched with it ({s['data']})",
        "",
        f"Seed: {s.get('model', 'resnet18_1d')} x{s['width']}, {s['seed_epochs']} epochs (AdamW lr 0.003), "
        f"test {seed_mean:.2f} ± {seed_std:.2f}% over seeds {[r['seed'] for r in seeds]}. "
        f"`dna`: {s['search_epochs']}-epoch search, {s['epochs']} fine-tune epochs per budget whatever the set; "
        f"`uniform`: {s['epochs'] + 2} epochs. "
        "Test accuracy, mean ± std over the seeds (per seed in brackets).",
        "",
        "| run | " + " | ".join(budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for label in labels:
        cells = []
        for b in budgets:
            values = [100 * seed["runs"][label][b]["accuracy"] for seed in seeds if b in seed["runs"][label]]
            mean, std = mean_std(values) if values else (None, None)
            per_seed = " / ".join(f"{v:.2f}" for v in values)
            cells.append(f"{mean:.2f} ± {std:.2f} ({per_seed})" if values else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist1d_hard")
    parser.add_argument("--model", default="resnet18_1d")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=["5", "5,3", "25,10,5"], help="budget sets, e.g. 5,3")
    parser.add_argument("--seed-epochs", type=int, default=20)
    parser.add_argument("--search-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--root", type=Path, default=Path("runs/dna-budget-sets"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine per-seed JSONs (same settings)")
    args = parser.parse_args()
    if args.merge:
        first, runs = merge_runs(args.merge)
        payload = {**first, "runs": runs}
    else:
        args.sets = [[f"{b}%" for b in entry.split(",")] for entry in args.sets]
        runs = [run_seed(args, seed) for seed in args.seeds]
        settings = {k: v if isinstance(v, int | float | list) else str(v) for k, v in vars(args).items()}
        payload = {"settings": settings, "environment": environment(), "runs": runs}
    write_results(f"dna_budget_sets_{payload['settings']['data']}{args.tag}", payload, to_markdown(payload))


if __name__ == "__main__":
    main()
