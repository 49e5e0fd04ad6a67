"""Pareto fronts, hypervolume, and the report/plot written from result.json."""

import itertools
import random

import pytest

from netfit.pareto import hypervolume_2d, pareto_front
from netfit.report import CONVENTION, plot_fronts, render_markdown, write_report


def brute_force_front(costs, accs):
    def dominated(i):
        return any(
            costs[j] <= costs[i] and accs[j] >= accs[i] and (costs[j] < costs[i] or accs[j] > accs[i])
            for j in range(len(costs))
        )

    return sorted((i for i in range(len(costs)) if not dominated(i)), key=lambda i: (costs[i], -accs[i]))


@pytest.mark.parametrize("seed", range(20))
def test_front_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    costs = [rng.randint(1, 10) for _ in range(n)]
    accs = [rng.randint(0, 10) / 10 for _ in range(n)]
    assert sorted(pareto_front(costs, accs)) == sorted(brute_force_front(costs, accs))


def test_hypervolume():
    assert hypervolume_2d([1, 2], [0.5, 0.8], ref_cost=3) == pytest.approx(2 * 0.5 + 1 * 0.3)
    assert hypervolume_2d([], [], ref_cost=3) == 0.0
    assert hypervolume_2d([5], [0.9], ref_cost=3) == 0.0  # beyond the reference cost
    # adding a dominated point changes nothing; adding a better one increases the volume
    base = hypervolume_2d([1, 2], [0.5, 0.8], 3)
    assert hypervolume_2d([1, 2, 2.5], [0.5, 0.8, 0.6], 3) == pytest.approx(base)
    assert hypervolume_2d([1, 2, 0.5], [0.5, 0.8, 0.6], 3) > base


def result(method="uniform", accs=(0.9, 0.95)):
    rows = [
        {
            "id": f"c{i}",
            "arch": {},
            "macs": 1000 * (i + 1),
            "flops": 2000 * (i + 1),
            "params": 50 * (i + 1),
            "accuracy": a,
            "within_budget": i == 0,
            "weights": f"c{i}",
        }
        for i, a in enumerate(accs)
    ]
    return {
        "netfit_version": "0.1.0",
        "method": method,
        "model": "cnn_small",
        "data": "digits",
        "budget": {"spec": "50%", "metric": "macs", "limit": 1500.0},
        "seed": {"macs": 3000, "flops": 6000, "params": 200, "accuracy": 0.97},
        "candidates": rows,
        "pareto": ["c0", "c1"],
        "selected": "c0",
        "settings": {"epochs": 1},
    }


def test_markdown_lists_everything():
    text = render_markdown(result())
    assert all(cid in text for cid in ("seed", "c0", "c1")) and CONVENTION in text
    assert "**c0** (selected)" in text and "97.00%" in text


def test_report_and_plots_are_written(tmp_path):
    paths = write_report(result(), tmp_path)
    assert paths["report"].read_text().startswith("# netfit uniform")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    combined = plot_fronts([result(), result("random", (0.92, 0.93))], tmp_path / "both.png")
    assert combined.stat().st_size > 1000


def test_front_ordering_invariant():
    for costs, accs in itertools.product([[3, 1, 2]], [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]):
        front = pareto_front(costs, accs)
        assert [costs[i] for i in front] == sorted(costs[i] for i in front)
