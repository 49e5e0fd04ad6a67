"""report.md and front.png from a run's result.json."""

from __future__ import annotations

from pathlib import Path

from .budget import format_metric
from .cost import format_count
from .fileio import atomic_write, atomic_write_text

CONVENTION = (
    "MACs = multiply-accumulates of one forward pass at batch 1 (conv, linear, matmul; BN/activations/pooling/adds "
    "not counted); FLOPs = 2 x MACs."
)
SELECTION = (
    "Accuracy: top-1 on the held-out test split, which only reports. Selected within a budget: the candidate with the "
    "best validation accuracy within it (a flagged one only when no sound one fits)."
)
MARKERS = "osD^vP*Xh<>"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"  # None: a result.json from before the column


def budget_lines(result: dict) -> list[str]:
    """With several budgets, one line per budget: its limit and the candidate selected within it (or none);
    nothing for a result.json written before budgets named their selection."""
    budgets = result.get("budgets", [])
    if len(budgets) < 2 or any("selected" not in b for b in budgets):
        return []
    return [""] + [
        f"- {b['spec']!r} = {format_metric(b['limit'], b['metric'])}: {b.get('selected') or 'no candidate within it'}"
        for b in budgets
    ]


def render_markdown(result: dict) -> str:
    """The report: title, settings, the candidate table (seed first), the convention."""
    budget = result["budget"]
    lines = [
        f"# netfit {result['method']}: {result['model']} on {result['data']}",
        "",
        f"Budget {budget['spec']!r} = {format_metric(budget['limit'], budget['metric'])}. "
        f"Selected: **{result.get('selected') or 'none within budget'}**.",
        *budget_lines(result),
        "",
        "| id | MACs | FLOPs | params | accuracy | val accuracy | within budget | Pareto front |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seed = result["seed"]
    lines.append(
        f"| seed | {format_count(seed['macs'])} | {format_count(seed['flops'])} | "
        f"{format_count(seed['params'])} | {100 * seed['accuracy']:.2f}% | | | |"
    )
    for row in result["candidates"]:
        name = f"**{row['id']}** (selected)" if row["id"] == result.get("selected") else row["id"]
        name += " (flagged)" if row.get("warning") else ""
        lines.append(
            f"| {name} | {format_count(row['macs'])} | {format_count(row['flops'])} | "
            f"{format_count(row['params'])} | {100 * row['accuracy']:.2f}% | {_percent(row.get('val_accuracy'))} | "
            f"{'yes' if row['within_budget'] else 'no'} | {'yes' if row['id'] in result.get('pareto', []) else ''} |"
        )
    flagged = [row for row in result["candidates"] if row.get("warning")]
    if flagged:
        lines += ["", "**Flagged candidates** (never selected over a sound one):", ""]
        lines += [f"- {row['id']}: {row['warning']}" for row in flagged]
    lines += ["", SELECTION, "", CONVENTION, ""]
    settings = result.get("settings", {})
    if settings:
        lines += ["## Settings", ""]
        lines += [f"- {key}: `{settings[key]}`" for key in sorted(settings) if key not in ("train", "data_source")]
        if "data_source" in settings:
            lines.append(f"- data: {settings['data_source'].get('source', '')}")
        if "train" in settings:
            lines.append(f"- training: `{settings['train']}`")
    if result.get("timing"):
        lines += ["", "## Timing", "", *[f"- {k}: {v}" for k, v in result["timing"].items()]]
    return "\n".join(lines) + "\n"


def plot_fronts(results: list[dict], path: str | Path, *, title: str | None = None) -> Path:
    """Accuracy (%) vs MACs: each run its own marker, its front as a step line, the seed a star, the budget a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    all_macs = []
    for k, result in enumerate(results):
        rows = result["candidates"]
        macs = [r["macs"] for r in rows]
        accs = [100 * r["accuracy"] for r in rows]
        all_macs += [*macs, result["seed"]["macs"]]
        color = f"C{k % 10}"
        ax.scatter(macs, accs, marker=MARKERS[k % len(MARKERS)], color=color, label=result["method"], zorder=3)
        front = sorted((r["macs"], 100 * r["accuracy"]) for r in rows if r["id"] in result.get("pareto", []))
        if front:
            ax.step(*zip(*front), where="post", color=color, alpha=0.6)
        ax.scatter(
            [result["seed"]["macs"]],
            [100 * result["seed"]["accuracy"]],
            marker="*",
            s=180,
            color=color,
            edgecolor="black",
            zorder=4,
            label=f"seed ({result['model']})" if k == 0 else None,
        )
        if result["budget"]["metric"] == "macs":
            ax.axvline(result["budget"]["limit"], color=color, linestyle="--", alpha=0.5)
    if all_macs and max(all_macs) > 10 * max(1, min(all_macs)):
        ax.set_xscale("log")
    ax.set_xlabel("MACs (batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"{results[0]['model']} on {results[0]['data']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md and front.png into ``out_dir``."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", render_markdown(result))
    return {"report": out_dir / "report.md", "plot": plot_fronts([result], out_dir / "front.png")}
