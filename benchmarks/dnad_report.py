"""The DNAD/SNPS benchmark's reading: members matched by MACs (DNAD against SNPS and random cells), step-time
ratios, and the markdown table of ``benchmarks.dnad``'s results (also used by ``dnad_noise``)."""

from __future__ import annotations

import argparse
import json

from netfit.data import load_data

from .common import dna_finetune_epochs, mean_std


def stem_stride(args: argparse.Namespace) -> int:
    return getattr(args, "stem_stride", 1)  # results recorded before the option had stride 1


def scratch_epochs(args: argparse.Namespace) -> int:
    """Epochs of every network trained from scratch (members, random cells): the seed's plus the peers' fine-tune
    epochs, so that everyone has trained as long (the search itself is not counted)."""
    return args.seed_epochs + args.epochs


MATCH_SLACK = 1.1  # a member "matches" MACs m when it costs at most 1.1 m


def _front_at(members: list[dict], macs: float) -> float | None:
    """The best accuracy of a set's members at or below ``MATCH_SLACK`` x ``macs`` (None: no member that small)."""
    fitting = [m["accuracy"] for m in members if m["macs"] <= MATCH_SLACK * macs]
    return max(fitting) if fitting else None


def matched(run: dict) -> list[dict]:
    """Per DNAD member with a trained random cell (a partial ``--collect`` may lack some): its accuracy, the SNPS
    set's best at or below its MACs, the random cell drawn at its MACs."""
    cells = {r["matched"]: r for r in run["random"]}
    rows = []
    for m in run["dnad"]:
        if (r := cells.get(m["id"])) is None:
            continue
        rows.append(
            {
                "id": m["id"],
                "macs": m["macs"],
                "dnad": m["accuracy"],
                "snps": _front_at(run["snps"], m["macs"]),
                "random": r["accuracy"],
                "random_macs": r["macs"],
            }
        )
    return rows


def step_ratio(times: list[float | None]) -> float | None:
    """Last plateau's step time over the first's (members without a time are skipped)."""
    timed = [t for t in times if t]
    return timed[-1] / timed[0] if len(timed) > 1 else None


def comparisons(runs: list[dict]) -> dict:
    """DNAD - random cells and DNAD - SNPS at matched MACs, over every DNAD member of ``runs``."""
    rows = [row for run in runs for row in matched(run)]
    vs_random = [r["dnad"] - r["random"] for r in rows]
    vs_snps = [r["dnad"] - r["snps"] for r in rows if r["snps"] is not None]
    return {
        name: {
            "mean_std": mean_std(diffs) if diffs else None,
            "all_at_or_above": all(d >= 0 for d in diffs),
            "points": len(diffs),
        }
        for name, diffs in (("dnad_minus_random", vs_random), ("dnad_minus_snps", vs_snps))
    }


def summarise(runs: list[dict]) -> dict:
    ratios = {  # last member's re-measured step time over the first member's and over the dense supernet's
        f"{method}_{ref}": [
            step_ratio([run["dense_step_seconds"] if ref == "dense" else None, *run["remeasured_step_seconds"][method]])
            if ref == "dense" or len(run[method]) > 1
            else None
            for run in runs
        ]
        for method in ("snps", "dnad")
        for ref in ("first", "dense")
    }
    return {**comparisons(runs), "step_time_ratio_last_over_first": ratios}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(values: list[float], scale: float = 100.0, unit: str = "") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m, sd = mean_std(values)
    return f"{scale * m:.2f}{unit}" + (f" ± {scale * sd:.2f}" if len(values) > 1 else "")


def verdict(name: str, d: dict) -> str:
    if not d["mean_std"]:
        return f"- {name} at matched MACs: no matched points."
    m, sd = d["mean_std"]
    return (
        f"- {name} at matched MACs: {100 * m:+.2f} points mean (std {100 * sd:.2f} over {d['points']} points); "
        f"at or above at every point: {'yes' if d['all_at_or_above'] else 'no'}."
    )


def to_markdown(args: argparse.Namespace, runs: list[dict], summary: dict) -> str:
    seeds = [r["seed_network"] for r in runs if r["seed_network"]]
    seed_acc = [s["accuracy"] for s in seeds]
    peer_text = {
        "uniform": f"uniform, {args.epochs} fine-tune epochs per budget",
        "dna": f"dna, one {args.dna_search_epochs}-epoch search, then "
        f"{dna_finetune_epochs(args.epochs, args.dna_search_epochs, len(args.budgets))} fine-tune epochs per budget",
    }
    setup = (
        f"Seeds {[r['seed'] for r in runs]}. Seed network: {args.seed_epochs} epochs, "
        f"{seeds[0]['macs'] if seeds else 0:,} MACs, test accuracy {_ms(seed_acc)}%. Space: {args.cells} cells, "
        f"C = {args.channels}, stem stride {stem_stride(args)}, 4 nodes, ops {args.ops}. "
        f"Search: {args.search_epochs} epochs per run, controller "
        f"{json.dumps(dict(args.x))} (the rest published defaults). Every member and every random cell: "
        f"{scratch_epochs(args)} epochs from scratch (the seed's + the peers'), batch {args.batch_size}, "
        f"{args.optimizer} lr {args.lr}, "
        f"grad clip {args.grad_clip}. "
        f"Peers on the seed: {'; '.join(peer_text[p] for p in args.peers) or 'none'}. "
        f"Data: {load_data(args.data).source}." + _rerun_text(args, runs)
    )
    lines = [
        f"# DNAD / SNPS on {args.data} (teacher and budget reference: {args.model} x{args.width})",
        "",
        setup,
        "",
        "## Members (test accuracy; MACs of one forward pass at batch 1, FLOPs = 2 x MACs)",
        "",
        "| seed | set | member | reason | live pairs | MACs | params | accuracy | step s (in run) | step s (re-run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for method in ("snps", "dnad"):
            for m, t in zip(run[method], run["remeasured_step_seconds"][method]):
                in_run = f"{m['step_seconds']:.3f}" if m["step_seconds"] else "-"
                lines.append(
                    f"| {run['seed']} | {method} | {m['id']} | {m['reason']} | {m['pairs']} | {m['macs']:,} | "
                    f"{m['params']:,} | {percent(m['accuracy'])} | {in_run} | {t:.3f} |"
                )
    lines += [
        "",
        "## Matched MACs (per DNAD member: SNPS = the SNPS set's best member at or below 1.1x its MACs; random = one "
        "random genotype of the same space at or below its MACs)",
        "",
        "| seed | DNAD member | MACs | DNAD | SNPS | random cells (MACs) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in matched(run):
            lines.append(
                f"| {run['seed']} | {r['id']} | {r['macs']:,} | {percent(r['dnad'])} | {percent(r['snps'])} | "
                f"{percent(r['random'])} ({r['random_macs']:,}) |"
            )
    for peer in args.peers:
        lines += [
            "",
            f"## {peer} on the seed (same budgets)",
            "",
            "| seed | budget | MACs | accuracy |",
            "|---|---|---|---|",
        ]
        for run in runs:
            for r in run["peers"].get(peer, []):
                lines.append(f"| {run['seed']} | {r['target']} | {r['macs']:,} | {percent(r['accuracy'])} |")
    ratios = summary["step_time_ratio_last_over_first"]
    lines += [
        "",
        "## Targets",
        "",
        verdict("DNAD - random cells", summary["dnad_minus_random"]),
        verdict("DNAD - SNPS", summary["dnad_minus_snps"]),
        "- Supernet training step time (re-measured), last member over first member and over the dense supernet the "
        "search starts from (target <= 0.5): "
        + "; ".join(f"{k}: {', '.join('-' if v is None else f'{v:.2f}' for v in vals)}" for k, vals in ratios.items())
        + ".",
        "- Dense supernet step seconds (re-measured) per seed: "
        + ", ".join(f"{run['dense_step_seconds']:.3f}" for run in runs if "dense_step_seconds" in run)
        + ".",
        *_timing_shape_lines(runs),
        "",
        "The in-run column is the mean step of the search, alongside whatever else the machine ran; the re-run column "
        "times one training step (median of 5) of the supernet rebuilt at each member's structure, back to back"
        + (" (read back with --collect, after the runs)." if args.collect else ", right after the run."),
        "",
    ]
    return "\n".join(lines)


def _rerun_text(args: argparse.Namespace, runs: list[dict]) -> str:
    rerun = getattr(args, "peers_rerun", None)
    if not rerun:
        return ""
    accs = ", ".join(percent(r.get("peers_seed_accuracy")) for r in runs)
    return (
        f" The peers were measured again on {rerun['date']} (netfit {rerun['netfit']}, `--rerun-peers`), the sets "
        f"left as they were, each on its seed retrained by the same recipe with that netfit, which need not be the "
        f"sets' teacher bit for bit (its test accuracy per seed: {accs})."
    )


def _timing_shape_lines(runs: list[dict]) -> list[str]:
    """Per seed: the step times measured on ``--timing-shape`` input, dense supernet then members in order."""
    timed = [run for run in runs if "timing_shape_step_seconds" in run]
    if not timed:
        return []
    shape = "x".join(str(d) for d in timed[0]["timing_shape"])
    lines = [f"- Step seconds on {shape} input, batch as above (dense supernet; then each set's members in order):"]
    for run in timed:
        steps = run["timing_shape_step_seconds"]
        sets = "; ".join(f"{m} " + ", ".join(f"{t:.4f}" for t in steps[m]) for m in ("snps", "dnad") if steps[m])
        last = [steps[m][-1] / steps["dense"] for m in ("snps", "dnad") if steps[m]]
        ratio = ", ".join(f"{r:.2f}" for r in last)
        lines.append(f"  seed {run['seed']}: dense {steps['dense']:.4f}; {sets} (last / dense: {ratio})")
    return lines
