"""Retrain every architecture of a DNAD benchmark R times: do its comparisons stand above training noise?

    python -m benchmarks.dnad_noise benchmarks/results/dnad_mnist1d.json --retrains 3 --seeds 0 --tag _p0
    python -m benchmarks.dnad_noise benchmarks/results/dnad_mnist1d.json --merge dnad_mnist1d_noise_p0.json ...

Reads the architectures a ``benchmarks.dnad`` run recorded (both sets' members, and the random cells, drawn again
from the benchmark's seeded generator and checked against the recorded MACs) and trains each R - 1 more times
with the recorded epochs and settings: initial weights and data order from seeds + 1000, + 2000, ... (the recorded
training stays the first). Reports per seed the noise ceiling (``benchmarks.common.noise_ceiling``) and DNAD -
random and DNAD - SNPS at matched MACs on the mean of the trainings. Results: benchmarks/results/
<name>_noise<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from netfit.api import train_model
from netfit.cost import count_cost
from netfit.data import load_data
from netfit.models import build_model

from .common import environment, merge_runs, noise_ceiling, noise_ceiling_text, write_results
from .dnad import (
    cell_space,
    comparisons,
    matched,
    percent,
    random_cells,
    scratch_epochs,
    stem_stride,
    train_settings,
    verdict,
)

RETRAIN_SEED_STEP = 1000  # training k of an architecture: its recorded seeds + k x 1000


def architectures(run: dict, space, shape: tuple[int, ...]) -> list[dict]:
    """Every architecture a seed's run trained, with the seeds of its recorded training: the members of both sets
    (initial weights seeded by seed + member index) and the random cells (seed), drawn again and checked."""
    seed = run["seed"]
    archs = [
        {"id": m["id"], "genotype": m["genotype"], "init_seed": seed + i, "accuracy": m["accuracy"]}
        for method in ("snps", "dnad")
        for i, m in enumerate(run[method])
    ]
    drawn = random_cells(space, [m["macs"] for m in run["dnad"]], seed)
    for r, genotype in zip(run["random"], drawn):
        macs = count_cost(build_model({**space.plain_arch(), "genotype": genotype}), shape).macs
        if r.get("genotype", genotype) != genotype or macs != r["macs"]:
            raise SystemExit(f"seed {seed}: the random cell drawn for {r['matched']} is not the one recorded")
        cell = {"id": f"random-{r['matched']}", "genotype": genotype, "init_seed": seed}
        archs.append(cell | {"accuracy": r["accuracy"]})
    return archs


def retrain_seed(saved: argparse.Namespace, retrains: int, run: dict, root: Path) -> dict:
    """The run with every architecture's accuracies over ``retrains`` trainings (``trainings``: id -> list)."""
    data = load_data(saved.data)
    space = cell_space(saved, data)
    trainings = {}
    for arch in architectures(run, space, tuple(data.input_shape)):
        accuracies = [arch["accuracy"]]
        for k in range(1, retrains):
            step = k * RETRAIN_SEED_STEP
            out = root / f"{run['seed']}-{arch['id']}-r{k}"
            torch.manual_seed(arch["init_seed"] + step)
            model = build_model({**space.plain_arch(), "genotype": arch["genotype"]})
            result = train_model(
                model,
                data,
                out=out,
                epochs=scratch_epochs(saved),
                seed=run["seed"] + step,
                train=train_settings(saved),
                progress=False,
                resume=out.exists(),
            )
            accuracies.append(result["accuracy"])
        trainings[arch["id"]] = accuracies
        print(run["seed"], arch["id"], accuracies, flush=True)
    return {**run, "trainings": trainings}


def mean_run(run: dict) -> dict:
    """The run with every member's and random cell's accuracy replaced by the mean over its trainings."""
    means = {k: float(np.mean(v)) for k, v in run["trainings"].items()}
    out = copy.deepcopy(run)
    for method in ("snps", "dnad"):
        for m in out[method]:
            m["accuracy"] = means[m["id"]]
    for r in out["random"]:
        r["accuracy"] = means[f"random-{r['matched']}"]
    return out


def summarise(runs: list[dict]) -> dict:
    return {
        "noise_ceiling": [noise_ceiling(list(run["trainings"].values())) for run in runs],
        "first_training": comparisons(runs),
        "mean_of_trainings": comparisons([mean_run(run) for run in runs]),
    }


def to_markdown(saved: argparse.Namespace, retrains: int, runs: list[dict], summary: dict) -> str:
    lines = [
        f"# DNAD / SNPS on {saved.data}: every architecture trained {retrains} times",
        "",
        f"The architectures of `benchmarks.dnad` (seeds {[r['seed'] for r in runs]}; {saved.cells} cells, C = "
        f"{saved.channels}, stem stride {stem_stride(saved)}, ops {saved.ops}): both sets' members and the random "
        f"cells at the DNAD members' MACs, each "
        f"trained {scratch_epochs(saved)} epochs from scratch ({saved.optimizer} lr {saved.lr}, batch "
        f"{saved.batch_size}, grad clip {saved.grad_clip}) {retrains} times: the recorded training, then initial "
        f"weights and data order from its seeds + {RETRAIN_SEED_STEP}, + {2 * RETRAIN_SEED_STEP}, ...",
        "",
        "## Accuracy per training (test %)",
        "",
        "| seed | architecture | trainings | mean |",
        "|---|---|---|---|",
    ]
    for run in runs:
        for arch, accuracies in run["trainings"].items():
            each = " / ".join(percent(a) for a in accuracies)
            lines.append(f"| {run['seed']} | {arch} | {each} | {percent(float(np.mean(accuracies)))} |")
    lines += [
        "",
        "## Matched MACs on the mean of the trainings",
        "",
        "| seed | DNAD member | MACs | DNAD | SNPS | random cells |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in matched(mean_run(run)):
            lines.append(
                f"| {run['seed']} | {r['id']} | {r['macs']:,} | {percent(r['dnad'])} | {percent(r['snps'])} | "
                f"{percent(r['random'])} |"
            )
    first, means = summary["first_training"], summary["mean_of_trainings"]
    lines += [
        "",
        "## Reading",
        "",
        "- " + noise_ceiling_text(summary["noise_ceiling"]) + " (per seed, over all of its architectures)",
        "- First training only: " + verdict("DNAD - random cells", first["dnad_minus_random"])[2:],
        "- First training only: " + verdict("DNAD - SNPS", first["dnad_minus_snps"])[2:],
        "- Mean of the trainings: " + verdict("DNAD - random cells", means["dnad_minus_random"])[2:],
        "- Mean of the trainings: " + verdict("DNAD - SNPS", means["dnad_minus_snps"])[2:],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a benchmarks.dnad results JSON")
    parser.add_argument("--retrains", type=int, default=3, help="trainings per architecture, the recorded one included")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of the results file")
    parser.add_argument("--root", type=Path, default=None, help="where the trainings go (resumed when they exist)")
    parser.add_argument("--tag", default="", help="suffix of the result files (seeds run in parallel processes)")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these noise result JSONs (same settings)")
    args = parser.parse_args()
    if args.retrains < 2:
        parser.error("--retrains must be at least 2 (the recorded training and one more)")
    recorded = json.loads(args.results.read_text())
    saved = argparse.Namespace(**recorded["settings"])
    name = f"{args.results.stem}_noise"
    if args.merge:
        first, runs = merge_runs(args.merge)
        retrains = first["settings"]["retrains"]
        payload = {**first, "summary": summarise(runs), "runs": runs}
        write_results(name, payload, to_markdown(saved, retrains, runs, payload["summary"]))
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-dnad-noise-"))
    chosen = [r for r in recorded["runs"] if args.seeds is None or r["seed"] in args.seeds]
    if not chosen:
        parser.error(f"no run of seeds {args.seeds} in {args.results}")
    runs = []
    for run in chosen:
        runs.append(retrain_seed(saved, args.retrains, run, root))
        summary = summarise(runs)  # written after every seed: an interrupted benchmark keeps what it measured
        settings = {"results": str(args.results), "retrains": args.retrains, "root": str(root)}
        payload = {"benchmark": "dnad_noise", "settings": settings, "environment": environment(), "summary": summary}
        write_results(name + args.tag, payload | {"runs": runs}, to_markdown(saved, args.retrains, runs, summary))
    print(to_markdown(saved, args.retrains, runs, summarise(runs)))


if __name__ == "__main__":
    main()
