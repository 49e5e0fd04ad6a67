"""Two DNAD benchmark variants side by side at the smallest budget, on the means of repeated trainings.

    python -m benchmarks.dnad_variants benchmarks/results/dnad_mnist1d_hard_noise.json \
        benchmarks/results/dnad_mnist1d_hard_macs_noise.json --names pairs macs --out dnad_mnist1d_hard_sparsity_cost

Reads two ``benchmarks.dnad_noise`` results of the same seeds and setting that differ in one method option (here
``sparsity_cost``), and compares per seed each set's budget member (its last, smallest member) with the random
cells of both files at most ``--window`` times the smaller budget member's MACs; each architecture counts with the
mean of its trainings. Results: benchmarks/results/<out>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import environment, mean_std, write_results
from .dnad_noise import mean_run

SETS = ("snps", "dnad")


def budget_rows(files: list[dict], names: list[str], window: float) -> list[dict]:
    """Per seed: each variant's budget members (MACs, mean accuracy in %) and the random cells near them."""
    by_seed: dict[int, dict] = {}
    for name, payload in zip(names, files):
        for run in map(mean_run, payload["runs"]):
            row = by_seed.setdefault(run["seed"], {"seed": run["seed"], "_random": []})
            for s in SETS:
                member = run[s][-1]
                row[f"{s}-{name}"] = {"macs": member["macs"], "accuracy": 100 * member["accuracy"]}
            row["_random"].extend(
                {"macs": r["macs"], "accuracy": 100 * r["accuracy"], "variant": name} for r in run["random"]
            )
    rows = []
    for row in sorted(by_seed.values(), key=lambda r: r["seed"]):
        smallest = min(row[f"{s}-{n}"]["macs"] for s in SETS for n in names)
        row["random"] = [r for r in row.pop("_random") if r["macs"] <= window * smallest]
        rows.append(row)
    return rows


def summarise(rows: list[dict], names: list[str]) -> dict:
    columns = [f"{s}-{n}" for n in names for s in SETS]
    summary = {c: mean_std([r[c]["accuracy"] for r in rows]) for c in columns}
    summary["random"] = mean_std([_mean_of(r["random"]) for r in rows if r["random"]])
    return summary


def _mean_of(cells: list[dict]) -> float:
    return sum(c["accuracy"] for c in cells) / len(cells)


def to_markdown(args: argparse.Namespace, rows: list[dict], summary: dict) -> str:
    columns = [f"{s}-{n}" for n in args.names for s in SETS]
    lines = [
        f"# DNAD variants at the smallest budget: {' vs '.join(args.names)}",
        "",
        f"From {args.results[0].name} and {args.results[1].name} (`benchmarks.dnad_noise`; each architecture counts "
        f"with the mean of its trainings). Per seed, each set's budget member (its smallest) and the random cells "
        f"of both files at most {args.window}x the smallest budget member's MACs (same space, same epochs).",
        "",
        "| seed | " + " | ".join(columns) + " | random cells (count) |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for r in rows:
        cells = [f"{r[c]['accuracy']:.2f}% ({r[c]['macs'] / 1e3:.0f}K)" for c in columns]
        random = f"{_mean_of(r['random']):.2f}% ({len(r['random'])})" if r["random"] else "-"
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {random} |")
    means = [f"{m:.2f} ± {s:.2f}" for m, s in (summary[c] for c in [*columns, "random"])]
    lines.append("| mean ± std | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs=2, type=Path, help="two benchmarks.dnad_noise result JSONs")
    parser.add_argument("--names", nargs=2, required=True, help="a name for each file's variant")
    parser.add_argument("--window", type=float, default=1.05, help="random cells up to this x the budget MACs")
    parser.add_argument("--out", required=True, help="name of the result files")
    args = parser.parse_args()
    files = [json.loads(p.read_text()) for p in args.results]
    rows = budget_rows(files, args.names, args.window)
    summary = summarise(rows, args.names)
    payload = {
        "benchmark": "dnad_variants",
        "settings": {"results": [str(p) for p in args.results], "names": args.names, "window": args.window},
        "environment": environment(),
        "summary": summary,
        "rows": rows,
    }
    markdown = to_markdown(args, rows, summary)
    write_results(args.out, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
