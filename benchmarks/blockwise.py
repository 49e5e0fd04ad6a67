"""Block-wise NAS benchmark: does the summed block rating rank retrained networks, does the search beat random
architectures at the same MACs, and how fast is the exact search on a >= 10^9 space?

    python -m benchmarks.blockwise --data mnist1d --model resnet18_1d --width 0.25 --seeds 0 1 2

Per seed: train the seed network (the teacher), run ``blockwise`` once for all ``--budgets`` (top-1 per budget,
trained ``--epochs``), then from its per-block tables
* ``--archs`` random architectures of the space spread over the cost range (one per MACs quantile of a random
  sample) are trained from scratch with the same epochs: Kendall tau of (- summed rating) vs test accuracy;
* per budget, ``--randoms`` random architectures within 3% of the chosen one's MACs, same epochs: chosen vs
  random;
* ``uniform`` (width, from the same seed) at the same budgets with the post-seed epochs blockwise spent
  (``--block-epochs`` + ``--epochs``), and ``dna`` from the same seed: one ``--block-epochs`` search for all
  budgets, then ``--epochs`` fine-tune per budget;
* the exact search is timed on the tables (one core) for several budgets and k.
Results: benchmarks/results/blockwise_<data>.json/.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from netfit.api import adapt, train_model
from netfit.cost import count_cost
from netfit.data import load_data
from netfit.export import load_model
from netfit.methods.blockwise import _assemble, _template
from netfit.models import build_model
from netfit.space.block_search import SearchStats, space_size, top_k
from netfit.space.blockwise import TeacherBlocks

from .common import environment, mean_std, merge_runs, noise_ceiling, noise_ceiling_text, seed_network, write_results

MATCH = 0.03  # random architectures "at matched MACs": within 3% of the chosen network's MACs


def _tables(run_dir: Path) -> list[dict]:
    files = sorted((run_dir / "blockwise").glob("block*.json"), key=lambda p: int(p.stem[5:]))
    return [json.loads(f.read_text()) for f in files]


def _arch(template: dict, cut: TeacherBlocks, tables: list[dict], choices) -> dict:
    paths = [tuple(tuple(op) for op in t["candidates"][c]["layers"]) for t, c in zip(tables, choices)]
    return _assemble(template, cut, paths)


def _train(arch: dict, data, out: Path, args, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(arch)
    train = {"batch_size": args.batch_size, "lr": args.lr}
    row = train_model(
        model, data, out=out, epochs=args.epochs, seed=seed, train=train, resume=args.resume, progress=False
    )
    return {"accuracy": row["accuracy"], "macs": row["macs"], "params": row["params"]}


def run_seed(args: argparse.Namespace, seed: int, root: Path, save=lambda partial: None) -> dict:
    """One seed's measurements; ``save`` gets them once the ranking is measured (no budgets yet), so that an
    interrupted seed keeps its ranking and block times."""
    data = load_data(args.data)
    model = seed_network(args.model, data, args.width, seed)
    common = {"seed": seed, "progress": False, "train": {"batch_size": args.batch_size, "lr": args.lr}}
    common["resume"] = args.resume  # finished runs in --root are read back, not trained again
    options = {"block_epochs": args.block_epochs, "top_k": 1, "block_lr": args.block_lr}
    options |= {"expansions": args.expansions, "kernels": args.kernels}
    budgets = ",".join(args.budgets)  # one run of each method serves every budget
    started = time.perf_counter()
    bw = adapt(
        model,
        data,
        budgets,
        "blockwise",
        out=root / f"bw-{seed}",
        epochs=args.epochs,
        seed_epochs=args.seed_epochs,
        train_seed=True,
        method_options=options,
        **common,
    )
    bw_seconds = time.perf_counter() - started
    tables = _tables(root / f"bw-{seed}")
    teacher = load_model(root / f"bw-{seed}" / "seed")
    cut = TeacherBlocks(teacher, data.input_shape)
    template = _template(cut, teacher, data.num_classes, True)
    losses = [[r["loss"] for r in t["candidates"]] for t in tables]
    macs = [[r["macs"] for r in t["candidates"]] for t in tables]
    rng = np.random.default_rng(seed)
    by_depth = [_by_depth(t) for t in tables]
    pool = {_sample(by_depth, rng) for _ in range(4000)}
    pool = sorted(pool, key=lambda ch: sum(m[c] for m, c in zip(macs, ch)))

    def train_choices(ch, name: str, retrains: int = 1) -> dict:
        """Train the architecture ``retrains`` times (training seeds seed, seed + 1000, ...; the first run keeps
        the name and seed it always had); its accuracy is the mean, each run's is kept."""
        arch = _arch(template, cut, tables, ch)
        names = [name] + [f"{name}-r{r}" for r in range(1, retrains)]
        rows = [_train(arch, data, root / n, args, seed + 1000 * r) for r, n in enumerate(names)]
        accuracies = [row["accuracy"] for row in rows]
        repeated = {"accuracy": float(np.mean(accuracies)), "accuracies": accuracies} if retrains > 1 else {}
        return {"choices": list(ch), "rating": sum(ls[c] for ls, c in zip(losses, ch)), **rows[0], **repeated}

    spread = [pool[int(q * (len(pool) - 1))] for q in np.linspace(0, 1, args.archs)]
    ranked = [train_choices(ch, f"rank-{seed}-{i}", args.retrains) for i, ch in enumerate(spread)]
    ranking = _ranking(ranked) if len(ranked) > 1 else None  # --archs 0: not measured in this run
    measured = {
        "seed": seed,
        "teacher": {k: bw.summary["seed"][k] for k in ("macs", "params", "accuracy")},
        "budgets": [],
        "blockwise_seconds": round(bw_seconds, 1),
        "blocks": [
            {"train_seconds": t["train_seconds"], "rate_seconds": t["rate_seconds"], "candidates": len(t["candidates"])}
            for t in tables
        ],
        "ranking": ranking,
        "search": _time_search(losses, macs, args.k),
    }
    save(measured)
    if args.ranking_only:
        return measured
    fixed = _stem_head_macs(template, cut, tables, pool[0], data.input_shape)
    uni = adapt(
        args.model,
        data,
        budgets,
        "uniform",
        out=root / f"uniform-{seed}",
        epochs=args.epochs + args.block_epochs,
        seed_weights=root / f"bw-{seed}" / "seed",
        **common,
    )
    dna = adapt(  # one search as long as one block's supernet, then the chosen one's epochs: same total as uniform
        args.model,
        data,
        budgets,
        "dna",
        out=root / f"dna-{seed}",
        epochs=args.epochs,
        seed_weights=root / f"bw-{seed}" / "seed",
        method_options={"search_epochs": args.block_epochs},
        **common,
    )
    per_budget = []
    for b, budget in enumerate(args.budgets):
        (chosen,) = _of_budget(bw.summary, budget)
        target = chosen["macs"]
        near = [ch for ch in pool if abs(fixed + sum(m[c] for m, c in zip(macs, ch)) - target) <= MATCH * target]
        if len(near) < args.randoms:  # near the space's cheap end the pool has few: draw more, for this budget only
            near += _draw_near(by_depth, macs, fixed, target, args.randoms - len(near), [seed, b])
        picks = near[:: max(1, len(near) // args.randoms)][: args.randoms]
        (urow,) = _of_budget(uni.summary, budget)
        (drow,) = _of_budget(dna.summary, budget)
        per_budget.append(
            {
                "budget": budget,
                "chosen": {k: chosen[k] for k in ("macs", "params", "accuracy")} | {"blocks": chosen["info"]["blocks"]},
                "random_same_macs": [train_choices(ch, f"random-{seed}-{b}-{i}") for i, ch in enumerate(picks)],
                "uniform": {k: urow[k] for k in ("macs", "params", "accuracy")},
                "dna": {k: drow[k] for k in ("macs", "params", "accuracy")},
            }
        )
    return measured | {"budgets": per_budget}


def _ranking(ranked: list[dict]) -> dict:
    """Kendall tau of the rating (and of MACs, the free proxy to beat) with retrained accuracy; where every
    architecture was retrained several times, also the noise ceiling of that accuracy (``noise_ceiling``)."""
    accuracy = [r["accuracy"] for r in ranked]
    tau = kendalltau([-r["rating"] for r in ranked], accuracy)
    ranking = {
        "tau": float(tau.statistic),
        "p": float(tau.pvalue),
        "tau_macs": float(kendalltau([r["macs"] for r in ranked], accuracy).statistic),
        "archs": ranked,
    }
    return ranking | (noise_ceiling([r["accuracies"] for r in ranked]) if "accuracies" in ranked[0] else {})


def _draw_near(by_depth, macs, fixed: float, target: float, n: int, rng_seed: list[int]) -> list[tuple[int, ...]]:
    """Up to ``n`` architectures drawn as ``_sample`` does whose MACs (blocks + ``fixed``) are within MATCH of
    ``target`` (vectorised: near the cheap end of the space only a few in 10^4 draws qualify)."""
    rng, found, draws = np.random.default_rng(rng_seed), [], 100_000
    for _ in range(20):  # 2 million draws at most
        choices = []
        for depths in by_depth:  # per block a depth uniformly, then one of its candidates uniformly
            sizes = np.array([len(group) for group in depths])
            depth = rng.integers(len(depths), size=draws)
            within = (rng.random(draws) * sizes[depth]).astype(int)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            choices.append(np.concatenate(depths)[starts[depth] + within])
        total = sum(np.asarray(m)[c] for m, c in zip(macs, choices))
        for k in np.flatnonzero(np.abs(fixed + total - target) <= MATCH * target):
            found.append(tuple(int(c[k]) for c in choices))
        found = list(dict.fromkeys(found))
        if len(found) >= n:
            break
    return found[:n]


def _of_budget(summary: dict, budget: str) -> list[dict]:
    return [c for c in summary["candidates"] if c["target"] == budget]


def _budget_rows(run: dict, settings_budget: str | None) -> list[dict]:
    """A run's per-budget results; runs measured before --budgets existed hold one budget at the top level."""
    if "budgets" in run:
        return run["budgets"]
    keys = ("chosen", "random_same_macs", "uniform", "dna")
    return [{"budget": settings_budget} | {k: run[k] for k in keys if k in run}]


def _by_depth(table: dict) -> list[list[int]]:
    """A block's candidate indices grouped by layer count."""
    depths: dict[int, list[int]] = {}
    for i, row in enumerate(table["candidates"]):
        depths.setdefault(len(row["layers"]), []).append(i)
    return [depths[d] for d in sorted(depths)]


def _sample(by_depth: list[list[int]], rng: np.random.Generator) -> tuple[int, ...]:
    """One architecture as the supernets sampled them: per block a depth uniformly, then one of its candidates.
    (Uniform over candidate indices would be 216 of 258 three-layer ones: the pool would miss the cheap end.)"""
    groups = [depths[int(rng.integers(len(depths)))] for depths in by_depth]
    return tuple(group[int(rng.integers(len(group)))] for group in groups)


def _stem_head_macs(template: dict, cut: TeacherBlocks, tables: list[dict], choices, shape) -> float:
    """What the block tables leave out (stem and head): one assembled network's MACs minus its blocks'."""
    blocks = sum(t["candidates"][c]["macs"] for t, c in zip(tables, choices))
    return count_cost(build_model(_arch(template, cut, tables, choices)), shape).macs - blocks


def _time_search(losses, macs, ks: list[int]) -> list[dict]:
    """Exact top-k on the real tables at 20..90% of the blocks' largest summed MACs (median of 5 runs)."""
    largest = sum(max(m) for m in macs)
    rows = []
    for frac in (0.2, 0.35, 0.5, 0.7, 0.9):
        for k in ks:
            times, stats = [], SearchStats()
            for _ in range(5):
                stats = SearchStats()
                t0 = time.perf_counter()
                top_k(losses, macs, frac * largest, k, stats=stats)
                times.append(time.perf_counter() - t0)
            rows.append({"fraction": frac, "k": k, "seconds": float(np.median(times)), "nodes": stats.nodes})
    return [{"space_size": space_size(losses), **r} for r in rows]


def to_markdown(args: argparse.Namespace, runs: list[dict]) -> str:
    def pct(values: list[float]) -> str:
        m, s = mean_std(values)
        return f"{100 * m:.2f} ± {100 * s:.2f}%" if len(values) > 1 else f"{100 * m:.2f}%"

    budgets = getattr(args, "budgets", None) or [args.budget]
    rows = [_budget_rows(r, budgets[0]) for r in runs]  # rows[seed][budget]
    search = [row for r in runs for row in r["search"]]
    baselines = (
        "ranking only (no budget comparisons). "
        if getattr(args, "ranking_only", False)
        else f"uniform {args.epochs + args.block_epochs} epochs from the teacher; dna one {args.block_epochs}-epoch "
        f"search from the teacher (all budgets), then {args.epochs} fine-tune epochs per budget. Budgets "
        f"{', '.join(budgets)} of the teacher's MACs. "
    )
    lines = [
        f"# blockwise on {args.data} with {args.model} (width x{args.width})",
        "",
        f"Seeds {[r['seed'] for r in runs]}; teacher (seed network) trained {args.seed_epochs} epochs; block supernets "
        f"{args.block_epochs} epochs each (AdamW lr {args.block_lr}); every retrained network {args.epochs} epochs "
        f"from scratch; {baselines}Space: MBConv expansions {getattr(args, 'expansions', [3, 6])} x kernels "
        f"{getattr(args, 'kernels', [3, 5, 7])}, 1-3 layers per block.",
        f"Data: {load_data(args.data).source}.",
        "",
        "| budget | network | test accuracy | MACs | params |",
        "|---|---|---|---|---|",
        f"| - | teacher (seed) | {pct([r['teacher']['accuracy'] for r in runs])} | {runs[0]['teacher']['macs']:,} | "
        f"{runs[0]['teacher']['params']:,} |",
    ]
    for b, budget in enumerate(budgets):
        at = [seed_rows[b] for seed_rows in rows if b < len(seed_rows)]  # an interrupted seed has no budget rows
        if not at:
            continue
        rand = [float(np.mean([x["accuracy"] for x in r["random_same_macs"]])) for r in at if r["random_same_macs"]]
        lines += [
            f"| {budget} | blockwise, chosen (top-1) | {pct([r['chosen']['accuracy'] for r in at])} | "
            f"{_join(at, 'chosen', 'macs')} | {_join(at, 'chosen', 'params')} |",
            f"| {budget} | random architectures of the space, MACs within {MATCH:.0%} (mean of {args.randoms}) | "
            f"{pct(rand) if rand else 'none found'} | | |",
            f"| {budget} | uniform width | {pct([r['uniform']['accuracy'] for r in at])} | "
            f"{_join(at, 'uniform', 'macs')} | {_join(at, 'uniform', 'params')} |",
            *(  # runs measured before dna was a baseline lack it
                [
                    f"| {budget} | dna on the teacher | {pct([r['dna']['accuracy'] for r in at])} | "
                    f"{_join(at, 'dna', 'macs')} | {_join(at, 'dna', 'params')} |"
                ]
                if all("dna" in r for r in at)
                else []
            ),
        ]
    ranked = [r for r in runs if r["ranking"]]
    taus = ", ".join(f"{r['ranking']['tau']:.3f}" for r in ranked)
    retrains = getattr(args, "retrains", 1)
    ranking = (
        f"**Ranking.** Kendall tau of (- summed block rating) vs test accuracy"
        f"{f' (mean of {retrains} trainings each)' if retrains > 1 else ''} over {args.archs} random architectures "
        f"spread over the cost range: {taus} (per seed; target "
        f">= 0.6); of MACs alone, the free proxy: {', '.join(_tau_macs(r) for r in ranked)}."
        + (" " + noise_ceiling_text([r["ranking"] for r in ranked]) if retrains > 1 else "")
        if ranked
        else "**Ranking.** Not measured in this run (`--archs 0`); ranking runs: docs/methods/blockwise.md."
    )
    lines += [
        "",
        ranking,
        "",
        "**Time per block** (train, rate every candidate; seconds): "
        + "; ".join(
            f"seed {r['seed']}: " + ", ".join(f"{b['train_seconds']:.0f}+{b['rate_seconds']:.0f}" for b in r["blocks"])
            for r in runs
        ),
        "",
        f"**Exact search** on the real tables ({search[0]['space_size']:.2e} combinations), one CPU core: median "
        f"{np.median([x['seconds'] for x in search]) * 1e3:.1f} ms, "
        f"worst {max(x['seconds'] for x in search) * 1e3:.1f} ms over budgets 20-90% of the largest and k in "
        f"{args.k} (target < 1 s).",
        "",
        "MACs of one forward pass at batch 1 (conv/linear); FLOPs = 2 x MACs.",
        "",
    ]
    return "\n".join(lines)


def _tau_macs(run: dict) -> str:
    tau = run["ranking"].get("tau_macs")  # absent from runs measured before it was recorded
    return "n/a" if tau is None else f"{tau:.3f}"


def _join(runs: list[dict], entry: str, key: str) -> str:
    return ", ".join(f"{r[entry][key]:,}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="resnet18_1d")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--budgets", nargs="+", default=["50%"], help="each as netfit reads it, e.g. 50%%")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-epochs", type=int, default=15)
    parser.add_argument("--block-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--block-lr", type=float, default=0.03)
    parser.add_argument("--expansions", type=int, nargs="+", default=[3, 6], help="MBConv expansions of the space")
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7], help="MBConv kernel sizes of the space")
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--retrains", type=int, default=1, help="trainings per ranked architecture (noise ceiling)")
    parser.add_argument("--ranking-only", action="store_true", help="stop each seed after the ranking")
    parser.add_argument("--randoms", type=int, default=3)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="continue (or read back) the runs in --root")
    parser.add_argument("--tag", default="", help="suffix of the results name (seeds run as separate processes)")
    parser.add_argument("--merge", type=Path, nargs="+", help="only combine the runs of these result JSONs")
    args = parser.parse_args()
    if args.retrains < 1:
        parser.error("--retrains must be at least 1")
    if args.merge:  # seeds measured by separate processes, one table
        first, runs = merge_runs(args.merge)
        merged = {"seeds": [r["seed"] for r in runs], "merged_from": [str(p) for p in args.merge]}
        settings = {"block_lr": args.block_lr} | first["settings"] | merged  # runs before --block-lr existed
        saved = argparse.Namespace(**settings)
        write_results(
            f"blockwise_{args.data}{args.tag}", first | {"settings": settings, "runs": runs}, to_markdown(saved, runs)
        )
        return
    torch.set_num_threads(1)
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-blockwise-"))
    runs: list[dict] = []
    payload = {"benchmark": "blockwise", "settings": vars(args) | {"root": str(root)}, "environment": environment()}

    def write(measured: list[dict]) -> None:
        write_results(f"blockwise_{args.data}{args.tag}", payload | {"runs": measured}, to_markdown(args, measured))

    for s in args.seeds:  # written after every seed and every ranking: an interrupted benchmark keeps what it measured
        runs.append(run_seed(args, s, root, lambda partial: write([*runs, partial])))
        write(runs)
    print(to_markdown(args, runs))


if __name__ == "__main__":
    main()
