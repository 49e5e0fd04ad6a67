"""The method interface: every search method (dna, dnad, blockwise, spider, odn, uniform, random) implements it.

A method receives the trained seed, the data, the resolved budgets and a ``Run`` (which owns training,
checkpoints, logging, cost measurement and seeded randomness) and returns trained candidates. The pipeline
(``netfit.api.adapt``) measures every candidate with the one cost model, evaluates it, builds the Pareto front
and writes the run directory, so methods never count costs for the report or write files themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import nn

from .._registry import Registry
from ..budget import Budget

if TYPE_CHECKING:
    from ..data import DataBundle
    from ..run import Run


@dataclass
class Seed:
    """The network a method starts from, already trained, with its measured cost and accuracy."""

    model: nn.Module
    name: str
    input_shape: tuple[int, ...]
    macs: int
    params: int
    accuracy: float
    metric_value: float  # the seed's value of the budget metric (MACs, params, latency ms or memory bytes)


@dataclass
class Target:
    """One budget to meet, resolved to an absolute limit of ``budget.metric``."""

    budget: Budget
    limit: float

    @property
    def metric(self) -> str:
        return self.budget.metric


@dataclass
class Candidate:
    """A trained network proposed by a method.

    Attributes:
        id: unique within the run, used as the weights folder name ("w50-uniform", "d3"...).
        model: the trained, plain nn.Module (no masks or supernet code).
        target: the budget this candidate was searched for (None for budget-free candidates, e.g. ODN depths).
        info: method-specific JSON-able facts (width multiplier, depth, search score...) copied into result.json.
    """

    id: str
    model: nn.Module
    target: Target | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """What every method implements. Register an implementation with ``@METHODS.register(name)``."""

    name: ClassVar[str]
    description: ClassVar[str]

    def search(self, seed: Seed, data: DataBundle, targets: list[Target], run: Run) -> list[Candidate]:
        """Return trained candidates for the targets; must be deterministic given ``run.seed`` (for resume)."""
        ...


METHODS: Registry[type] = Registry("method")
