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
import dataclasses
import itertools
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netfit.api import adapt
from netfit.cost import count_cost
from netfit.data import load_data
from netfit.engine import StepContext, TrainConfig, channels_last, channels_last_layout, fixed_batch_ids
from netfit.export import load_model
from netfit.methods.dna import DNA
from netfit.methods.dna_passes import choose_passes
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow

from .common import (
    RESULTS,
    environment,
    epoch_seconds,
    log_events,
    mean_std,
    median_seconds,
    operation_count,
    seed_network,
    write_results,
)

METHODS = ("dna", "uniform", "random")
LEGACY = {"baseline_epochs": None, "dna_option": [], "name": ""}  # settings older result files lack


def _epoch_seconds(run_dir: Path, phase: str) -> float:
    """Median wall seconds of one epoch of ``phase`` from the run log."""
    seconds = epoch_seconds(run_dir, phase)
    return statistics.median(seconds) if seconds else float("nan")


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    data = load_data(args.data)
    budgets = ",".join(f"{b:g}%" for b in args.budgets)
    common = {"seed": seed, "progress": False, "train": {"batch_size": args.batch_size, "lr": args.lr}}
    model = seed_network(args.model, data, args.width, seed)
    adapt(
        model,
        data,
        budgets,
        "dna",
        out=root / f"dna-{seed}",
        epochs=args.epochs,
        seed_epochs=args.seed_epochs,
        train_seed=True,
        method_options={"search_epochs": args.search_epochs, "warmup_epochs": args.warmup, **dict(args.dna_option)},
        **common,
    )
    for method, options in (("uniform", {}), ("random", {"samples": 1})):
        adapt(
            args.model,
            data,
            budgets,
            method,
            out=root / f"{method}-{seed}",
            epochs=baseline_epochs(args),
            seed_weights=root / f"dna-{seed}" / "seed",
            method_options=options,
            **common,
        )
    return summarize(args, seed, root)


def baseline_epochs(args: argparse.Namespace) -> int:
    return args.baseline_epochs if args.baseline_epochs is not None else args.search_epochs + args.epochs


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with a JSON value (true, 0.3, "x"), or a plain string."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def summarize(args: argparse.Namespace, seed: int, root: Path) -> dict:
    """One seed's figures, read back from its run directories (so finished runs can be collected later)."""
    summaries = {m: json.loads((root / f"{m}-{seed}" / "result.json").read_text()) for m in METHODS}
    dna_dir = root / f"dna-{seed}"
    seed_epoch, search_epoch = _epoch_seconds(dna_dir, "seed"), _epoch_seconds(dna_dir, "dna-search")
    return {
        "seed": seed,
        "seed_net": {k: summaries["dna"]["seed"][k] for k in ("macs", "params", "accuracy")},
        "budgets": args.budgets,
        "results": {
            method: [
                {k: c[k] for k in ("id", "macs", "params", "accuracy")} | {"info": _short(c["info"])}
                for c in summary["candidates"]
            ]
            for method, summary in summaries.items()
        },
        "seed_seconds": round(sum(epoch_seconds(dna_dir, "seed")), 1),
        **_run_times(root, seed),
        "seed_epoch_seconds": round(seed_epoch, 2),
        "search_epoch_seconds": round(search_epoch, 2),
        "search_vs_seed_training": round(args.search_epochs * search_epoch / (args.seed_epochs * seed_epoch), 3),
        "step_vs_dense_seed_step": step_ratios(
            load_model(dna_dir / "seed"),
            load_data(args.data),
            args.batch_size,
            seed,
            args.budgets,
            dict(args.dna_option),
        ),
    }


def step_ratios(
    model: torch.nn.Module,
    data,
    batch_size: int,
    seed: int,
    budgets: list[float],
    options: dict | None = None,
    repeats: int = 6,
    device: str = "cpu",
    count_operations: bool = False,
) -> dict:
    """Training-step wall time of the DNA supernet grown from ``model`` relative to ``model``'s own dense step,
    measured side by side here: one pass of the grown supernet (largest, soft), of a sampled sub-net (masked by the
    gates, and sliced as the search runs it on one process), of the smallest (sliced), and the whole search step
    with every searched budget (largest + architecture pass + smallest + samples; averaged over ``arch_every``
    steps; the budgets DNA widens instead, ``DNA.widens``, are not in it). The supernet is grown, and its in-place
    teacher chosen, as a DNA run with these ``options`` and ``budgets`` (percent of the seed's MACs) does; a frozen
    teacher's logits are remembered as in a run where the data has no random augmentation (then the step repeats one
    batch: steady state). On CUDA every pass runs under bf16 autocast, as training does there (``TrainConfig.amp``),
    and the dense seed step's milliseconds are added (``dense_seed_ms``) for throughput. Images are laid out as
    training lays them out (channels_last on CPU, ``engine.channels_last``). ``count_operations`` adds each pass's
    and the search step's aten operations over the dense step's (``operations``; ``common.operation_count``)."""
    model = model.to(device).train()
    shape = data.input_shape
    method = DNA(**((options or {}) | {"warmup_epochs": 0}))
    seed_macs = count_cost(model, shape).macs
    limits = [b / 100 * seed_macs for b in budgets if not method.widens(b / 100 * seed_macs, seed_macs)]  # searched
    width, depth = method.growth(limits, seed_macs)
    grown = grow(model, shape, width, depth, np.random.default_rng(seed)).to(device).train()  # as the search runs
    net = ElasticNet(grown, shape, units=method.units)
    metrics = ["macs"] * len(limits)
    arch = method.init_arch(net, limits, metrics, [len(s) for s in model.stages] if net.depths else None)
    dev = torch.device(device)
    layout = channels_last(TrainConfig(), dev, shape, grown)  # the layout training uses here
    with channels_last_layout(model, layout), channels_last_layout(grown, layout):
        x = data.prepare(data.train.tensors[0][:batch_size], train=True).to(device)
        x = x.contiguous(memory_format=torch.channels_last) if layout else x
        y = data.train.tensors[1][:batch_size].to(device)
        frozen = method._inplace_teacher(model)
        cuda = torch.device(device).type == "cuda"
        auto = [name for name in ("sample_pass", "soft_pass") if getattr(method, name) == "auto"]
        if auto:  # chosen as the search chooses them, on this batch
            net.attach()
            try:
                amp = torch.bfloat16 if cuda else None
                pinned = {name: getattr(method, name) for name in ("sample_pass", "soft_pass") if name not in auto}
                choice, seconds = choose_passes(
                    net,
                    arch,
                    x,
                    method.samples,
                    seed,
                    method.pass_layout(net, limits, metrics),
                    amp,
                    pinned,
                    method.one_level,
                    method.arch_every,
                )
            finally:
                net.detach()
            print(f"auto passes: {choice}: {seconds}", flush=True)
            method = dataclasses.replace(method, **{name: choice[name] for name in auto})
        step, steps_taken = method.step_fn(net, arch, limits, metrics, seed, frozen), itertools.count()
        ids = fixed_batch_ids(data, torch.arange(batch_size))

        def search_steps() -> None:
            """``arch_every`` consecutive steps (one with the architecture pass), each drawing new sub-networks as the
            search does (repeating one step number would draw the same ones and find their sliced copies cached)."""
            for _ in range(method.arch_every):
                grown.zero_grad(set_to_none=True)
                n = next(steps_taken)
                ctx = StepContext(grown, grown, x, y, 0, n, TrainConfig(), dev, ids=ids, channels_last=layout)
                step(ctx)

        sample = net.sample(arch.width[0], arch.depth[0], torch.Generator().manual_seed(seed))

        def pass_of(network: torch.nn.Module, setup=lambda: None, forward=None):
            def run() -> None:
                setup()
                network.zero_grad(set_to_none=True)
                F.cross_entropy((forward or network)(x), y).backward()

            return run

        timings = {"dense_seed": pass_of(model)}
        net.attach()
        try:
            timings |= {
                "supernet_largest": pass_of(grown, net.set_full),
                "supernet_soft": pass_of(grown, lambda: net.set_soft(arch.width[0].detach(), arch.depth[0].detach())),
                "sampled_masked": pass_of(grown, lambda: net.set_hard(sample)),
                "sampled_sliced": pass_of(grown, net.set_full, lambda inputs: net.run_sliced(sample, inputs)),
                "smallest_sliced": pass_of(grown, net.set_full, lambda inputs: net.run_sliced(net.smallest(), inputs)),
                "dna_search_step": search_steps,
            }
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                seconds = {name: median_seconds(fn, repeats, cuda) for name, fn in timings.items()}
                operations = {name: operation_count(fn) for name, fn in timings.items()} if count_operations else {}
            seconds["dna_search_step"] /= method.arch_every
            if operations:
                operations["dna_search_step"] /= method.arch_every
        finally:
            net.detach()
        ratios = {name: round(value / seconds["dense_seed"], 3) for name, value in seconds.items()}
        if operations:
            ratios["operations"] = {name: round(n / operations["dense_seed"], 2) for name, n in operations.items()}
            ratios["operations"]["dense_seed_count"] = operations["dense_seed"]
        return ratios | ({"dense_seed_ms": round(1e3 * seconds["dense_seed"], 3)} if cuda else {})


def _span(events: list[dict], clock: str) -> float:
    """Seconds from a run log's first event to its last: wall (``time``) or the process's CPU (``cpu``)."""
    times = [e[clock] for e in events]
    return max(times) - min(times)


def _run_times(root: Path, seed: int) -> dict:
    """Every method's whole-run wall seconds and, where its log carries CPU time (runs logged since), its CPU
    seconds and the seed's share of DNA's; each log read once."""
    events = {m: log_events(root / f"{m}-{seed}") for m in METHODS}
    times = {"seconds": {m: round(_span(ev, "time"), 1) for m, ev in events.items()}}
    if any("cpu" not in e for ev in events.values() for e in ev):
        return times
    seed_epochs = [e["cpu"] for e in events["dna"] if e.get("event") == "epoch" and e.get("phase") == "seed"]
    seed_cpu = max(seed_epochs) - events["dna"][0]["cpu"] if seed_epochs else 0.0  # start to the seed's last epoch
    return times | {
        "cpu_seconds": {m: round(_span(ev, "cpu"), 1) for m, ev in events.items()},
        "seed_cpu_seconds": round(seed_cpu, 1),
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
        f"per-group widths + depths): {baseline_epochs(args)} fine-tune epochs per budget."
        + (f" DNA options: {dict(args.dna_option)}." if args.dna_option else ""),
        f"Data: {load_data(args.data).source}.",
        "",
        "| budget (of seed MACs) | method | test accuracy (mean ± std) | MACs | params | vs best baseline |",
        "|---|---|---|---|---|---|",
    ]
    for i, budget in enumerate(args.budgets):
        stats = {}
        for method in METHODS:
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
    epoch = mean_std([r["search_epoch_seconds"] / r["seed_epoch_seconds"] for r in runs])
    steps = {
        k: mean_std([r["step_vs_dense_seed_step"][k] for r in runs])[0] for k in runs[0]["step_vs_dense_seed_step"]
    }
    lines += [
        "",
        "Training-step wall time relative to the dense seed's step (batch "
        f"{args.batch_size}, forward + backward, median of 6, measured side by side in one process): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in steps.items() if k != "dense_seed")
        + ". The supernet is grown only when a budget exceeds the seed (as far as the largest budget can use) or "
        "the DNA options say so; one search step = largest (none where the frozen seed is the in-place teacher: "
        "`inplace_teacher`) + the expected networks of all budgets (one soft pass since the condense runs) + "
        "smallest + one sample per budget (sliced, or in one batched pass: `sample_pass`).",
        f"Search epoch / seed epoch (from the run logs): {epoch[0]:.2f}x; DNA search wall time / training the seed "
        f"once: {ratio[0]:.2f}x.",
        "Whole-run wall time (search + every fine-tune, from the run logs, mean of seeds): "
        + ", ".join(f"dna / {m} {_run_ratio(runs, m)}" for m in METHODS[1:])
        + (" (older runs, without the seed's time, left out)." if any("seed_seconds" not in r for r in runs) else ".")
        + " In process CPU time (the same runs; unlike wall time, not inflated by other processes on the machine): "
        + ", ".join(f"dna / {m} {_run_ratio(runs, m, 'cpu_')}" for m in METHODS[1:])
        + ".",
        "MACs of one forward pass at batch 1 (conv/linear); FLOPs = 2 x MACs. Accuracy on the held-out test split.",
        "",
    ]
    return "\n".join(lines)


def _run_ratio(runs: list[dict], method: str, clock: str = "") -> str:
    """DNA's whole-run wall (``clock`` "") or CPU ("cpu_") time over ``method``'s, mean and range over seeds; DNA's
    run also trained the seed once, which is left out."""
    total, seed = f"{clock}seconds", f"seed_{clock}seconds"
    timed = [(r[total]["dna"] - r[seed]) / r[total][method] for r in runs if seed in r]
    if not timed:
        return "n/a"
    spread = f" ({min(timed):.2f}-{max(timed):.2f})" if len(timed) > 1 else ""
    return f"{statistics.fmean(timed):.2f}x{spread}"


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
    parser.add_argument("--baseline-epochs", type=int, default=None, help="default: search + fine-tune epochs")
    parser.add_argument("--dna-option", "-o", type=_option, action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--name", default="", help="suffix of the results file (an ablation)")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the committed JSON")
    parser.add_argument("--collect", action="store_true", help="only collect finished runs under --root")
    args = parser.parse_args()
    name = f"dna_{args.data}_{args.model}" + (f"_{args.name}" if args.name else "")
    if args.rewrite:
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, payload, to_markdown(argparse.Namespace(**(LEGACY | payload["settings"])), payload["runs"]))
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-dna-"))
    runs = [(summarize if args.collect else run_seed)(args, s, root) for s in args.seeds]
    settings = {k: v for k, v in vars(args).items() if k not in ("rewrite", "collect")}
    payload = {"benchmark": "dna", "settings": settings | {"root": str(root)}, "environment": environment()}
    payload["runs"] = runs
    write_results(name, payload, to_markdown(args, runs))
    print(to_markdown(args, runs))


if __name__ == "__main__":
    main()
