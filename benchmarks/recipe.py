"""Seed recipe: netfit's default training recipe against a standard well-tuned one, at equal epochs.

    python -m benchmarks.recipe --seeds 0 1 2

The "standard" recipe is SGD with Nesterov momentum 0.9, weight decay 5e-4 and a one-cycle learning rate with
peak 0.1; netfit's default is what ``netfit train`` and the seed phase of ``netfit adapt`` use (``TrainConfig``'s
defaults). Every recipe trains the same initial weights (seeded) on the same split for the same epochs; the
figures are test accuracies. Writes benchmarks/results/recipe.json/.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from netfit.api import train_model
from netfit.data import load_data
from netfit.engine import TrainConfig

from .common import environment, mean_std, seed_network, write_results

STANDARD = {"optimizer": "sgd", "nesterov": True, "momentum": 0.9, "weight_decay": 5e-4, "lr": 0.1}
RECIPES = {
    "netfit default": {},
    "standard (one-cycle, peak 0.1)": {**STANDARD, "schedule": "onecycle"},
}
CASES = (  # (data, model, width, epochs)
    ("mnist1d", "resnet18_1d", 1.0, 20),
    ("mnist10k", "resnet18_cifar", 0.25, 20),
)


def run(seeds: list[int], root: Path) -> dict:
    rows = []
    for data_name, model_name, width, epochs in CASES:
        data = load_data(data_name)
        for seed in seeds:
            for recipe, overrides in RECIPES.items():
                model = seed_network(model_name, data, width, seed)  # the same initial weights for every recipe
                started = time.perf_counter()
                out = root / f"{data_name}-{seed}-{len(rows)}"
                figures = train_model(model, data, out=out, epochs=epochs, seed=seed, train=overrides, progress=False)
                rows.append(
                    {
                        "data": data_name,
                        "model": model_name,
                        "width": width,
                        "epochs": epochs,
                        "seed": seed,
                        "recipe": recipe,
                        "settings": TrainConfig(epochs=epochs, seed=seed).replace(**overrides).to_dict(),
                        "accuracy": figures["accuracy"],
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(f"{data_name} {model_name} seed {seed} {recipe}: {figures['accuracy']:.4f}", flush=True)
    return {"rows": rows, "environment": environment(), "recipes": RECIPES}


def to_markdown(payload: dict) -> str:
    env = payload["environment"]
    lines = [
        "# Seed recipe: netfit's default vs a standard recipe, equal epochs",
        "",
        "`python -m benchmarks.recipe` - test accuracy %, mean ± std over seeds, batch 128, same initial weights "
        f"and split per seed. Hardware: {env['device']}, {env['cpu_threads']} threads; torch {env['torch']}.",
        "",
        "| data | model | epochs | recipe | test accuracy % | seeds | seconds per run |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in payload["rows"]:
        groups.setdefault((r["data"], r["model"], r["width"], r["epochs"], r["recipe"]), []).append(r)
    for (data, model, width, epochs, recipe), rows in groups.items():
        acc = mean_std([100 * r["accuracy"] for r in rows])
        seconds = mean_std([r["seconds"] for r in rows])[0]
        lines.append(
            f"| {data} | {model} (width {width:g}) | {epochs} | {recipe} | {acc[0]:.2f} ± {acc[1]:.2f} | "
            f"{len(rows)} | {seconds:.0f} |"
        )
    shown = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs")
    defaults = {k: v for k, v in asdict(TrainConfig()).items() if k in shown}
    changes = "; ".join(f"{k}: `{v or 'no change'}`" for k, v in payload["recipes"].items())
    lines += ["", f"Recipes, as changes to netfit's defaults `{defaults}`: {changes}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=None, help="run directories (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        payload = run(args.seeds, args.root or Path(tmp))
    markdown = to_markdown(payload)
    write_results("recipe", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
