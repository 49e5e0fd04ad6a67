"""DNA on a user-defined ResNet vs the built-in ResNet of the same shape: same seed weights, same settings.

    python -m benchmarks.user_dna                         # digits, ResNet-18 (CIFAR-style, width 0.25), 3 seeds
    python -m benchmarks.user_dna --seeds 0 --epochs 4    # a quick look

The user network is tests/user_zoo.py's ``ResNet`` (plain ``nn.Module`` classes, no netfit code) with the stages
of netfit's ``resnet18_cifar`` at width 0.25, so both networks have the same layers, MACs and parameters. Per
seed the built-in seed network is trained once and its weights are copied into the user network (checked: the
same logits), then ``dna`` (and ``uniform`` for reference) adapt each to the same budgets with the same epochs.
The built-in runs through netfit's staged ResNet; the user network through tracing (channel groups, blocks
found in the graph, ``staged_graph`` export). Issue 19's target: the same accuracy per MAC, depth searched on
both. Writes benchmarks/results/user_dna_<data>.{json,md}; finished runs under --root are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

import netfit
from netfit.api import adapt
from netfit.data import DataBundle, load_data

from .common import dna_finetune_epochs, environment, log_events, mean_std, trained_seed, write_results
from .user_models import zoo

BUILTIN = ("resnet18_cifar", 0.25)
STAGES = (16, 32, 64, 128)  # resnet18_cifar's stage widths at width 0.25
ENTRIES = ("dna", "uniform")


def user_copy(seed: nn.Module) -> nn.Module:
    """The user-defined ResNet with the trained built-in's weights (same tensors in the same order)."""
    user_zoo, _ = zoo()
    user = user_zoo["ResNet"](cin=seed.stem.conv.in_channels, classes=seed.head.fc.out_features, stages=STAGES)
    theirs, ours = seed.state_dict(), user.state_dict()
    if [t.shape for t in theirs.values()] != [t.shape for t in ours.values()]:
        raise RuntimeError("the user ResNet's tensors do not line up with the built-in's")
    user.load_state_dict(dict(zip(ours, theirs.values())))
    return user.eval()


def train_seed(bundle: DataBundle, seed: int, epochs: int, out: Path) -> Path:
    """The built-in seed network of one seed (trained once, resumed when cut off, reused when complete)."""
    return trained_seed(BUILTIN[0], bundle, BUILTIN[1], seed, out, epochs, {})


def run_entry(
    model, entry: str, bundle: DataBundle, args: argparse.Namespace, seed: int, seed_dir: Path, out: Path
) -> dict:
    """One method on one network; returns its result summary (reused when the run finished)."""
    if not (out / "result.json").exists():
        options, epochs = {}, args.epochs
        if entry == "dna":
            # depth growth as DNA grew by default when these results were made: the comparison is about depth
            options = {"search_epochs": args.search_epochs, "grow_depth": 0.5}
            epochs = dna_finetune_epochs(args.epochs, args.search_epochs, len(args.budgets))
        weights = seed_dir if isinstance(model, str) else None
        budgets = ",".join(f"{b:g}%" for b in args.budgets)
        adapt(
            model, bundle, budgets, entry, out=out, epochs=epochs, seed=seed, seed_weights=weights,
            method_options=options, resume=out.exists(), progress=False,
        )  # fmt: skip
    return json.loads((out / "result.json").read_text())


def space_depths(run_dir: Path) -> list[int] | None:
    """The most blocks per stage DNA's search space allowed (its ``dna-space`` log event)."""
    return next((e["depths"] for e in log_events(run_dir) if e["event"] == "dna-space"), None)


def rows_of(summary: dict, network: str, entry: str, seed: int, run_dir: Path) -> list[dict]:
    seed_macs = summary["seed"]["macs"]
    reach = space_depths(run_dir)
    return [
        {
            "network": network,
            "entry": entry,
            "seed": seed,
            "budget": c["target"],
            "accuracy": 100 * c["accuracy"],
            "macs": c["macs"],
            "macs_percent": 100 * c["macs"] / seed_macs,
            "params": c["params"],
            "within_budget": c["within_budget"],
            "depths": c["info"].get("depths"),
            "space_depths": reach,
            "family": c["arch"]["family"],
            "seed_accuracy": 100 * summary["seed"]["accuracy"],
        }
        for c in summary["candidates"]
    ]


def run(args: argparse.Namespace) -> list[dict]:
    rows, bundle = [], load_data(args.data)
    for seed in args.seeds:
        root = args.root / f"s{seed}"
        seed_dir = train_seed(bundle, seed, args.seed_epochs, root / "seed")
        builtin = netfit.load(seed_dir).eval()
        user = user_copy(builtin)
        x = torch.randn(8, *bundle.input_shape)
        with torch.no_grad():
            torch.testing.assert_close(user(x), builtin(x))
        for entry in ENTRIES:
            for network, model in (("built-in", BUILTIN[0]), ("user", user)):
                print(f"seed {seed}: {entry} on the {network} ResNet", flush=True)
                out = root / f"{entry}-{network}"
                summary = run_entry(model, entry, bundle, args, seed, seed_dir, out)
                rows += rows_of(summary, network, entry, seed, out)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, env: dict) -> str:
    lines = [
        f"# DNA on a user-defined ResNet vs the built-in ResNet ({args.data})",
        "",
        f"`python -m benchmarks.user_dna --data {args.data} --seeds {' '.join(map(str, args.seeds))}"
        f" --seed-epochs {args.seed_epochs} --epochs {args.epochs} --search-epochs {args.search_epochs}`. "
        "The same trained seed weights in two networks: netfit's `resnet18_cifar` (width 0.25) and "
        "tests/user_zoo.py's `ResNet` written with plain nn.Modules (stages 16/32/64/128, two basic blocks each). "
        f"Seed trained {args.seed_epochs} epochs; every entry {args.epochs} epochs per budget (DNA: "
        f"{args.search_epochs}-epoch search + {dna_finetune_epochs(args.epochs, args.search_epochs, len(args.budgets))}"
        " fine-tune epochs per budget). Mean ± std over seeds; depths: blocks per stage of each seed's result "
        "(the seed has 2 2 2 2).",
        "",
        "DNA's search space allowed at most "
        + "; ".join(
            f"{n}: {' '.join(map(str, d))}"
            for n, d in sorted({(r["network"], tuple(r["space_depths"])) for r in rows if r["space_depths"]})
        )
        + " blocks per stage (growth for the 150% budget). `uniform` gives the same networks and accuracies on "
        "both (the same traced channel groups in the same L1 order): the two paths see one network. DNA's two runs "
        "are not bit-identical (different module structures, so a different order of random draws and of "
        "floating-point sums): compare their difference with the spread over seeds.",
        "",
        "| budget | entry | network | test accuracy % | MACs % of seed | params | depths per seed | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget in [f"{b:g}%" for b in args.budgets]:
        for entry in ENTRIES:
            for network in ("built-in", "user"):
                group = [r for r in rows if (r["budget"], r["entry"], r["network"]) == (budget, entry, network)]
                if not group:
                    continue
                acc, acc_sd = mean_std([r["accuracy"] for r in group])
                macs, _ = mean_std([r["macs_percent"] for r in group])
                params, _ = mean_std([r["params"] for r in group])
                depths = "; ".join(" ".join(map(str, r["depths"])) for r in group if r["depths"])
                lines.append(
                    f"| {budget} | {entry} | {network} | {acc:.2f} ± {acc_sd:.2f} | {macs:.1f} | {params:,.0f} "
                    f"| {depths or '-'} | {len(group)} |"
                )
    seeds = {(r["seed"], r["seed_accuracy"]) for r in rows if r["network"] == "built-in"}
    accs = [a for _, a in sorted(seeds)]
    if accs:
        lines += ["", f"Seed network: {mean_std(accs)[0]:.2f} ± {mean_std(accs)[1]:.2f}% test accuracy."]
    lines += ["", f"{env['device']}; torch {env['torch']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=8)
    parser.add_argument("--budgets", type=float, nargs="+", default=[50, 25, 10, 150])
    parser.add_argument("--root", type=Path, default=Path("runs/user_dna"))
    args = parser.parse_args(argv)
    args.root = args.root / args.data
    rows = run(args)
    env = environment()
    payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": rows}
    write_results(f"user_dna_{args.data}", {**payload, "environment": env}, markdown(rows, args, env))


if __name__ == "__main__":
    sys.exit(main())
