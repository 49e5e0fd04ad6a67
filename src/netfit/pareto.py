"""Pareto fronts of (cost, accuracy): lower cost and higher accuracy are better."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(costs: Sequence[float], accs: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points, sorted by cost.

    A point is dominated when another costs no more, is at least as accurate, and is strictly better in one of
    the two. Exact duplicates do not dominate each other, so both stay.

    Example:
        >>> pareto_front([1, 2, 3], [0.5, 0.4, 0.9])
        [0, 2]
    """
    if len(costs) != len(accs):
        raise ValueError("costs and accs must have the same length")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accs[i]))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
        elif front and costs[i] == costs[front[-1]] and accs[i] == accs[front[-1]]:
            front.append(i)  # an exact duplicate of a front point
    return front


def hypervolume_2d(costs: Sequence[float], accs: Sequence[float], ref_cost: float, ref_acc: float = 0.0) -> float:
    """Area dominated by the points inside the box [0, ref_cost] x [ref_acc, 1]: larger is a better front."""
    volume, prev_acc = 0.0, ref_acc
    for i in pareto_front(costs, accs):
        if costs[i] > ref_cost or accs[i] <= prev_acc:
            continue
        volume += (ref_cost - costs[i]) * (accs[i] - prev_acc)
        prev_acc = accs[i]
    return volume
