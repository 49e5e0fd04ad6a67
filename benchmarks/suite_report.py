"""The suite's report: per case and budget, every entry's accuracy and cost over seeds (markdown) and the
accuracy-vs-MACs plot. Input: the payload ``benchmarks.run`` writes to suite_<name>.json.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .common import mean_std
from .suite import Case


def summarize(payload: dict) -> dict:
    """Mean and spread over seeds per case, budget and entry."""
    table: dict = {}
    for run in payload["runs"]:
        case = Case(**run["case"]).key
        for row in run["rows"]:
            table.setdefault(case, {}).setdefault(row["budget_pct"], {}).setdefault(row["entry"], []).append(row)
    return table


def by_case(payload: dict) -> list[tuple[Case, list[dict], dict, tuple[float, float]]]:
    """Per case: its runs (one per seed), its ``summarize`` table and the seed accuracy in % (mean, std)."""
    runs_by_case: dict = {}
    for run in payload["runs"]:
        runs_by_case.setdefault(Case(**run["case"]).key, []).append(run)
    out = []
    for key, table in summarize(payload).items():
        runs = runs_by_case[key]
        seed_acc = mean_std([100 * r["seed_network"]["accuracy"] for r in runs])
        out.append((Case(**runs[0]["case"]), runs, table, seed_acc))
    return out


def to_markdown(payload: dict) -> str:
    s, env = payload["settings"], payload["environment"]
    lines = [
        f"# Benchmark suite `{payload['suite']}`",
        "",
        f"Seeds {list(s['seeds'])} (each case lists its own). Per case and seed, one seed network is trained "
        "and every entry starts from it, on the same data split, with the same budgets and epochs: each "
        "adapted network gets the case's adaption epochs; `uniform-scratch` trains the uniform architecture "
        "from scratch for seed + adaption epochs; DNA runs ONE search for all budgets and fine-tunes each "
        "result for the adaption epochs minus its search epochs / number of budgets (so its total epochs do "
        "not exceed anyone's). Peers prune with their own importance or search, then netfit fine-tunes them "
        "like its own methods and measures them with its own cost model. "
        f"Batch {s['batch_size']}, SGD lr {s['lr']} (cosine).",
        f"Hardware: {env['device']}, {env['cpu_threads']} threads; torch {env['torch']}. {env['cost_convention']}.",
        *[f"Note: {n}." for n in s.get("notes", [])],
    ]
    for c, runs, table, seed_acc in by_case(payload):
        net = runs[0]["seed_network"]
        lines += [
            "",
            f"## {c.key}",
            "",
            f"Seed network: {net['macs']:,} MACs, {net['params']:,} params, trained {c.seed_epochs} epochs, test "
            f"accuracy {seed_acc[0]:.2f} ± {seed_acc[1]:.2f}% (seeds {[r['seed'] for r in runs]}). "
            f"Adaption: {c.epochs} epochs per budget; DNA: {c.dna_search_epochs}-epoch search + "
            f"{c.dna_finetune_epochs} fine-tune epochs per budget."
            + (f" Data: {runs[0]['data_split']}." if runs[0].get("data_split") else ""),
            "",
            *_headline(table, seed_acc[0]),
            "",
            "| budget | entry | test accuracy % (mean ± std) | vs seed | inherited, val % | MACs | params | n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for budget in sorted(table, reverse=True):
            ranked = sorted(table[budget].items(), key=lambda kv: -mean_std([r["accuracy"] for r in kv[1]])[0])
            for entry, rows in ranked:
                acc = mean_std([100 * r["accuracy"] for r in rows])
                macs = sum(r["macs"] for r in rows) / len(rows)
                params = sum(r["params"] for r in rows) / len(rows)
                ok = "" if all(r["within_budget"] for r in rows) else " (over budget!)"
                flagged = sum(1 for r in rows if r.get("warning"))
                note = f" ({flagged} flagged)" if flagged else ""
                lines.append(
                    f"| {budget:g}% | {entry} | {acc[0]:.2f} ± {acc[1]:.2f}{note} | {acc[0] - seed_acc[0]:+.2f} | "
                    f"{_inherited(rows)} | {macs:,.0f}{ok} | {params:,.0f} | {len(rows)} |"
                )
        lines += [
            "",
            "Wall time of each entry's whole run (all budgets, incl. fine-tuning) / training the seed once:",
            "",
        ]
        lines += ["| entry | run time / seed training |", "|---|---|"]
        for entry, per_seed in _run_times(runs).items():
            lines.append(f"| {entry} | {mean_std(per_seed)[0]:.2f}x |")
        lines += _dna_over_uniform(runs)
        epoch_ratios = [r["dna_epoch_ratio"] for r in runs if r["dna_epoch_ratio"]]
        if epoch_ratios:
            lines.append(f"\nDNA supernet search epoch / dense seed epoch: {mean_std(epoch_ratios)[0]:.2f}x.")
        steps = [r["dna_step_ratios"] for r in runs if r.get("dna_step_ratios")]
        if steps:
            mean = {k: mean_std([step[k] for step in steps])[0] for k in steps[0] if k != "dense_seed"}
            lines.append(
                f"DNA step time / dense seed step (batch {s['batch_size']}, CPU, timed side by side in one process): "
                + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in mean.items())
                + "."
            )
        carried = sorted({e for r in runs for e in r.get("carried_over", [])})
        if carried:
            lines.append(
                f"\nCarried over from an earlier invocation on the same seed networks (made with the code of that "
                f"time): {', '.join(f'`{e}`' for e in carried)}."
            )
        failed: dict = {}
        for r in runs:
            for key, message in r["failed"].items():
                name, _, budget = key.partition("@")
                failed.setdefault((name, message), set()).add(budget or "all")
        if failed:
            lines += ["", "Budgets an entry could not reach (the tool's or netfit's last message):", ""]
            for (name, message), budgets in sorted(failed.items()):
                shown = ", ".join(sorted(budgets, key=lambda b: -float(b) if b != "all" else 0))
                lines.append(f"- `{name}` at {shown}{'%' if 'all' not in budgets else ''}: {message}")
    return "\n".join(lines) + "\n"


def _inherited(rows: list[dict]) -> str:
    """Mean validation accuracy of the cut-out networks after batch-norm recalibration, before fine-tuning
    ("-" for networks trained from scratch and for runs made before it was recorded)."""
    values = [100 * r["val_acc_inherited"] for r in rows if r.get("val_acc_inherited") is not None]
    return f"{mean_std(values)[0]:.1f}" if values else "-"


def _dna_over_uniform(runs: list[dict]) -> list[str]:
    """DNA's whole run over uniform's, per seed then averaged, in wall time and (where logged) process CPU time,
    which unlike wall time does not count other jobs sharing the machine."""
    shown = []
    for clock, key in (("wall", "search_over_seed"), ("CPU", "cpu_seconds")):
        times = _per_seed(runs, key)
        dna, uniform = times.get("dna", {}), times.get("uniform", {})
        ratios = [dna[s] / uniform[s] for s in dna if dna[s] is not None and uniform.get(s) is not None]
        if ratios:
            shown.append(f"{clock} {statistics.fmean(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return [f"\nDNA's whole run / uniform's (per seed, mean and range): {', '.join(shown)}."] if shown else []


def _run_times(runs: list[dict]) -> dict[str, list[float]]:
    """Per entry, per seed: its whole run time / seed training."""
    return {entry: list(seeds.values()) for entry, seeds in _per_seed(runs, "search_over_seed").items()}


def _per_seed(runs: list[dict], key: str) -> dict[str, dict[int, float | None]]:
    """Per entry and seed: the rows' ``key`` (a whole run's time) summed over the entry's run directories (an
    entry whose all-budgets run failed ran each budget alone); None where a run lacks it."""
    per_run: dict = {}
    for run in runs:
        for row in run["rows"]:
            per_run.setdefault(row["entry"], {}).setdefault(run["seed"], {})[row.get("run")] = row.get(key)
    return {
        entry: {seed: None if None in dirs.values() else sum(dirs.values()) for seed, dirs in seeds.items()}
        for entry, seeds in per_run.items()
    }


def _headline(table: dict, seed_acc: float) -> list[str]:
    """Per budget: DNA against the best other netfit entry and the best peer (means over seeds, with spread)."""

    def best(rows_by_entry: dict, keep) -> tuple[str, float, float, int] | None:
        scored = [
            (e, *mean_std([100 * r["accuracy"] for r in rows]), len(rows))
            for e, rows in rows_by_entry.items()
            if keep(e)
        ]
        return max(scored, key=lambda t: t[1]) if scored else None

    lines = [
        "| budget | dna | best other netfit entry | best peer | dna - best other | best peer vs seed |",
        "|---|---|---|---|---|---|",
    ]
    for budget in sorted(table, reverse=True):
        rows = table[budget]
        dna = best(rows, lambda e: e == "dna")
        ours = best(rows, lambda e: ":" not in e and e != "dna")
        peer = best(rows, lambda e: ":" in e)
        others = [t for t in (ours, peer) if t]
        top = max(others, key=lambda t: t[1]) if others else None

        def cell(t):  # one seed has no spread: say so rather than print "± 0.00"
            if not t:
                return "-"
            spread = f"± {t[2]:.2f}" if t[3] > 1 else "(1 seed)"
            return f"{t[0] + ' ' if t[0] != 'dna' else ''}{t[1]:.2f} {spread}"

        gap = f"{dna[1] - top[1]:+.2f}" if dna and top else "-"
        lost = f"{peer[1] - seed_acc:+.2f}" if peer else "-"
        lines.append(f"| {budget:g}% | {cell(dna)} | {cell(ours)} | {cell(peer)} | {gap} | {lost} |")
    return lines


def plot(payload: dict, path: Path) -> None:
    """Accuracy vs MACs per case (mean over seeds), one marker per entry, the seed as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = summarize(payload)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.2), squeeze=False)
    markers = "os^vD<>phX*P+x"
    labels = sorted({e for t in tables.values() for b in t.values() for e in b})
    for ax, (case, table) in zip(axes[0], tables.items()):
        for k, entry in enumerate(labels):
            points = [
                (sum(r["macs"] for r in rows) / len(rows), 100 * sum(r["accuracy"] for r in rows) / len(rows))
                for b in table
                if (rows := table[b].get(entry))
            ]
            if points:
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, marker=markers[k % len(markers)], lw=0.8, ms=5, label=entry)
        seeds = [r["seed_network"] for r in payload["runs"] if Case(**r["case"]).key == case]
        ax.plot([seeds[0]["macs"]], [100 * sum(s["accuracy"] for s in seeds) / len(seeds)], "k*", ms=12, label="seed")
        ax.set_xscale("log")
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("MACs (batch 1)")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
