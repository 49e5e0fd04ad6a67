"""ODN benchmark: chosen depth, accuracy and size reduction vs the full network and vs uniform at the same MACs.

    python -m benchmarks.odn --data mnist10k --model resnet18_cifar --width 0.25 --seeds 0 1 2

For each seed: train the seed network, run ODN (target: seed val accuracy - 0.5 points), then run `uniform`
(width) from the same trained seed at the MACs of ODN's deployed prefix, with the same epochs as ODN spent
after the seed. Results go to benchmarks/results/odn_<data>.json/.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from netfit.api import adapt
from netfit.cost import peak_memory
from netfit.data import load_data
from netfit.export import load_model
from netfit.models import create_model

from .common import RESULTS, environment, mean_std, write_results

PAPER = {  # Optimally Deep Networks, MNIST row (trained on the full 60k MNIST training set)
    "mnist10k": {"model": "ResNet-18", "depth": 2, "accuracy": 0.9931, "params_reduction": 0.9864},
}


def run_seed(args: argparse.Namespace, seed: int, root: Path) -> dict:
    data = load_data(args.data)
    model = create_model(args.model, num_classes=data.num_classes, in_chans=data.input_shape[0], width_mult=args.width)
    common = {"seed": seed, "progress": False, "train": {"batch_size": args.batch_size, "lr": args.lr}}
    t0 = time.perf_counter()
    odn = adapt(
        model,
        data,
        "100%",
        "odn",
        out=root / f"odn-{seed}",
        epochs=args.epochs,
        seed_epochs=args.seed_epochs,
        train_seed=True,
        method_options={"warmup_epochs": args.warmup},
        **common,
    )
    odn_seconds = time.perf_counter() - t0
    summary = odn.summary
    chosen = next(r for r in summary["candidates"] if r["info"].get("chosen"))
    seed_dir = root / f"odn-{seed}" / "seed"
    trained_epochs = args.warmup + sum(1 for _ in summary["candidates"]) * args.epochs + args.epochs
    t0 = time.perf_counter()
    uni = adapt(
        args.model,
        data,
        f"{chosen['macs']}",
        "uniform",
        out=root / f"uniform-{seed}",
        epochs=trained_epochs,
        seed_weights=seed_dir,
        **common,
    )
    uniform_seconds = time.perf_counter() - t0
    (urow,) = uni.summary["candidates"]
    full = load_model(seed_dir)
    prefix = load_model(root / f"odn-{seed}" / chosen["weights"])
    shape = data.input_shape
    return {
        "seed": seed,
        "full": {
            **{k: summary["seed"][k] for k in ("macs", "params", "accuracy")},
            "peak_memory_bytes": peak_memory(full, shape).peak_bytes,
        },
        "odn": {
            "depth": chosen["info"]["depth"],
            "of_depths": sum(len(s) for s in full.stages),
            "accuracy": chosen["accuracy"],
            "macs": chosen["macs"],
            "params": chosen["params"],
            "peak_memory_bytes": peak_memory(prefix, shape).peak_bytes,
            "target_acc": chosen["info"]["target_acc"],
            "depths_tried": [r["info"]["depth"] for r in summary["candidates"]],
            "seconds": round(odn_seconds, 1),
        },
        "uniform_same_macs": {
            "accuracy": urow["accuracy"],
            "macs": urow["macs"],
            "params": urow["params"],
            "epochs": trained_epochs,
            "seconds": round(uniform_seconds, 1),
        },
    }


def to_markdown(args: argparse.Namespace, runs: list[dict]) -> str:
    def ms(path: list[str], pct: bool = True) -> str:
        values = []
        for r in runs:
            v = r
            for key in path:
                v = v[key]
            values.append(v)
        m, s = mean_std(values)
        spread = f" ± {100 * s:.2f}" if len(values) > 1 else ""  # one seed: no spread to report
        return f"{100 * m:.2f}{spread}%" if pct else f"{m:,.0f}"

    reduction = [1 - r["odn"]["params"] / r["full"]["params"] for r in runs]
    mem_red = [1 - r["odn"]["peak_memory_bytes"] / r["full"]["peak_memory_bytes"] for r in runs]
    lines = [
        f"# ODN on {args.data} with {args.model} (width x{args.width})",
        "",
        f"Seeds {[r['seed'] for r in runs]}; seed network trained {args.seed_epochs} epochs; ODN warm-up {args.warmup}"
        f" epochs, at most {args.epochs} epochs per depth; uniform gets the same post-seed epochs as ODN.",
        f"Data: {load_data(args.data).source}.",
        "",
        "| network | depth (blocks) | test accuracy | MACs | params | params reduction | peak memory reduction |",
        "|---|---|---|---|---|---|---|",
        f"| full seed | {runs[0]['odn']['of_depths']} | {ms(['full', 'accuracy'])} | {ms(['full', 'macs'], False)} | "
        f"{ms(['full', 'params'], False)} | 0 | 0 |",
        f"| ODN prefix | {', '.join(str(r['odn']['depth']) for r in runs)} | {ms(['odn', 'accuracy'])} | "
        f"{ms(['odn', 'macs'], False)} | {ms(['odn', 'params'], False)} | {100 * mean_std(reduction)[0]:.2f}% | "
        f"{100 * mean_std(mem_red)[0]:.2f}% |",
        f"| uniform width, same MACs | all | {ms(['uniform_same_macs', 'accuracy'])} | "
        f"{ms(['uniform_same_macs', 'macs'], False)} | {ms(['uniform_same_macs', 'params'], False)} | | |",
    ]
    paper = PAPER.get(args.data)
    if paper:
        lines.append(
            f"| paper ({paper['model']}, full 60k MNIST train set) | {paper['depth']} | "
            f"{100 * paper['accuracy']:.2f}% | | | {100 * paper['params_reduction']:.2f}% | |"
        )
    lines += [
        "",
        "MACs of one forward pass at batch 1 (conv/linear); FLOPs = 2 x MACs. Peak memory: netfit's "
        "CPU tensor tracking (parameters + live activations, batch 1).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist10k")
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seed-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the committed JSON")
    args = parser.parse_args()
    if args.rewrite:
        payload = json.loads((RESULTS / f"odn_{args.data}.json").read_text())
        saved = argparse.Namespace(**{**payload["settings"], "root": Path(payload["settings"]["root"])})
        write_results(f"odn_{args.data}", payload, to_markdown(saved, payload["runs"]))
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-odn-"))
    runs = [run_seed(args, s, root) for s in args.seeds]
    payload = {
        "benchmark": "odn",
        "settings": vars(args) | {"root": str(root)},
        "environment": environment(),
        "paper": PAPER.get(args.data),
        "runs": runs,
    }
    write_results(f"odn_{args.data}", payload, to_markdown(args, runs))
    print(to_markdown(args, runs))


if __name__ == "__main__":
    main()
