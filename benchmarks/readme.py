"""Regenerate the README's benchmark section from the committed suite results.

    python -m benchmarks.readme            # rewrites the part of README.md between the two markers

Per case of every committed suite (``mnist``, and ``gpu`` when it was run): the seed network, the headline table
(DNA against the best other netfit entry and the best peer at every budget), a link to the full table and the
plot. The honest reading stays hand-written below the generated part.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import RESULTS
from .suite_report import _headline, by_case

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->"
SUITES = ("mnist", "gpu")


def section(results: Path = RESULTS) -> str:
    lines = []
    for name in SUITES:
        path = results / f"suite_{name}.json"
        if not path.exists():
            continue
        payload = json.loads(path.read_text())
        env = payload["environment"]
        seeds = sorted({r["seed"] for r in payload["runs"]})
        lines += [
            f"Suite `{name}` (`python -m benchmarks.run {name}`; {env['device']}, torch {env['torch']}, seeds "
            f"{seeds}; [full tables](benchmarks/results/suite_{name}.md)):",
            "",
            f"![accuracy vs MACs, suite {name}](benchmarks/results/suite_{name}.png)",
        ]
        for case, runs, table, seed_acc in by_case(payload):
            seed = runs[0]["seed_network"]
            lines += [
                "",
                f"**{case.model} (width {case.width:g}) on {case.data}**: seed {seed['macs']:,} MACs, "
                f"{seed_acc[0]:.2f} ± {seed_acc[1]:.2f}% test accuracy, {len(runs)} seed(s); "
                f"{case.epochs} adaption epochs per budget for every entry.",
                "",
                *_headline(table, seed_acc[0]),
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md needs the markers {START} and {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{section()}\n{END}{tail}")
    print(f"rewrote the benchmark section of {README}")


if __name__ == "__main__":
    main()
