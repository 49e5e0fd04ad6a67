"""SpiderNet benchmark: SpiderNet vs random search of the same space (same budget, same total training time) and vs
DNA on the seed; and how well the train-free metrics rank networks of the space (Kendall tau vs trained accuracy).

    python -m benchmarks.spider compare --data mnist1d --model cnn1d --budget 50% --seeds 0 1 2
    python -m benchmarks.spider tau --data mnist1d --networks 20 --epochs 3

``compare``, per seed: train the seed (the budget's reference), run ``spider`` (its last candidate is its result:
the final phase's network, or the last iteration's with ``--final-epochs 0``; every iteration is also on its
front), then random search: networks drawn from the same space
(``space.spider.random_arch``, the same cells, widths and ops), each within the budget and trained from scratch for
SpiderNet's total epochs, until the random search has used SpiderNet's search wall time; the best on validation
is its result. With ``--dna``, DNA adapts the same trained seed to the same budget (search + fine-tune = the same
total epochs). ``tau``: ``--networks`` random networks of the space, their metrics at initialisation on one
minibatch, then trained; Kendall tau of each metric (NTK condition number negated: lower is better), of MACs and
of params with test accuracy. Results: benchmarks/results/spider_<part>_<data>.json/.md.
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

from netfit.api import adapt
from netfit.budget import Budget
from netfit.cost import count_cost, measure, peak_memory
from netfit.data import load_data
from netfit.engine import TrainConfig, evaluate, train
from netfit.export import load_model
from netfit.methods.spider import SpiderNetSearch
from netfit.models.spidernet import SpiderNet, initial_arch
from netfit.space.spider import random_arch
from netfit.trainfree import metric_batch, score

from .common import RESULTS, environment, mean_std, merge_runs, noise_ceiling, noise_ceiling_text, write_results

MAX_NODES = 3  # intermediate nodes per cell of a random network


def spider_options(args: argparse.Namespace) -> dict:
    return {
        "channels": args.channels,
        "reductions": args.reductions,
        "stem_stride": args.stem_stride,
        "iterations": args.iterations,
        "mutation_candidates": args.candidates,
        "lr_scale": args.lr_scale,
        "final_epochs": args.final_epochs,
    }


def _template(shape, num_classes: int, args: argparse.Namespace) -> dict:
    """SpiderNet's starting network for these settings: the space the random networks are drawn from."""
    ndim = len(shape) - 1
    return initial_arch(ndim, shape[0], num_classes, args.channels, args.reductions, stem_stride=args.stem_stride)


def _measure(model: torch.nn.Module, shape) -> dict:
    cost = count_cost(model, shape)
    return {"macs": cost.macs, "params": cost.params, "peak_memory_bytes": peak_memory(model, shape).peak_bytes}


def _train_scratch(arch: dict, data, epochs: int, seed: int, args: argparse.Namespace) -> tuple[SpiderNet, dict]:
    torch.manual_seed(seed)
    model = SpiderNet(arch)
    config = TrainConfig(
        epochs=epochs, seed=seed, batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip
    ).validate()
    model = train(model, data, config, progress=False).model
    return model, {
        "val_acc": evaluate(model, data, "val")["accuracy"],
        "accuracy": evaluate(model, data, "test")["accuracy"],
    }


def _random_within(template: dict, rng: np.random.Generator, limit: float, metric: str, shape) -> dict:
    """A random network of the space that meets the budget (bounded retries)."""
    for _ in range(200):
        arch = random_arch(template, rng, max_nodes=MAX_NODES)
        if measure(SpiderNet(arch), shape, metric) <= limit:
            return arch
    raise RuntimeError(f"no random network of the space met {limit:.0f} {metric} in 200 draws")


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    data = load_data(args.data)
    shape = data.input_shape
    train = {"batch_size": args.batch_size, "lr": args.lr, "grad_clip": args.grad_clip}
    common = {"seed": seed, "progress": False, "train": train}
    out = root / f"spider-{seed}"
    spider = adapt(
        args.model,
        data,
        args.budget,
        "spider",
        out=out,
        epochs=args.epochs,
        seed_epochs=args.seed_epochs,
        method_options=spider_options(args),
        **common,
    )
    summary = spider.summary
    limit, metric = summary["budget"]["limit"], summary["budget"]["metric"]
    final = summary["candidates"][-1]
    spider_seconds = summary["timing"]["search_seconds"]
    spider_row = {
        "accuracy": final["accuracy"],
        "within_budget": final["within_budget"],
        **_measure(load_model(out / final["weights"]), shape),
        "seconds": spider_seconds,
        "epochs": args.epochs,
        "mutations": [c["info"].get("mutations", []) for c in summary["candidates"]],
        "front": [{k: c[k] for k in ("id", "accuracy", "macs", "params")} for c in summary["candidates"]],
    }
    # random search of the same space, the same budget and the same wall time
    template = _template(shape, data.num_classes, args)
    rng = np.random.default_rng([seed, 7])
    tried, used = [], 0.0
    while used < spider_seconds or not tried:
        arch = _random_within(template, rng, limit, metric, shape)
        started = time.perf_counter()
        model, accs = _train_scratch(arch, data, args.epochs, seed, args)
        used += time.perf_counter() - started
        tried.append({**accs, **_measure(model, shape), "arch": arch})
    best = max(tried, key=lambda r: r["val_acc"])
    random_row = {
        **{k: v for k, v in best.items() if k != "arch"},
        "networks": len(tried),
        "seconds": round(used, 1),
        "epochs_each": args.epochs,
    }
    row = {"seed": seed, "seed_net": summary["seed"], "budget": summary["budget"], "spider": spider_row}
    row["random"] = random_row
    if args.dna:
        started = time.perf_counter()
        dna = adapt(
            args.model,
            data,
            args.budget,
            "dna",
            out=root / f"dna-{seed}",
            epochs=args.epochs - args.dna_search_epochs,
            seed_weights=out / "seed",
            method_options={"search_epochs": args.dna_search_epochs},
            **common,
        )
        (drow,) = dna.summary["candidates"]
        row["dna"] = {
            "accuracy": drow["accuracy"],
            "within_budget": drow["within_budget"],
            **_measure(load_model(root / f"dna-{seed}" / drow["weights"]), shape),
            "seconds": round(time.perf_counter() - started, 1),
            "epochs": args.epochs,
        }
    return row


def run_retrain(payload: dict, root: Path) -> None:
    """Adds ``spider_retrained`` to every run: SpiderNet's final architecture trained from scratch exactly as a
    random-search network (same epochs, lr, seed). It separates the architecture SpiderNet found from the
    weight-sharing training it got (extra epochs: not part of the same-time comparison)."""
    args = saved_args(payload["settings"])
    data = load_data(args.data)
    for run in payload["runs"]:
        out = root / f"spider-{run['seed']}"
        final = json.loads((out / "result.json").read_text())["candidates"][-1]
        arch = SpiderNet.describe(load_model(out / final["weights"]))
        started = time.perf_counter()
        model, accs = _train_scratch(arch, data, args.epochs, run["seed"], args)
        seconds = round(time.perf_counter() - started, 1)
        run["spider_retrained"] = {**accs, **_measure(model, data.input_shape), "seconds": seconds}
        print(json.dumps({"seed": run["seed"], **run["spider_retrained"]}), flush=True)


def _where(env: dict | None) -> str:
    device = (env or {}).get("device", "CPU")
    return f"{device}, 1 thread" if device.startswith("CPU") else f"{device} (training under bf16 autocast)"


def compare_markdown(args: argparse.Namespace, runs: list[dict], env: dict | None = None) -> str:
    """The compare table; ``env``: the measuring machine (``environment()``), for where the wall times come from."""
    entries = [e for e in ("spider", "random", "dna", "spider_retrained") if e in runs[0]]

    def ms(entry: str, key: str, pct: bool = False) -> str:
        m, s = mean_std([r[entry][key] for r in runs])
        spread = "" if len(runs) == 1 else (f" ± {100 * s:.2f}" if pct else f" ± {s:,.0f}")
        return f"{100 * m:.2f}{spread}%" if pct else f"{m:,.0f}{spread}"

    budget = runs[0]["budget"]
    per, final = SpiderNetSearch(**spider_options(args)).epoch_split(args.epochs)
    lines = [
        f"# SpiderNet on {args.data}: vs random search of its space{' and vs DNA' if 'dna' in entries else ''} "
        f"(budget {args.budget})",
        "",
        f"Seeds {[r['seed'] for r in runs]} (mean ± std). Budget {budget['spec']} of the {args.model} seed = "
        f"{budget['limit']:,.0f} {budget['metric']}; seed {args.model} trained {args.seed_epochs} epochs, "
        f"test accuracy {100 * mean_std([r['seed_net']['accuracy'] for r in runs])[0]:.2f}%.",
        f"SpiderNet: {args.channels} initial channels, {args.reductions} reduction cells, {_stride(args)}"
        f"{args.iterations} "
        f"iterations x {per} epochs, supernet weights at lr_scale {args.lr_scale} x the run's lr {args.lr}; "
        + (
            f"then its last network trained alone (plain) for {final} epochs at the same lr, which is its result. "
            if final
            else "its result is its last iteration's network. "
        )
        + f"Random search: networks of the same space within "
        f"the budget, each trained {args.epochs} epochs from scratch at lr {args.lr}{_clip(args)}, until it used "
        "SpiderNet's search wall time; best on validation."
        + (
            f" DNA: the trained seed, {args.dna_search_epochs} search + {args.epochs - args.dna_search_epochs} "
            "fine-tune epochs."
            if "dna" in entries
            else ""
        ),
        f"Scale: {load_data(args.data).source}; {_where(env)}, on a machine shared with other jobs (wall times "
        "are comparable within a seed only).",
        "",
        "| entry | test accuracy | MACs | params | peak memory (bytes) | search wall time (s) | networks trained |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        nets = ms("random", "networks") if e == "random" else "1"
        lines.append(
            f"| {e} | {ms(e, 'accuracy', True)} | {ms(e, 'macs')} | {ms(e, 'params')} | "
            f"{ms(e, 'peak_memory_bytes')} | {ms(e, 'seconds')} | {nets} |"
        )
    lines += [
        "",
        "MACs of one forward pass at batch 1 (conv/linear); FLOPs = 2 x MACs. Peak memory: netfit's CPU tensor "
        "tracking at inference, batch 1. Mutations applied per iteration: "
        + "; ".join(f"seed {r['seed']}: {r['spider']['mutations']}" for r in runs),
        "",
        *(
            [
                "spider_retrained: SpiderNet's final architecture trained from scratch like a random-search network "
                f"({args.epochs} epochs; extra training, outside the same-time comparison; its time column is that "
                "training's).",
                "",
            ]
            if "spider_retrained" in entries
            else []
        ),
        "SpiderNet's candidates in order (every iteration's network, then the final phase's; test accuracy @ MACs): "
        + "; ".join(
            f"seed {r['seed']}: "
            + ", ".join(f"{100 * c['accuracy']:.1f}% @ {c['macs']:,.0f}" for c in r["spider"]["front"])
            for r in runs
        ),
        "",
    ]
    return "\n".join(lines)


def run_tau(args: argparse.Namespace) -> dict:
    data = load_data(args.data)
    shape = data.input_shape
    template = _template(shape, data.num_classes, args)
    rng = np.random.default_rng([args.seeds[0], 11])
    x = metric_batch(data, args.metric_samples, seed=args.seeds[0])
    rows, retrains = [], args.retrains
    shard, shards = args.shard
    for k in range(args.networks):
        arch = random_arch(template, rng, max_nodes=MAX_NODES)  # every network drawn, so shards draw the same ones
        if k % shards != shard:
            continue
        torch.manual_seed(k)
        metrics = score(SpiderNet(arch), x)
        trained = [_train_scratch(arch, data, args.epochs, args.seeds[0] + 1000 * r, args) for r in range(retrains)]
        cost = count_cost(trained[0][0], shape)
        accs = trained[0][1]  # retrained (--retrains): the mean of the trainings' test accuracies, each kept
        if retrains > 1:
            accuracies = [a["accuracy"] for _, a in trained]
            accs = accs | {"accuracy": float(np.mean(accuracies)), "accuracies": accuracies}
        rows.append({"network": k, **metrics, "macs": cost.macs, "params": cost.params, **accs})
        print(json.dumps(rows[-1]), flush=True)
    return tau_summary(rows)


def tau_summary(rows: list[dict]) -> dict:
    """The networks' rows with each ranking's Kendall tau against test accuracy (and, where every network was
    trained several times, the noise ceiling)."""
    acc = [r["accuracy"] for r in rows]
    taus = {}
    for name, values in {
        "ntk_cond (negated)": [-r["ntk_cond"] for r in rows],
        "linear_regions": [r["linear_regions"] for r in rows],
        "macs": [r["macs"] for r in rows],
        "params": [r["params"] for r in rows],
    }.items():
        result = kendalltau(values, acc)
        taus[name] = {"tau": float(result.statistic), "p_value": float(result.pvalue)}
    retrained = all("accuracies" in r for r in rows)
    ceiling = {"noise_ceiling": noise_ceiling([r["accuracies"] for r in rows])} if retrained else {}
    return {"rows": rows, "kendall_tau": taus, **ceiling}


def tau_markdown(args: argparse.Namespace, result: dict) -> str:
    lines = [
        f"# Train-free metrics vs trained accuracy on {args.data}: Kendall tau over {len(result['rows'])} random "
        "networks",
        "",
        f"Random networks of SpiderNet's space ({args.channels} initial channels, {args.reductions} reduction cells, "
        f"{_stride(args)}"
        f"up to {MAX_NODES} intermediate nodes per cell, each op kept with p = 0.5); metrics at initialisation on "
        f"{args.metric_samples} training samples; each network then trained {args.epochs} epochs from scratch "
        f"(seed {args.seeds[0]}, SGD lr {args.lr}{_clip(args)}), test accuracy. Scale: {load_data(args.data).source}; "
        "CPU.",
        "",
        "| ranking by | Kendall tau with test accuracy | p-value |",
        "|---|---|---|",
    ]
    for name, t in result["kendall_tau"].items():
        lines.append(f"| {name} | {t['tau']:.3f} | {t['p_value']:.3g} |")
    accs = [r["accuracy"] for r in result["rows"]]
    lines += [
        "",
        f"Test accuracy of the networks: {100 * min(accs):.1f}% .. {100 * max(accs):.1f}%. The literature reference "
        "(NAS-Bench-201, CIFAR-100): MACs 0.567, jacob_cov 0.561, synflow 0.548.",
        "",
    ]
    if "noise_ceiling" in result:  # --retrains: each accuracy above is the mean of that many trainings
        retrains = len(result["rows"][0]["accuracies"])
        lines += [
            f"Each network trained {retrains} times (seeds s, s + 1000, ...); accuracy is the mean. "
            + noise_ceiling_text([result["noise_ceiling"]]),
            "",
        ]
    return "\n".join(lines)


def _shard(text: str) -> tuple[int, int]:
    try:
        shard, shards = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (two integers), got {text!r}") from None
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"shard {shard} of {shards}: needs 0 <= I < N")
    return shard, shards


def _stride(args: argparse.Namespace) -> str:
    return f"stem stride {args.stem_stride} (cells on 1/{args.stem_stride} size maps), " if args.stem_stride > 1 else ""


def _clip(args: argparse.Namespace) -> str:
    return f", gradient norm clipped at {args.grad_clip:g}" if args.grad_clip else ""


# what runs saved before an option existed ran with (lr_scale: the supernet trained at the run's lr)
BEFORE_OPTIONS = {"lr_scale": 1.0, "grad_clip": None, "final_epochs": 0, "stem_stride": 1}


def saved_args(settings: dict, fallback: dict | None = None) -> argparse.Namespace:
    """A results JSON's settings as arguments; options it lacks from ``BEFORE_OPTIONS``, then ``fallback``."""
    return argparse.Namespace(**((fallback or {}) | BEFORE_OPTIONS | settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["compare", "tau", "retrain"], help="retrain: adds to the compare results")
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="cnn1d")
    parser.add_argument("--budget", default="50%")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6, help="SpiderNet's total epochs = each random network's")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--reductions", type=int, default=2)
    parser.add_argument("--stem-stride", type=int, default=1, help="2: the cells run on half-size maps")
    parser.add_argument("--candidates", type=int, default=3, help="edge splits scored per iteration")
    parser.add_argument("--lr-scale", type=float, default=0.2, help="spider's lr_scale (supernet lr / run lr)")
    parser.add_argument("--final-epochs", type=int, default=None, help="spider's final_epochs (default: its own)")
    parser.add_argument("--tag", default="", help="suffix of the result files (an ablation next to the main run)")
    parser.add_argument("--dna", action="store_true", help="also run DNA on the same seed and budget")
    parser.add_argument("--dna-search-epochs", type=int, default=3)
    parser.add_argument("--networks", type=int, default=20)
    parser.add_argument("--metric-samples", type=int, default=16)
    parser.add_argument("--retrains", type=int, default=1, help="tau: trainings per network (noise ceiling)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="tau: I/N trains networks k with k %% N == I")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--grad-clip", type=float, default=None, help="networks trained from scratch: clip the norm")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the committed JSON")
    parser.add_argument("--merge", type=Path, nargs="+", help="only combine these result JSONs' seeds (shards)")
    args = parser.parse_args()
    if args.retrains < 1:
        parser.error("--retrains must be at least 1")
    if args.shard[0] >= args.networks:
        parser.error(f"--shard {args.shard[0]}/{args.shard[1]} has none of the {args.networks} networks to train")
    Budget.parse(args.budget)  # fail early on a malformed budget
    if args.merge and args.part == "tau":  # shards measured by separate processes (--shard I/N --tag _pI)
        payloads = [json.loads(path.read_text()) for path in args.merge]
        rows = sorted((r for p in payloads for r in p["rows"]), key=lambda r: r["network"])
        settings = payloads[0]["settings"] | {"shard": [0, 1], "tag": args.tag}
        result = tau_summary(rows)
        payload = payloads[0] | {"settings": settings, **result}
        write_results(f"spider_tau_{settings['data']}{args.tag}", payload, tau_markdown(saved_args(settings), result))
        return
    if args.merge:  # seeds measured by separate processes (--tag _pS), one table
        first, runs = merge_runs(args.merge)
        settings = first["settings"] | {"seeds": [r["seed"] for r in runs], "tag": args.tag}
        name = f"spider_compare_{settings['data']}{args.tag}"
        render = compare_markdown(saved_args(settings), runs, first.get("environment"))
        write_results(name, first | {"settings": settings, "runs": runs}, render)
        return
    if args.part == "retrain":  # SpiderNet's final architectures of a compare run (its --root) from scratch
        torch.set_num_threads(1)
        name = f"spider_compare_{args.data}{args.tag}"
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        run_retrain(payload, args.root or Path(payload["settings"]["root"]))
        render = compare_markdown(saved_args(payload["settings"]), payload["runs"], payload.get("environment"))
        write_results(name, payload, render)
        return
    if args.rewrite:
        name = f"spider_{args.part}_{args.data}{args.tag}"
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        saved = saved_args(payload["settings"], fallback=vars(args))
        env = payload.get("environment")
        render = tau_markdown(saved, payload) if args.part == "tau" else compare_markdown(saved, payload["runs"], env)
        write_results(name, payload, render)
        return
    torch.set_num_threads(1)  # the tables say 1 thread; seeds run side by side as processes
    settings = vars(args) | {"root": str(args.root)}
    if args.part == "tau":
        result = run_tau(args)
        payload = {"benchmark": "spider-tau", "settings": settings, "environment": environment(), **result}
        markdown = tau_markdown(args, result)
    else:
        root = args.root or Path(tempfile.mkdtemp(prefix="netfit-spider-"))
        runs = []
        for s in args.seeds:  # written after every seed: an interrupted benchmark keeps what it measured
            runs.append(run_seed(args, s, root))
            payload = {"benchmark": "spider-compare", "settings": settings, "environment": environment(), "runs": runs}
            markdown = compare_markdown(args, runs, payload["environment"])
            write_results(f"spider_{args.part}_{args.data}{args.tag}", payload, markdown)
    write_results(f"spider_{args.part}_{args.data}{args.tag}", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
