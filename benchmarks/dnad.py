"""DNAD/SNPS benchmark: the Pareto sets of one SNPS and one DNAD run, random cells at matched MACs, step times.

    python -m benchmarks.dnad --data mnist1d --model resnet18_1d --width 0.25 --seeds 0 1 2

Per seed: train the seed network (inside the SNPS run), run SNPS and DNAD (teacher: that trained seed) on the same
split with the same space, controller, search epochs and member epochs; train one random genotype of the same
space at each DNAD member's MACs for the same epochs (from-scratch networks: ``--seed-epochs`` + ``--epochs``);
optionally `uniform` and `dna` on the seed at the run's budgets (`--peers`). Step times: each member's supernet
step time measured during the search (callback window) and re-measured afterwards on the supernet rebuilt at that
member's structure (median of a few steps, one batch).
``--rerun-peers RESULT.json`` measures a committed result's peers again (after a change to `dna` or `uniform`),
its sets left as they are, and rewrites that result.
Results go to benchmarks/results/dnad_<data>.json/.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netfit import __version__
from netfit.api import adapt, train_model
from netfit.cli import option_value
from netfit.cost import count_cost
from netfit.data import load_data
from netfit.export import load_model
from netfit.methods.dnad import DEFAULT_OPS, SNAPSHOT_FILE
from netfit.models import build_model
from netfit.space.darts import CellSupernet, build_supernet, random_genotype

from .common import (
    dna_finetune_epochs,
    environment,
    median_seconds,
    merge_runs,
    seed_network,
    trained_seed,
    write_results,
)
from .dnad_report import scratch_epochs, stem_stride, summarise, to_markdown


def _options(args: argparse.Namespace) -> dict:
    extra = {k: option_value(v) for k, v in args.x}
    return {
        "ops": args.ops,
        "cells": args.cells,
        "channels": args.channels,
        "stem_stride": stem_stride(args),
        "search_epochs": args.search_epochs,
        **extra,
    }


def _members(summary: dict, out: Path) -> list[dict]:
    """A set's members from result.json, with the in-run step times of the run's snapshot file and the budgets
    each was selected for."""
    snapshots = json.loads((out / SNAPSHOT_FILE).read_text())["snapshots"]
    return [
        {
            "id": r["id"],
            "accuracy": r["accuracy"],
            "macs": r["macs"],
            "params": r["params"],
            "genotype": r["arch"]["genotype"],
            "step_seconds": snap["step_seconds"],
            **{k: r["info"].get(k) for k in ("reason", "step", "pairs")},
            "val_acc": r["val_accuracy"],
            "selected_for": [b["spec"] for b in summary["budgets"] if b["selected"] == r["id"]] or None,
        }
        for r, snap in zip(summary["candidates"], snapshots)
    ]


def supernet_step_seconds(
    genotype: list | None, args: argparse.Namespace, shape: tuple[int, ...], repeats: int = 5
) -> float:
    """Median seconds of one training step (forward, sparsity, backward, AdamW) of the supernet cut to ``genotype``;
    on the GPU when there is one (bf16 autocast, as training there; the queued kernels waited for)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_supernet(shape, 10, args.ops.split(","), args.cells, args.channels, stem_stride=stem_stride(args))
    for cell, nodes in zip(net.cells, genotype or []):  # None: the dense supernet the search starts from
        for node, pairs in zip(cell.nodes, nodes):
            for i, pair in enumerate(node.all_pairs):
                if list(pair) not in pairs:
                    node.delete(i)
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4)
    x = torch.randn(args.batch_size, *shape, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            s = net.sparsity()
            loss = F.cross_entropy(net(x), y) * (1 + 0.01 * s) + 0.001 * s
        loss.backward()
        opt.step()
        opt.zero_grad()

    return median_seconds(step, repeats, device.type == "cuda")  # its warm-up step allocates


def cell_space(args: argparse.Namespace, data) -> CellSupernet:
    """The benchmark's DARTS cell space (``--ops``, ``--cells``, ``--channels``, ``--stem-stride``) for ``data``."""
    ops = args.ops.split(",")
    return build_supernet(
        tuple(data.input_shape), data.num_classes, ops, args.cells, args.channels, stem_stride=stem_stride(args)
    )


def random_cells(space: CellSupernet, macs: list[int], seed: int) -> list:
    """One random genotype of ``space`` at or below each of ``macs``, in order: the seed's own generator, so the
    same cells are drawn again from a results file's member MACs."""
    rng = np.random.default_rng([seed, 7])
    return [random_genotype(space, m, rng) for m in macs]


def train_settings(args: argparse.Namespace) -> dict:
    """The training settings of every network trained from scratch (and of the runs' members)."""
    return {"batch_size": args.batch_size, "lr": args.lr, "grad_clip": args.grad_clip, "optimizer": args.optimizer}


def _adapt(args, data, method: str, out: Path, seed: int, seed_dir: Path, **kwargs) -> dict:
    """One netfit run from the case's seed (the first run trains it), resumed when its directory exists."""
    if out != seed_dir.parent:
        model, where = args.model, {"seed_weights": seed_dir}
    else:
        model = seed_network(args.model, data, args.width, seed)
        where = {"train_seed": True, "seed_epochs": args.seed_epochs}
    result = adapt(
        model,
        data,
        ",".join(f"{b}%" for b in args.budgets),
        method,
        out=out,
        resume=(out / "run.json").exists(),
        seed=seed,
        progress=False,
        train=train_settings(args),
        **where,
        **kwargs,
    )
    return result.summary


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    data = load_data(args.data)
    seed_dir = root / f"seed-{seed}" / "seed"
    dnad = None
    scratch, options = scratch_epochs(args), _options(args)
    for method in ("snps", "dnad"):
        out = root / (f"seed-{seed}" if method == "snps" else f"dnad-{seed}")  # the first run keeps the seed
        dnad = _adapt(args, data, method, out, seed, seed_dir, epochs=scratch, method_options=options)
    # random genotypes of the same space at each DNAD member's MACs, trained for the same epochs from scratch
    space = cell_space(args, data)
    members = _members(dnad, root / f"dnad-{seed}")
    for m, genotype in zip(members, random_cells(space, [m["macs"] for m in members], seed)):
        torch.manual_seed(seed)
        model = build_model({**space.plain_arch(), "genotype": genotype})
        out = root / f"random-{seed}-{m['id']}"
        train_model(
            model,
            data,
            out=out,
            epochs=scratch,
            seed=seed,
            train=train_settings(args),
            progress=False,
            resume=out.exists(),
        )
    run_peers(args, data, seed, root, seed_dir)
    return collect_seed(args, seed, root)


def run_peers(args: argparse.Namespace, data, seed: int, root: Path, seed_dir: Path) -> None:
    """`uniform` and/or `dna` on the trained seed at the run's budgets, with the harness's epoch accounting."""
    for peer in args.peers:
        epochs, opts = args.epochs, {}
        if peer == "dna":  # one search for all budgets: each fine-tune gives up its share (the harness's rule)
            opts = {"search_epochs": args.dna_search_epochs}
            epochs = dna_finetune_epochs(args.epochs, args.dna_search_epochs, len(args.budgets))
        _adapt(args, data, peer, root / f"{peer}-{seed}", seed, seed_dir, epochs=epochs, method_options=opts)


def peer_rows(args: argparse.Namespace, seed: int, root: Path) -> dict:
    """Each finished peer's candidates (id, target, accuracy, MACs, params) read back from its run directory."""
    peers = {}
    for peer in args.peers:
        summary = _summary(root / f"{peer}-{seed}")
        if summary:
            keys = ("id", "target", "accuracy", "macs", "params")
            peers[peer] = [{k: r[k] for k in keys} for r in summary["candidates"]]
    return peers


def rerun_peers(args: argparse.Namespace, path: Path, root: Path) -> None:
    """Measure a committed result's peers again with today's netfit, its sets left as they are: each seed network
    retrained by the SNPS run's recipe (same initial weights, settings and seeding: the same network only where the
    training code has not changed since), then the peers on it; the retrained seed's accuracy is kept beside the
    sets' so that a reader sees whether it is the same network."""
    payload = json.loads(path.read_text())
    saved = {**payload["settings"], "peers": args.peers, "x": [tuple(kv) for kv in payload["settings"]["x"]]}
    case = argparse.Namespace(**saved)
    data = load_data(case.data)
    for run in payload["runs"]:
        seed = run["seed"]
        seed_dir = root / f"peers-seed-{seed}"
        trained_seed(case.model, data, case.width, seed, seed_dir, case.seed_epochs, train_settings(case))
        run_peers(case, data, seed, root, seed_dir)
        run["peers"] = peer_rows(case, seed, root)
        run["peers_seed_accuracy"] = _summary(root / f"{case.peers[0]}-{seed}")["seed"]["accuracy"]
    saved["peers_rerun"] = {"date": time.strftime("%Y-%m-%d"), "netfit": __version__, "root": str(root)}
    payload["settings"] = saved
    write_results(
        path.stem,
        payload,
        to_markdown(argparse.Namespace(**saved), payload["runs"], payload["summary"]),
        out=path.parent,
    )


def _summary(out: Path) -> dict | None:
    path = out / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def collect_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    """One seed's results read back from its run directories; parts not finished yet are left out (so an
    interrupted benchmark still reports what it measured, ``--collect``)."""
    shape = tuple(load_data(args.data).input_shape)
    dirs = {"snps": root / f"seed-{seed}", "dnad": root / f"dnad-{seed}"}
    runs = {method: _summary(out) for method, out in dirs.items()}
    members = {method: _members(summary, dirs[method]) if summary else [] for method, summary in runs.items()}
    random_rows = []
    for m in members["dnad"]:
        out = root / f"random-{seed}-{m['id']}"
        if (out / "model.safetensors").exists():
            model = load_model(out)
            cost = count_cost(model, shape)
            saved = json.loads((out / "arch.json").read_text())
            row = {"matched": m["id"], "accuracy": saved["meta"]["accuracy"], "macs": cost.macs, "params": cost.params}
            random_rows.append(row | {"genotype": saved["arch"]["genotype"]})
    peers = peer_rows(args, seed, root)
    seed_summary = runs["snps"] or runs["dnad"]
    return {
        "seed": seed,
        "seed_network": seed_summary["seed"] if seed_summary else None,
        **members,
        "random": random_rows,
        "peers": peers,
        "dense_step_seconds": supernet_step_seconds(None, args, shape),
        "remeasured_step_seconds": {
            method: [supernet_step_seconds(m["genotype"], args, shape) for m in rows]
            for method, rows in members.items()
        },
        "seconds": {method: s["timing"]["search_seconds"] for method, s in runs.items() if s},
        **(_timing_shape_steps(args, members) if getattr(args, "timing_shape", None) else {}),
    }


def _timing_shape_steps(args: argparse.Namespace, members: dict) -> dict:
    """The same step times on ``--timing-shape`` input (say CIFAR's 3x32x32): the dense supernet and the one cut to
    each member's genotype (a genotype does not depend on the input's size)."""
    shape = tuple(args.timing_shape)
    return {
        "timing_shape": list(shape),
        "timing_shape_step_seconds": {"dense": supernet_step_seconds(None, args, shape)}
        | {
            method: [supernet_step_seconds(m["genotype"], args, shape) for m in rows]
            for method, rows in members.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--model", default="resnet18_1d")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 25, 10])
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=10)
    parser.add_argument("--dna-search-epochs", type=int, default=7)
    parser.add_argument("--ops", default=DEFAULT_OPS)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--stem-stride", type=int, default=1)
    parser.add_argument("-x", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="method option")
    parser.add_argument("--peers", nargs="*", default=["uniform", "dna"], choices=["uniform", "dna"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--tag", default="", help="suffix of the result files (seeds run in parallel processes)")
    parser.add_argument("--collect", action="store_true", help="only read back what --root holds (no training)")
    parser.add_argument("--timing-shape", type=int, nargs="+", help="also time the supernet steps on this input shape")
    parser.add_argument("--combine", nargs="+", type=Path, help="merge the runs of these result JSONs (same settings)")
    parser.add_argument(
        "--rerun-peers", type=Path, help="measure this result JSON's peers (--peers) again, its sets left as they are"
    )
    args = parser.parse_args()
    if args.rerun_peers:
        rerun_peers(args, args.rerun_peers, args.root or Path(tempfile.mkdtemp(prefix="netfit-dnad-peers-")))
        return
    name = f"dnad_{args.data}{args.tag}"
    if args.combine:
        first, runs = merge_runs(args.combine)
        saved = {**first["settings"], "seeds": [r["seed"] for r in runs], "tag": ""}
        args = argparse.Namespace(**{**saved, "x": [tuple(kv) for kv in saved["x"]]})
        payload = {**first, "settings": saved, "summary": summarise(runs), "runs": runs}
        write_results(name, payload, to_markdown(args, runs, payload["summary"]))  # --tag names the merge
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-dnad-"))
    runs = []
    for s in args.seeds:
        runs.append(collect_seed(args, s, root) if args.collect else run_seed(args, s, root))
        summary = summarise(runs)  # written after every seed: an interrupted benchmark keeps what it measured
        payload = {
            "benchmark": "dnad",
            "settings": {**vars(args), "root": str(root), "combine": None},
            "environment": environment(),
            "summary": summary,
            "runs": runs,
        }
        write_results(name, payload, to_markdown(args, runs, summary))
    print(to_markdown(args, runs, summarise(runs)))


if __name__ == "__main__":
    main()
