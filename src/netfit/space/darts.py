"""The shrinking DARTS cell supernet of DNAD/SNPS: node mixing, sparsity, permanent deletion and the controller.

Every intermediate node of every cell mixes ALL its (input state, operation) pairs with its own weights
w = ReLU(theta) / sum ReLU(theta) (theta starts at 2.0; cells share nothing). The sparsity
S = sum log(1 + 50 w) over all pairs rewards putting a node's weight on few pairs. A pair whose w falls below the
threshold (0.01) is deleted for good: its operation module is removed from the network, so it is no longer run,
trained or counted, and the supernet gets cheaper as it shrinks. Each node keeps an ``alive`` mask buffer, so a
checkpoint of a shrunken supernet loads into a freshly built dense one (the missing operations are deleted first).

``ShrinkController`` is the paper's adaptive controller: an EMA of deletions per step steers the sparsity weight
gamma, and a stretch of ``t_max`` steps at full pressure without deletions is a plateau (one Pareto member).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..cost import count_cost
from ..models.cell_ops import make_op
from ..models.darts import DartsNet, Node, darts_arch, dense_genotype, pair_key

THETA_INIT = 2.0


class MixedNode(Node):
    """A node of the supernet: all candidate pairs, their logits ``theta`` and the ``alive`` mask."""

    def __init__(self, ndim: int, channels: int, pairs, reduction: bool) -> None:
        super().__init__(ndim, channels, pairs, reduction)
        self.all_pairs = list(self.pairs)
        self.theta = nn.Parameter(torch.full((len(self.all_pairs),), THETA_INIT))
        self.register_buffer("alive", torch.ones(len(self.all_pairs), dtype=torch.bool))
        # each pair's factor in the sparsity sum (1: the paper's plain count); rebuilt from costs, never saved
        self.register_buffer("sparsity_weight", torch.ones(len(self.all_pairs)), persistent=False)
        self.live_index = list(range(len(self.all_pairs)))  # positions of ``pairs`` in ``all_pairs``
        self.register_load_state_dict_pre_hook(self._match_alive)

    def mixing(self) -> torch.Tensor:
        """w over all pairs (0 for deleted ones); an all-zero node (every theta <= 0) gives all zeros."""
        r = torch.relu(self.theta) * self.alive
        return r / r.sum().clamp_min(1e-12)

    def delete(self, index: int) -> None:
        """Remove pair ``index`` (into ``all_pairs``) for good: its module is dropped, it never runs again."""
        pair = self.all_pairs[index]
        self.alive[index] = False
        self.pairs.remove(pair)
        self.live_index.remove(index)
        del self.ops[pair_key(pair)]

    def _match_alive(self, _module, state_dict, prefix, *_) -> None:
        # a checkpoint taken after deletions: delete the same pairs here so its keys fit this module
        saved = state_dict.get(prefix + "alive")
        if saved is not None and saved.shape == self.alive.shape:
            for i in torch.nonzero(self.alive & ~saved.to(self.alive.device)).flatten().tolist():
                self.delete(i)

    def forward(self, states: list[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
        w = self.mixing() if weights is None else weights
        return super().forward(states, [w[i] for i in self.live_index])


class CellSupernet(DartsNet):
    """The dense cell network with a ``MixedNode`` per node; forward mixes every live pair by its weight."""

    def __init__(self, arch: dict, input_shape: tuple[int, ...]) -> None:
        super().__init__(arch, MixedNode)
        self.input_shape = tuple(input_shape)
        self.stage_outputs: list[torch.Tensor] = []
        self._pair_costs: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.stage_outputs = self.forward_stages(x)
        return logits

    def nodes(self) -> list[MixedNode]:
        return [node for cell in self.cells for node in cell.nodes]

    def sparsity(self) -> torch.Tensor:
        """S = sum over all pairs of c log(1 + 50 w) (differentiable in theta); c = 1 unless ``weigh_sparsity``."""
        return sum((node.sparsity_weight * torch.log1p(SPARSITY_SCALE * node.mixing())).sum() for node in self.nodes())

    def weigh_sparsity(self, by: str) -> None:
        """Weigh each pair's sparsity term by its ``macs`` or ``params`` over the mean pair's (floored at
        ``SPARSITY_FLOOR``, so a free pair such as a skip still counts a little), or not at all (``pairs``, the
        paper's S). The plain count treats a free skip like a convolution, so the search deletes skips that cost
        nothing; weighted, the pressure falls on what the budget counts, and the costliest operation goes first
        everywhere (better on mnist1d_hard, worse on MNIST-10k: docs/methods/dnad.md)."""
        if by not in SPARSITY_COSTS:
            raise ValueError(f"sparsity cost {by!r}: expected one of {', '.join(SPARSITY_COSTS)}")
        _, pairs = self.pair_table()
        mean = sum(cost[by] for cost in pairs.values()) / len(pairs) if by != "pairs" else 0.0
        for i, cell in enumerate(self.cells):
            for k, node in enumerate(cell.nodes):
                weights = [max(SPARSITY_FLOOR, pairs[(i, k, p)][by] / mean) if mean else 1.0 for p in node.all_pairs]
                node.sparsity_weight.copy_(torch.tensor(weights))

    def live_pairs(self) -> int:
        return sum(len(node.pairs) for node in self.nodes())

    def total_pairs(self) -> int:
        return sum(len(node.all_pairs) for node in self.nodes())

    @torch.no_grad()
    def delete_below(self, threshold: float) -> list[list]:
        """Delete every live pair whose weight is below ``threshold``; returns [cell, node, input, op] of each."""
        deleted = []
        for i, cell in enumerate(self.cells):
            for k, node in enumerate(cell.nodes):
                w = node.mixing()
                for index in torch.nonzero(node.alive & (w < threshold)).flatten().tolist():
                    deleted.append([i, k, *node.all_pairs[index]])
                    node.delete(index)
        return deleted

    def exhausted(self) -> bool:
        """Nothing left to delete: every node has at most one pair (a lone pair has w = 1)."""
        return all(len(node.pairs) <= 1 for node in self.nodes())

    def plain_arch(self) -> dict:
        """The arch spec of the current genotype as a plain ``darts`` network."""
        return {"family": "darts", **self.arch, "reductions": list(self.reductions), "genotype": self.genotype()}

    def pair_table(self) -> tuple[dict[str, int], dict]:
        """(MACs and params of the network without pairs, {(cell, node, pair): that pair's MACs and params})."""
        if self._pair_costs is None:
            self._pair_costs = _pair_costs(self)
        return self._pair_costs

    def cost(self) -> dict[str, int]:
        """MACs and params of the current genotype's plain network, from a per-pair table measured once with
        netfit's cost model (costs add up over pairs; tested against counting the built network)."""
        base, pairs = self.pair_table()
        total = dict(base)
        for i, cell in enumerate(self.cells):
            for k, node in enumerate(cell.nodes):
                for p in node.pairs:
                    for metric in total:
                        total[metric] += pairs[(i, k, p)][metric]
        return total


SPARSITY_SCALE = 50.0
SPARSITY_COSTS = ("pairs", "macs", "params")
SPARSITY_FLOOR = 0.1


def build_supernet(
    input_shape: tuple[int, ...],
    num_classes: int,
    ops: list[str],
    cells: int = 8,
    channels: int = 16,
    nodes: int = 4,
    stem_stride: int = 1,
) -> CellSupernet:
    """The dense supernet: ``cells`` cells of ``nodes`` nodes, each node mixing every earlier state x every op;
    ``stem_stride`` 2 halves the maps the cells run on (a quarter of their MACs on 2-D input)."""
    arch = darts_arch(
        dense_genotype(cells, nodes, ops),
        num_classes=num_classes,
        in_chans=input_shape[0],
        ndim=len(input_shape) - 1,
        channels=channels,
        stem_stride=stem_stride,
    )
    return CellSupernet(arch, input_shape)


@torch.no_grad()
def _state_shapes(net: DartsNet, input_shape: tuple[int, ...]) -> list[list[tuple[int, ...]]]:
    """Per cell, the shape (batch 1) of each state its nodes read (the two inputs, then each node's output)."""
    shapes: list[list[tuple[int, ...]]] = []
    was_training = net.training
    net.eval()
    hooks = []
    for cell in net.cells:
        seen: list[tuple[int, ...]] = []
        shapes.append(seen)
        for module in (cell.pre0, cell.pre1, *cell.nodes):
            hooks.append(module.register_forward_hook(lambda m, i, o, seen=seen: seen.append(tuple(o.shape[1:]))))
    try:
        net(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return shapes


def _pair_costs(net: CellSupernet) -> tuple[dict[str, int], dict]:
    """(cost of the network with no pairs, {(cell, node, pair): cost of that pair's operation})."""
    shapes = _state_shapes(net, net.input_shape)
    empty = DartsNet({**net.plain_arch(), "genotype": [[[] for _ in cell.nodes] for cell in net.cells]})
    base = count_cost(empty, net.input_shape).as_dict()
    base = {"macs": base["macs"], "params": base["params"]}
    cache: dict = {}
    pairs = {}
    for i, cell in enumerate(net.cells):
        for k, node in enumerate(cell.nodes):
            for p in node.all_pairs:
                shape = shapes[i][p[0]]
                channels, stride = shape[0], 2 if cell.reduction and p[0] < 2 else 1
                key = (p[1], channels, stride, shape)
                if key not in cache:
                    op = make_op(p[1], len(shape) - 1, channels, stride)
                    cost = count_cost(op, shape)
                    cache[key] = {"macs": cost.macs, "params": cost.params}
                pairs[(i, k, p)] = cache[key]
    return base, pairs


@dataclass
class ControllerConfig:
    """The published defaults of DNAD's adaptive controller (Rao et al.; the NADD code's ``pruner_dict``)."""

    gamma0: float = 1e-4  # initial sparsity weight
    gamma_max: float = 0.1
    phi: float = 1.01  # gamma growth per step while deletions are rarer than n_max
    k: float = 0.99  # gamma decay per step while they are more frequent
    n_max: float = 0.005  # target EMA of deletions per step
    tau: float = 0.9  # EMA factor of the deletion rate
    t_max: int = 50  # steps at gamma_max without deletions that make a plateau
    mu0: float = 0.1  # initial constant-pressure factor
    rho: float = 1.5  # mu growth at each plateau

    def check(self) -> list[str]:
        bad = []
        if not 0 < self.gamma0 <= self.gamma_max:
            bad.append("0 < gamma0 <= gamma_max")
        if self.phi < 1 or not 0 < self.k <= 1 or not 0 <= self.tau < 1:
            bad.append("phi >= 1, 0 < k <= 1 and 0 <= tau < 1")
        if self.n_max <= 0 or self.t_max < 1 or self.mu0 < 0 or self.rho < 1:
            bad.append("n_max > 0, t_max >= 1, mu0 >= 0 and rho >= 1")
        return bad


class ShrinkController:
    """gamma, mu and plateau detection from the number of pairs deleted at each step.

    Per step: p <- tau p + (1 - tau) n. If p < n_max, gamma grows by phi (capped at gamma_max) and, once at
    gamma_max, each such step counts towards a plateau; ``t_max`` of them in a row make one: ``update`` returns
    True and mu grows by rho (the structure no longer shrinks at full pressure, so push it to the next one).
    Otherwise gamma decays by k and the count restarts.
    """

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.gamma = config.gamma0
        self.mu = config.mu0
        self.rate = 0.0  # EMA of deletions per step
        self.calm = 0  # consecutive steps at gamma_max with rate < n_max
        self.plateaus = 0

    def update(self, deleted: int) -> bool:
        c = self.config
        self.rate = c.tau * self.rate + (1 - c.tau) * deleted
        if self.rate >= c.n_max:
            self.gamma *= c.k
            self.calm = 0
            return False
        if self.gamma < c.gamma_max:
            self.gamma = min(self.gamma * c.phi, c.gamma_max)
            self.calm = 0
            return False
        self.calm += 1
        if self.calm < c.t_max:
            return False
        self.calm = 0
        self.mu *= c.rho
        self.plateaus += 1
        return True

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "mu": self.mu, "rate": self.rate, "calm": self.calm, "plateaus": self.plateaus}

    def load_state_dict(self, state: dict) -> None:
        self.gamma, self.mu, self.rate = state["gamma"], state["mu"], state["rate"]
        self.calm, self.plateaus = state["calm"], state["plateaus"]

    def describe(self) -> dict:
        return asdict(self.config)


def random_genotype(net: CellSupernet, target_macs: float, rng) -> list:
    """A random member of the same space at (just under) ``target_macs``: delete random pairs of a dense copy's
    genotype until its MACs fit (the benchmark's random-cells baseline)."""
    base, pairs = net.pair_table()
    live = [(i, k, p) for i, cell in enumerate(net.cells) for k, node in enumerate(cell.nodes) for p in node.all_pairs]
    macs = base["macs"] + sum(pairs[key]["macs"] for key in live)
    order = rng.permutation(len(live))
    removed = set()
    for index in order:
        if macs <= target_macs:
            break
        removed.add(int(index))
        macs -= pairs[live[index]]["macs"]
    genotype = [[[] for _ in cell.nodes] for cell in net.cells]
    for index, (i, k, p) in enumerate(live):
        if index not in removed:
            genotype[i][k].append(list(p))
    return genotype
