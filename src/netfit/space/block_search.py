"""Exact constrained top-k search over a product of per-block candidate tables.

Pick one candidate per block so that the summed loss is least and the summed cost is within a limit, and return
the k best such combinations. The search is a depth-first branch-and-bound over the blocks, candidates tried in
order of loss, with two exact bounds:

* the least summed loss of the remaining blocks when cost is ignored (ends a block's loop: later candidates
  only cost more loss), and
* a dynamic-programming table over DISCRETISED cost: the least summed loss of the remaining blocks whose
  costs, each rounded DOWN to the grid, fit the remaining budget rounded down. Rounding down relaxes the
  constraint, so the table never over-estimates (the bound stays exact); the real costs are summed exactly, so
  every returned combination truly fits.

The result equals brute force over the whole product (the same combinations in the same order; ties in loss are
broken by the candidate indices), at a cost far below it: spaces of 10^9 and more take milliseconds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import NetfitError

GRID = 2048  # cells of the discretised cost of the bound table


@dataclass(frozen=True, order=True)
class Combination:
    """One candidate per block (indices into each block's table), with its summed loss and cost."""

    loss: float
    choices: tuple[int, ...]
    cost: float = field(compare=False)


@dataclass
class SearchStats:
    nodes: int = 0  # partial combinations expanded


def _check(losses: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], k: int) -> None:
    if not losses or len(losses) != len(costs):
        raise NetfitError("the search needs one loss table and one cost table per block")
    for b, (ls, cs) in enumerate(zip(losses, costs)):
        if not len(ls) or len(ls) != len(cs):
            raise NetfitError(f"block {b} has {len(ls)} losses and {len(cs)} costs; each needs >= 1 and equal counts")
        if not all(math.isfinite(v) for v in (*ls, *cs)) or min(cs) < 0:
            raise NetfitError(f"block {b} has a non-finite loss or cost, or a negative cost")
    if k < 1:
        raise NetfitError(f"top-k needs k >= 1, got {k}")


def _bound_tables(costs: list[np.ndarray], losses: list[np.ndarray], limit: float, grid: int) -> list[np.ndarray]:
    """tables[b][q]: least loss of blocks b.. whose floor(cost / step) sum to <= q (inf: none fits)."""
    step = limit / grid if limit > 0 else 1.0
    tables = [np.zeros(grid + 1)]
    for cs, ls in zip(reversed(costs), reversed(losses)):
        nxt = tables[0]
        cells = np.minimum(np.floor(cs / step), grid + 1).astype(np.int64)
        best = np.full(grid + 2, np.inf)
        np.minimum.at(best, cells, ls)  # the least loss per cost cell
        table = np.full(grid + 1, np.inf)
        for q in np.flatnonzero(np.isfinite(best[: grid + 1])):
            table[q:] = np.minimum(table[q:], best[q] + nxt[: grid + 1 - q])
        tables.insert(0, table)
    return tables


def top_k(
    losses: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    limit: float,
    k: int = 1,
    grid: int = GRID,
    stats: SearchStats | None = None,
) -> list[Combination]:
    """The ``k`` combinations of least summed loss with summed cost <= ``limit``, best first (fewer when fewer
    fit; empty when none does).

    Example:
        >>> top_k([[0.3, 0.1], [0.2, 0.5]], [[1, 4], [1, 1]], limit=3, k=2)
        [Combination(loss=0.5, choices=(0, 0), cost=2.0), Combination(loss=0.8, choices=(0, 1), cost=2.0)]
    """
    _check(losses, costs, k)
    cs = [np.asarray(block, dtype=np.float64) for block in costs]
    ls = [np.asarray(block, dtype=np.float64) for block in losses]
    if sum(float(block.min()) for block in cs) > limit:
        return []
    step = limit / grid if limit > 0 else 1.0
    tables = _bound_tables(cs, ls, limit, grid)
    orders = [np.argsort(block, kind="stable") for block in ls]  # by loss; ties by index
    ls = [block[order] for block, order in zip(ls, orders)]
    cs = [block[order] for block, order in zip(cs, orders)]
    n = len(ls)
    best: list[Combination] = []
    stats = stats or SearchStats()
    chosen: list[int] = []

    def bar() -> float:  # a bound above this cannot enter the top k (a little slack: sums in other orders)
        worst = best[-1].loss if len(best) == k else math.inf
        return worst + 1e-9 * max(1.0, abs(worst))

    def visit(b: int, loss: float, cost: float) -> None:
        stats.nodes += 1
        totals, spent = loss + ls[b], cost + cs[b]  # summed in block order, as brute force sums them
        fits = spent <= limit
        if b == n - 1:  # the last block: every fitting candidate is a complete combination
            for c in np.flatnonzero(fits):
                if totals[c] > bar():
                    break  # later ones have larger losses
                bisect.insort(best, Combination(float(totals[c]), (*chosen, int(orders[b][c])), float(spent[c])))
                del best[k:]
            return
        table = tables[b + 1]
        cells = np.clip(np.floor((limit - spent) / step), 0, grid).astype(np.int64)
        survivors = np.flatnonzero(fits & (totals + table[cells] <= bar()))
        free = table[grid]  # the least loss of the remaining blocks at any cost
        for c in survivors:
            if totals[c] + free > bar():
                break
            if totals[c] + table[cells[c]] > bar():
                continue
            chosen.append(int(orders[b][c]))
            visit(b + 1, float(totals[c]), float(spent[c]))
            chosen.pop()

    visit(0, 0.0, 0.0)
    return best


def space_size(tables: Sequence[Sequence[object]]) -> int:
    """The number of combinations of one candidate per block."""
    return math.prod(len(t) for t in tables)


__all__ = ["GRID", "Combination", "SearchStats", "space_size", "top_k"]
