"""Latency budgets: each method's result measured against its latency budget, side by side in one process.

    python -m benchmarks.latency --data mnist1d --model resnet18_1d --width 0.25 --budgets 50 25

One seed network is trained; ``uniform``, ``random``, ``dna`` (searching on its per-layer latency table) and
``dna-macs`` (DNA searching on MACs scaled by the seed's latency per MAC, ``latency_table=false``) adapt it to
"<b>% latency" (median latency of one batch-1 forward pass, torch on this CPU). Afterwards the seed and
every result are timed again here, interleaved, so the ratio latency / budget is measured under the same
conditions for all. Writes benchmarks/results/latency_<data>_<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from netfit.api import adapt
from netfit.cost import measure_latency
from netfit.data import load_data
from netfit.export import load_model

from .common import add_case_arguments, dna_finetune_epochs, environment, trained_seed, write_results

ENTRIES = {  # label -> (method, options)
    "uniform": ("uniform", {}),
    "random": ("random", {"samples": 1}),
    "dna": ("dna", {}),
    "dna-macs": ("dna", {"latency_table": False}),
}


def run(args: argparse.Namespace) -> dict:
    data = load_data(args.data)
    root = args.root
    train = {"batch_size": 128, "lr": 0.05}
    trained_seed(args.model, data, args.width, 0, root / "seed", args.seed_epochs, train)
    budgets = ",".join(f"{b:g}% latency" for b in args.budgets)
    results = {}
    for label, (method, options) in ENTRIES.items():
        out = root / label
        epochs = args.epochs
        if method == "dna":
            options = options | {"search_epochs": args.dna_search_epochs}
            epochs = dna_finetune_epochs(args.epochs, args.dna_search_epochs, len(args.budgets))
        if not (out / "result.json").exists():
            adapt(
                args.model, data, budgets, method, out=out, epochs=epochs,
                seed_weights=root / "seed", method_options=options, train=train, resume=out.exists(), progress=False,
            )  # fmt: skip
        results[label] = json.loads((out / "result.json").read_text())
    models = {"seed": load_model(root / "seed")}
    for method, result in results.items():
        for c in result["candidates"]:
            models[f"{method}/{c['id']}"] = load_model(root / method / c["weights"])
    timings: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):  # interleaved rounds: drift of the machine hits every model alike
        for name, model in models.items():
            timings[name].append(measure_latency(model, data.input_shape).median_ms)
    remeasured = {name: statistics.median(values) for name, values in timings.items()}
    rows = []
    for method, result in results.items():
        limits = {b["spec"]: b["limit"] for b in result["budgets"]}
        for c in result["candidates"]:
            limit = limits[c["target"]]
            again = remeasured[f"{method}/{c['id']}"]
            rows.append(
                {
                    "method": method, "budget": c["target"], "limit_ms": limit, "latency_ms": c["latency_ms"],
                    "remeasured_ms": again, "remeasured_over_limit": again / limit, "within_budget": c["within_budget"],
                    "macs": c["macs"], "params": c["params"], "accuracy": c["accuracy"],
                }
            )  # fmt: skip
    return {"settings": {k: str(v) for k, v in vars(args).items()}, "environment": environment(),
            "seed": results["uniform"]["seed"] | {"remeasured_ms": remeasured["seed"]}, "rows": rows}  # fmt: skip


def to_markdown(payload: dict) -> str:
    s, env, seed = payload["settings"], payload["environment"], payload["seed"]
    lines = [
        f"# Latency budgets: {s['model']} (width {s['width']}) on {s['data']}",
        "",
        f"Seed: {seed['macs']:,} MACs, {seed['latency_ms']:.3f} ms (batch 1, torch, {env['device']}, "
        f"{env['cpu_threads']} threads), test accuracy {100 * seed['accuracy']:.2f}%. Every method adapts the same "
        f"seed; uniform and random fine-tune {s['epochs']} epochs, DNA searches {s['dna_search_epochs']} epochs "
        "for all budgets and fine-tunes the rest. `latency` is what the run measured when it judged the budget; "
        f"`again` is the median of {s['rounds']} interleaved re-measurements of every network in one process.",
        "",
        "| budget | limit ms | method | latency ms | again ms | again / limit | within | MACs | test acc % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(payload["rows"], key=lambda r: (-r["limit_ms"], r["method"])):
        lines.append(
            f"| {r['budget']} | {r['limit_ms']:.3f} | {r['method']} | {r['latency_ms']:.3f} | {r['remeasured_ms']:.3f}"
            f" | {r['remeasured_over_limit']:.2f} | {'yes' if r['within_budget'] else 'no'} | {r['macs']:,} | "
            f"{100 * r['accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser, budgets=[50, 25])
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dna-search-epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path("runs/bench/latency"))
    args = parser.parse_args()
    args.root = args.root / f"{args.data}_{args.model}_w{args.width:g}"
    payload = run(args)
    markdown = to_markdown(payload)
    write_results(f"latency_{args.data}_{args.model}", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
