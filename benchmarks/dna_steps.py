"""DNA's search step against a dense step of the seed, per pass, for DNA option sets side by side.

    python -m benchmarks.dna_steps --data mnist10k --model resnet18_cifar --width 0.25 \
        --budgets 50 25 10 5 2 1 0.5 150 --variant "width + depth" grow_depth=0.5

Times ``benchmarks.dna.step_ratios`` on a freshly initialised seed network (a step's cost does not depend on
what the weights learnt), first with DNA's default options, then with each ``--variant`` (a label and KEY=VALUE
options), in one process on ``--threads`` threads, and counts each one's aten operations (views left out) over
the dense step's: about the kernel launches a launch-bound GPU pays, the same on any device. Writes
benchmarks/results/dna_steps_<data>_<model>[_<name>].{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from netfit.data import load_data
from netfit.models import create_model

from .common import add_case_arguments, environment, write_results
from .dna import _option, step_ratios

PASSES = ("supernet_largest", "supernet_soft", "sampled_masked", "sampled_sliced", "smallest_sliced")


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per option set: its label, options and step ratios."""
    data = load_data(args.data)
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=data.num_classes, in_chans=data.input_shape[0], width_mult=args.width)
    rows = []
    for label, *options in [["default"], *args.variant]:
        opts = dict(_option(o) for o in options)
        timing = (args.batch_size, args.seed, args.budgets, opts, args.repeats, args.device)
        ratios = step_ratios(model, data, *timing, count_operations=True)
        rows.append({"variant": label, "options": opts, "ratios": ratios})
        print(label, ratios, flush=True)
    return rows


def to_markdown(args: argparse.Namespace, rows: list[dict], env: dict) -> str:
    head = " | ".join(p.replace("_", " ") for p in PASSES)
    where = env["device"] + (f", {env['cpu_threads']} thread(s)" if args.device == "cpu" else "")
    lines = [
        f"# DNA step / dense seed step: {args.model} x{args.width:g} on {args.data}",
        "",
        f"Budgets {' '.join(f'{b:g}%' for b in args.budgets)} of the seed's MACs; batch {args.batch_size}; "
        f"{where}, torch {env['torch']}; one process, side by side.",
        "",
        f"| variant | options | {head} | whole search step |",
        "|---|---|" + "---|" * (len(PASSES) + 1),
    ]
    for row in rows:
        cells = " | ".join(f"{row['ratios'][p]:.2f}x" for p in PASSES)
        options = " ".join(f"{k}={v}" for k, v in row["options"].items()) or "-"
        lines.append(f"| {row['variant']} | {options} | {cells} | **{row['ratios']['dna_search_step']:.2f}x** |")
    if "operations" in rows[0]["ratios"]:
        count = rows[0]["ratios"]["operations"]["dense_seed_count"]
        lines += [
            "",
            f"Aten operations (views left out) over the dense seed step's {count} (forward + backward; "
            "about the kernel launches on a GPU, where a step of a small network costs its launches):",
            "",
        ]
        lines += [f"| variant | {head} | whole search step |", "|---|" + "---|" * (len(PASSES) + 1)]
        for row in rows:
            ops = row["ratios"]["operations"]
            cells = " | ".join(f"{ops[p]:.2f}x" for p in PASSES)
            lines.append(f"| {row['variant']} | {cells} | **{ops['dna_search_step']:.2f}x** |")
    if "dense_seed_ms" in rows[0]["ratios"]:  # on CUDA: throughput, plain training next to DNA's search
        lines += ["", "| variant | plain training, images/s | DNA search, images/s |", "|---|---|---|"]
        for row in rows:
            dense = args.batch_size / (row["ratios"]["dense_seed_ms"] / 1e3)
            lines.append(f"| {row['variant']} | {dense:,.0f} | {dense / row['ratios']['dna_search_step']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser, budgets=[50, 25, 10, 5, 2, 1, 150])
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("LABEL", "KEY=VALUE"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (passes under bf16 autocast, as training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment()
    rows = measure(args)
    stem = Path(args.data).stem  # data: a built-in name or a file
    name = f"dna_steps_{stem}_{args.model}" + (f"_{args.name}" if args.name else "")
    write_results(name, {"benchmark": "dna_steps", "settings": vars(args), "environment": env, "rows": rows},
                  to_markdown(args, rows, env))  # fmt: skip
    print(to_markdown(args, rows, env))


if __name__ == "__main__":
    main()
