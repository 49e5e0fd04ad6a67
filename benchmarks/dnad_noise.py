"""Retrain every architecture of a DNAD benchmark R times: do its comparisons stand above training noise?

    python -m benchmarks.dnad_noise benchmarks/results/dnad_mnist1d.json --retrains 3 --seeds 0 --tag _p0
    python -m benchmarks.dnad_noise benchmarks/results/dnad_mnist1d.json --merge dnad_mnist1d_noise_p0.json ...

With ``--kd`` every training (R of them, the recorded plain one not among them) adds Hinton KD from the run's
trained seed (``--teachers``: where each seed's teacher folder is; default ``<the run's root>/seed-{seed}/seed``),
with the same seeds as the plain trainings, so each architecture's KD gain is paired; ``--plain`` (the plain
noise results of the same runs, at merge) adds that gain and the DNAD set with KD against the plain SNPS set and
random cells. Results: <name>_kd<tag>.

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
from netfit.export import load_model
from netfit.models import build_model

from .common import environment, mean_std, merge_runs, noise_ceiling, noise_ceiling_text, write_results
from .dnad import cell_space, random_cells, train_settings
from .dnad_report import comparisons, matched, percent, scratch_epochs, stem_stride, verdict

RETRAIN_SEED_STEP = 1000  # training k of an architecture: its recorded seeds + k x 1000
GROUPS = ("snps", "dnad", "random")  # an architecture id starts with its group: snps-m0, dnad-m2, random-dnad-m1


def architectures(run: dict, space, shape: tuple[int, ...]) -> list[dict]:
    """Every architecture a seed's run trained, with the seeds of its recorded training: the members of both sets
    (initial weights seeded by seed + member index) and the random cells (seed), drawn again and checked."""
    seed = run["seed"]
    archs = [
        {"id": m["id"], "genotype": m["genotype"], "init_seed": seed + i, "accuracy": m["accuracy"]}
        for method in ("snps", "dnad")
        for i, m in enumerate(run[method])
    ]
    members = run["dnad"]  # drawn for every member in order; a partial run trained cells for some of them only
    drawn = dict(zip((m["id"] for m in members), random_cells(space, [m["macs"] for m in members], seed)))
    for r in run["random"]:
        genotype = drawn[r["matched"]]
        macs = count_cost(build_model({**space.plain_arch(), "genotype": genotype}), shape).macs
        if r.get("genotype", genotype) != genotype or macs != r["macs"]:
            raise SystemExit(f"seed {seed}: the random cell drawn for {r['matched']} is not the one recorded")
        cell = {"id": f"random-{r['matched']}", "genotype": genotype, "init_seed": seed}
        archs.append(cell | {"accuracy": r["accuracy"]})
    return archs


def retrain_seed(
    saved: argparse.Namespace,
    retrains: int,
    run: dict,
    root: Path,
    teacher: Path | None = None,
    groups: tuple[str, ...] = GROUPS,
) -> dict:
    """The run with every architecture's accuracies over ``retrains`` trainings (``trainings``: id -> list): the
    recorded training and ``retrains`` - 1 more, or with a ``teacher`` folder ``retrains`` distilled ones; only
    the architectures of ``groups``."""
    data = load_data(saved.data)
    space = cell_space(saved, data)
    teacher_model = load_model(teacher) if teacher else None  # read once, not once per training
    trainings = {}
    for arch in architectures(run, space, tuple(data.input_shape)):
        if arch["id"].split("-")[0] not in groups:
            continue
        accuracies = [] if teacher else [arch["accuracy"]]
        for k in range(0 if teacher else 1, retrains):
            step = k * RETRAIN_SEED_STEP
            out = root / f"{run['seed']}-{arch['id']}-{'kd' if teacher else 'r'}{k}"
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
                teacher=teacher_model,
            )
            accuracies.append(result["accuracy"])
        trainings[arch["id"]] = accuracies
        print(run["seed"], arch["id"], accuracies, flush=True)
    return {**run, "trainings": trainings}


def mean_run(run: dict, dnad_from: dict | None = None) -> dict:
    """The run with every member's and random cell's accuracy replaced by the mean over its trainings (the DNAD
    members' over ``dnad_from``'s trainings when given: another set of trainings of the same run)."""
    return _reduced(run, _mean, dnad_from)


def _reduced(run: dict, reduce, dnad_from: dict | None = None) -> dict:
    """The run with each member's and random cell's accuracy ``reduce``d from its trainings; a group without
    trainings (``--groups``) is left out."""
    trained = {k: reduce(v) for k, v in run["trainings"].items()}
    out = copy.deepcopy(run)
    for method in ("snps", "dnad"):
        source = trained if method == "snps" or dnad_from is None else _means(dnad_from)
        out[method] = [m | {"accuracy": source[m["id"]]} for m in out[method] if m["id"] in source]
    ids = [f"random-{r['matched']}" for r in out["random"]]
    out["random"] = [r | {"accuracy": trained[i]} for r, i in zip(out["random"], ids) if i in trained]
    return out


def _mean(accuracies: list[float]) -> float:
    return float(np.mean(accuracies))


def _means(run: dict) -> dict[str, float]:
    return {k: _mean(v) for k, v in run["trainings"].items()}


def kd_against_plain(runs: list[dict], plain: list[dict]) -> dict:
    """Distilled trainings (``runs``) against plain ones of the same architectures (``plain``): each group's gain
    (mean over the KD trainings - mean over the plain ones, per architecture), and the DNAD set trained with KD
    against the plain SNPS set and plain random cells at matched MACs."""
    by_seed = {r["seed"]: r for r in plain}
    missing = [r["seed"] for r in runs if r["seed"] not in by_seed]
    if missing:
        raise SystemExit(f"the plain results hold no run of seeds {missing}")
    gains: dict[str, list[float]] = {g: [] for g in GROUPS}
    for run in runs:
        kd, base = _means(run), _means(by_seed[run["seed"]])
        for arch, accuracy in kd.items():
            gains[arch.split("-")[0]].append(accuracy - base[arch])
    mixed = [mean_run(by_seed[run["seed"]], dnad_from=run) for run in runs]
    return {
        "kd_gain": {g: mean_std(v) for g, v in gains.items() if v},
        "dnad_kd_vs_plain": comparisons(mixed),
        "matched": [{"seed": run["seed"], **r} for run in mixed for r in matched(run)],
    }


def summarise(runs: list[dict], plain: list[dict] | None = None) -> dict:
    repeated = all(len(t) > 1 for run in runs for t in run["trainings"].values())  # one KD training each: no ceiling
    summary = {
        "noise_ceiling": [noise_ceiling(list(run["trainings"].values())) for run in runs] if repeated else None,
        "first_training": comparisons([_reduced(run, lambda a: a[0]) for run in runs]),
        "mean_of_trainings": comparisons([mean_run(run) for run in runs]),
    }
    return summary | ({"against_plain": kd_against_plain(runs, plain)} if plain else {})


def to_markdown(saved: argparse.Namespace, retrains: int, runs: list[dict], summary: dict, kd: bool = False) -> str:
    times = f"{retrains} times" if retrains > 1 else "once"
    trained = [g for g in GROUPS if any(a.startswith(f"{g}-") for run in runs for a in run["trainings"])]
    which = "" if trained == list(GROUPS) else f" (here only {' and '.join(trained)}: `--groups`)"
    lines = [
        f"# DNAD / SNPS on {saved.data}: every architecture trained {times}" + (" with KD" if kd else ""),
        "",
        f"The architectures of `benchmarks.dnad` (seeds {[r['seed'] for r in runs]}; {saved.cells} cells, C = "
        f"{saved.channels}, stem stride {stem_stride(saved)}, ops {saved.ops}): both sets' members and the random "
        f"cells at the DNAD members' MACs{which}, each trained {scratch_epochs(saved)} epochs from scratch "
        f"({saved.optimizer} lr {saved.lr}, batch {saved.batch_size}, grad clip {saved.grad_clip}) {times}: "
        + (
            "each with Hinton KD (weight 1, T = 4) from the seed's trained network, initial weights and data order "
            f"from the recorded plain training's seeds, + {RETRAIN_SEED_STEP}, ..."
            if kd
            else f"the recorded training, then initial weights and data order from its seeds + {RETRAIN_SEED_STEP}, "
            f"+ {2 * RETRAIN_SEED_STEP}, ..."
        ),
        "",
        "## Accuracy per training (test %)",
        "",
        "| seed | architecture | trainings | mean |",
        "|---|---|---|---|",
    ]
    for run in runs:
        for arch, accuracies in run["trainings"].items():
            each = " / ".join(percent(a) for a in accuracies)
            lines.append(f"| {run['seed']} | {arch} | {each} | {percent(_mean(accuracies))} |")
    rows = [{"seed": run["seed"], **r} for run in runs for r in matched(mean_run(run))]
    lines += _matched_lines("Matched MACs on the mean of the trainings", rows)
    readings = [
        (f"{when}: ", name, summary[key][f"dnad_minus_{other}"])
        for when, key in (("First training only", "first_training"), ("Mean of the trainings", "mean_of_trainings"))
        for name, other in (("DNAD - random cells", "random"), ("DNAD - SNPS", "snps"))
    ]
    if summary["noise_ceiling"]:
        readings.insert(0, (noise_ceiling_text(summary["noise_ceiling"]), "", None))
    said = [
        f"- {text} (per seed, over all of its architectures)"
        if comparison is None
        else "- " + text + verdict(name, comparison)[2:]
        for text, name, comparison in readings
        if comparison is None or comparison["points"]
    ]
    lines += ["", "## Reading", "", *said, ""] if said else [""]
    if "against_plain" in summary:
        lines += _against_plain_lines(summary["against_plain"])
    return "\n".join(lines)


def _matched_lines(title: str, rows: list[dict]) -> list[str]:
    """A table of ``benchmarks.dnad.matched`` rows (with their seed); nothing when there are none."""
    if not rows:
        return []
    header = "| seed | DNAD member | MACs | DNAD | SNPS | random cells |"
    lines = ["", f"## {title}", "", header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['id']} | {r['macs']:,} | {percent(r['dnad'])} | {percent(r['snps'])} | "
            f"{percent(r['random'])} |"
        )
    return lines


def _against_plain_lines(against: dict) -> list[str]:
    lines = [
        "## With KD against plain training (means of the trainings)",
        "",
        "| architectures | KD - plain, points (mean ± std over architectures) |",
        "|---|---|",
    ]
    for group, (m, sd) in against["kd_gain"].items():
        lines.append(f"| {group} | {100 * m:+.2f} ± {100 * sd:.2f} |")
    lines += _matched_lines("DNAD members with KD, SNPS and random cells plain", against["matched"])
    both = against["dnad_kd_vs_plain"]
    prefix = "- DNAD with KD, SNPS and random cells plain: "
    lines += ["", prefix + verdict("DNAD - random cells", both["dnad_minus_random"])[2:]]
    return [*lines, prefix + verdict("DNAD - SNPS", both["dnad_minus_snps"])[2:], ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a benchmarks.dnad results JSON")
    parser.add_argument("--retrains", type=int, default=3, help="trainings per architecture, the recorded one included")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of the results file")
    parser.add_argument("--root", type=Path, default=None, help="where the trainings go (resumed when they exist)")
    parser.add_argument("--tag", default="", help="suffix of the result files (seeds run in parallel processes)")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these noise result JSONs (same settings)")
    parser.add_argument("--kd", action="store_true", help="train with KD from each seed's trained network")
    parser.add_argument("--teachers", default=None, help="each seed's teacher folder, '{seed}' filled in")
    parser.add_argument("--plain", type=Path, help="merging --kd results: the plain noise results of the same runs")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS), help="architectures to train")
    args = parser.parse_args()
    if args.retrains < (1 if args.kd else 2):
        parser.error("--retrains must be at least 2 (the recorded training and one more), 1 with --kd")
    if args.plain and not args.merge:
        parser.error("--plain goes with --merge (of --kd results)")
    recorded = json.loads(args.results.read_text())
    saved = argparse.Namespace(**recorded["settings"])
    if args.merge:
        first, runs = merge_runs(args.merge)
        retrains, kd = first["settings"]["retrains"], first["settings"].get("kd", False)  # as the shards ran
        if args.plain and not kd:
            parser.error("--plain goes with the merge of --kd results")
        plain = merge_runs([args.plain])[1] if args.plain else None
        payload = {**first, "summary": summarise(runs, plain), "runs": runs}
        name = f"{args.results.stem}_{'kd' if kd else 'noise'}"
        write_results(name, payload, to_markdown(saved, retrains, runs, payload["summary"], kd))
        return
    name = f"{args.results.stem}_{'kd' if args.kd else 'noise'}"
    root = args.root or Path(tempfile.mkdtemp(prefix="netfit-dnad-noise-"))
    teachers = args.teachers or str(Path(saved.root) / "seed-{seed}" / "seed")
    chosen = [r for r in recorded["runs"] if args.seeds is None or r["seed"] in args.seeds]
    if not chosen:
        parser.error(f"no run of seeds {args.seeds} in {args.results}")
    runs = []
    for run in chosen:
        teacher = Path(teachers.format(seed=run["seed"])) if args.kd else None
        runs.append(retrain_seed(saved, args.retrains, run, root, teacher, tuple(args.groups)))
        summary = summarise(runs)  # written after every seed: an interrupted benchmark keeps what it measured
        settings = {"results": str(args.results), "retrains": args.retrains, "root": str(root), "kd": args.kd}
        settings["groups"] = args.groups
        payload = {"benchmark": "dnad_noise", "settings": settings, "environment": environment(), "summary": summary}
        markdown = to_markdown(saved, args.retrains, runs, summary, args.kd)
        write_results(name + args.tag, payload | {"runs": runs}, markdown)
    print(to_markdown(saved, args.retrains, runs, summarise(runs), args.kd))


if __name__ == "__main__":
    main()
