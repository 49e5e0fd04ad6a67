"""SpiderNet: a cell network that prunes itself with hard gates and grows by edge splitting (``--method spider``).

Iterations of: train the gated supernet (cross-entropy + 0.4 x the auxiliary heads' losses, gates on their own
weight-decayed optimizer, clamped after every step) -> deadhead (delete ops closed on > 75% of the iteration's
batches, then nodes off every input -> output path) -> the plain network is a candidate -> mutate: split a few
randomly drawn edges on copies, score each copy on a minibatch with the train-free metrics and keep those whose
NTK condition number did not rise and whose linear-region count rose (the published rule) and whose plain network
still meets the run's first budget (measured: MACs, params, latency or memory); the best by rank (TE-NAS:
lowest sum of both metrics' ranks) is applied. A final phase then trains the last network alone (plain: no gates,
no auxiliary heads). The user sets the reduction cells and initial channels; edges, ops and cell depth evolve.
The seed network is only the reference of relative budgets and, with ``kd``, the teacher. See
docs/methods/spider.md.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..budget import check_feasible
from ..distill import CachedTeacher, kd_loss
from ..engine import StepOutput
from ..engine.distributed import is_distributed
from ..engine.norms import recalibrate_norms
from ..errors import CheckpointError, NetfitError
from ..export import load_model, save_model
from ..fileio import atomic_write, atomic_write_text
from ..models.cell_ops import OPS
from ..models.spidernet import SPIDER_OPS, SpiderNet, initial_arch
from ..space.spider import (
    DEADHEAD_THRESHOLD,
    GATE_CLIP,
    GATE_INIT,
    GateMonitor,
    SpiderSupernet,
    deadhead,
    is_gate,
    plain_network,
    reset_gate_counts,
    split_edge,
)
from ..trainfree import metric_batch, score, unsaturated_span
from .base import METHODS, Candidate, Seed, Target
from .common import cost_fn, finetune

STATE_DIR = "spider"
# The gates' gradient is a sum over a whole feature map, far larger than their clamp range, so at the weights' lr
# they flip on the sign of each batch; at a tenth of it the supernet trained stably on mnist1d (docs/methods/spider.md)
GATE_LR_SCALE = 0.1
# Share of the run's epochs that trains the final plain network: weight sharing left the last iteration's network
# 1.07 points below its architecture trained from scratch on mnist1d; a quarter recovered 0.8 (neutral on digits)
FINAL_SHARE = 0.25


@METHODS.register("spider")
@dataclass
class SpiderNetSearch:
    """Gated cells, deadheading and train-free-scored, hardware-checked edge splitting.

    Options:
        reductions: reduction cells (each halves the size, doubles the width); the network is a normal cell then
            (reduction, normal) x reductions.
        channels: initial channels (of the stem and the first cell).
        stem_stride: stride of the stem (1 keeps the input's size; 2 runs the cells on half-size maps, for
            28x28 images on a CPU).
        iterations: train -> deadhead -> mutate iterations; every iteration's network is a candidate.
        iteration_epochs: epochs per iteration (default: the run's epochs less the final phase's, spread over the
            iterations, >= 1).
        final_epochs: epochs of the final phase that trains the last iteration's plain network alone, at the
            supernet's lr (default: ``FINAL_SHARE`` of the run's epochs; 0: none, the last iteration is the result).
        nodes: intermediate nodes per cell at the start (fully connected).
        ops: the candidate operations of every edge (default: the seven of the paper).
        gate_init, gate_clip: the gate weights' start and clamp (published 0.01 and 0.05).
        gate_decay: weight decay of the gate weights (pulls unused gates below zero).
        gate_lr: learning rate of the gates' SGD (default: ``GATE_LR_SCALE`` x the run's lr).
        deadhead_threshold: delete an op closed on more than this fraction of an iteration's batches.
        aux_weight: weight of the auxiliary heads' losses (published 0.4).
        lr_scale: the weights' learning rate while the supernet trains, as a fraction of the run's lr (every open
            op of an edge adds to its output, so the supernet takes larger steps than a plain network at one lr).
        mutations: edge splits applied per iteration at most (in different cells).
        mutation_candidates: edges drawn and scored per iteration.
        metric_samples: minibatch size of the train-free metrics.
        preserve: splits start function-preserving (the new path silent, see ``space.spider.split_edge``).
        kd, kd_weight: distil from the seed while training.
    """

    name: ClassVar[str] = "spider"
    description: ClassVar[str] = (
        "SpiderNet: gated cells deadheaded and grown by edge splits scored with NTK/linear-region metrics, "
        "each split checked against the budget"
    )
    reductions: int = 2
    channels: int = 16
    stem_stride: int = 1
    iterations: int = 4
    iteration_epochs: int | None = None
    final_epochs: int | None = None
    nodes: int = 1
    ops: tuple[str, ...] | list[str] = SPIDER_OPS
    gate_init: float = GATE_INIT
    gate_clip: float = GATE_CLIP
    gate_decay: float = 1e-3
    gate_lr: float | None = None
    deadhead_threshold: float = DEADHEAD_THRESHOLD
    aux_weight: float = 0.4
    lr_scale: float = 0.2
    mutations: int = 1
    mutation_candidates: int = 4
    metric_samples: int = 16
    preserve: bool = True
    kd: bool = False
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.reductions < 0 or self.channels < 2 or self.nodes < 0 or self.stem_stride < 1:
            raise NetfitError("spider needs reductions >= 0, channels >= 2, nodes >= 0 and stem_stride >= 1")
        if self.iterations < 1 or (self.iteration_epochs is not None and self.iteration_epochs < 1):
            raise NetfitError("spider needs iterations >= 1 and iteration_epochs >= 1")
        if self.final_epochs is not None and self.final_epochs < 0:
            raise NetfitError("spider needs final_epochs >= 0")
        if isinstance(self.ops, str) or not self.ops or any(op not in OPS or op == "none" for op in self.ops):
            raise NetfitError(f"spider ops must be a non-empty list of {', '.join(o for o in OPS if o != 'none')}")
        if not 0 < self.gate_init <= self.gate_clip or self.gate_decay < 0 or (self.gate_lr or 1) <= 0:
            raise NetfitError("spider needs 0 < gate_init <= gate_clip, gate_decay >= 0 and gate_lr > 0")
        if not 0 < self.deadhead_threshold < 1 or self.aux_weight < 0 or self.lr_scale <= 0:
            raise NetfitError("spider needs 0 < deadhead_threshold < 1, aux_weight >= 0 and lr_scale > 0")
        if self.mutations < 0 or self.mutation_candidates < 1 or self.metric_samples < 2:
            raise NetfitError("spider needs mutations >= 0, mutation_candidates >= 1 and metric_samples >= 2")
        self.ops = tuple(self.ops)

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        if is_distributed():  # the step runs the unwrapped supernet (auxiliary heads), outside DDP's gradient sync
            raise NetfitError("spider trains in one process; run it without torchrun")
        ndim = len(seed.input_shape) - 1
        if ndim not in (1, 2):
            raise NetfitError(
                f"spider builds 1-D or 2-D cell networks; samples of shape {seed.input_shape} are neither"
            )
        target, measure = targets[0], cost_fn(run, targets[0])
        arch = initial_arch(
            ndim,
            seed.input_shape[0],
            data.num_classes,
            self.channels,
            self.reductions,
            self.nodes,
            self.ops,
            self.stem_stride,
        )
        self._check_reachable(arch, target, seed, measure)
        restored = self._restore(run, target) if run.resume else None
        net, candidates = restored or (self._initial(arch, run), [])
        teacher = CachedTeacher(seed.model) if self.kd else None  # each sample's logits computed once per run
        for k in range(len(candidates), self.iterations):
            net = self._train(net, data, run, k, teacher)
            removed = deadhead(net, self.deadhead_threshold)
            # the running statistics were gathered while gates flipped; the candidate needs those of its final ops
            recalibrate_norms(net, data, seed=run.seed)
            model = plain_network(net)
            value = measure(model)
            info = {
                "iteration": k,
                "nodes": [len(c.nodes) for c in model.cells],
                "ops": sum(len(e.ops) for c in model.cells for e in c.edges.values()),
                "deadheaded_ops": len(removed["ops"]),
                "deadheaded_nodes": len(removed["nodes"]),
                "budget_value": value,
            }
            run.log.write("spider-deadhead", iteration=k, **removed)
            if k < self.iterations - 1:
                net, info["mutations"] = self._mutate(net, data, run, k, measure, target.limit)
            candidates.append(Candidate(f"spider-it{k}", model, target, info))
            self._save(run, k, net, candidates[-1])
        final_epochs = self.epoch_split(run.config.epochs)[1]
        if final_epochs:
            candidates.append(self._finish(candidates[-1], data, run, final_epochs, teacher))
        return candidates

    def epoch_split(self, total: int) -> tuple[int, int]:
        """Epochs of each iteration and of the final phase, for a run of ``total`` epochs."""
        final = round(FINAL_SHARE * total) if self.final_epochs is None else self.final_epochs
        return self.iteration_epochs or max(1, round((total - final) / self.iterations)), final

    def _finish(self, last: Candidate, data, run, epochs: int, teacher) -> Candidate:
        """The last iteration's plain network trained alone, at the lr its weights were trained at (at the run's
        full lr one of three mnist1d networks fell 1.8 points), resumable like every phase."""
        model = finetune(
            copy.deepcopy(last.model),
            data,
            run,
            "spider-final",
            teacher,
            self.kd_weight,
            overrides={"epochs": epochs, "lr": self.lr_scale * run.config.lr},
        )
        info = {**{k: v for k, v in last.info.items() if k not in ("iteration", "mutations")}, "final_epochs": epochs}
        return Candidate("spider-final", model, last.target, info)

    def _initial(self, arch: dict, run) -> SpiderSupernet:
        """The starting supernet, its weights drawn from the run's seed alone (the same after a resume)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(run.rng("spider-init").integers(2**31)))
            return SpiderSupernet(arch, self.gate_init).to(run.device)

    # ----- training
    def _train(self, net: SpiderSupernet, data, run, k: int, teacher) -> SpiderSupernet:
        epochs = self.epoch_split(run.config.epochs)[0]
        gates = [p for n, p in net.named_parameters() if is_gate(n)]
        lr = self.gate_lr or GATE_LR_SCALE * run.config.lr
        gate_opt = torch.optim.SGD(gates, lr=lr, momentum=0.9, weight_decay=self.gate_decay)
        aux_weight = self.aux_weight

        def step(ctx) -> StepOutput:
            logits, aux = ctx.raw_model.forward_all(ctx.x)
            ce = F.cross_entropy(logits, ctx.y, label_smoothing=ctx.config.label_smoothing)
            aux_loss = sum((F.cross_entropy(a, ctx.y) for a in aux), torch.zeros((), device=ctx.x.device))
            loss = ce + aux_weight * aux_loss
            metrics = {"ce": float(ce.detach()), "aux": float(aux_loss.detach())}
            if teacher is not None:
                distill = self.kd_weight * kd_loss(logits, teacher(ctx.x, ctx.ids, ctx.channels_last))
                loss = loss + distill
                metrics["kd"] = float(distill.detach())
            return StepOutput(loss, logits, metrics)

        reset_gate_counts(net)
        return run.train(
            net,
            data,
            f"spider-it{k}",
            epochs=epochs,
            overrides={"lr": self.lr_scale * run.config.lr},
            step_fn=step,
            callbacks=[GateMonitor(net, self.gate_clip)],
            extra_optimizers=[gate_opt],
            param_filter=lambda n, p: not is_gate(n),
        ).model

    # ----- mutation
    def _mutate(self, net: SpiderSupernet, data, run, k: int, measure, limit: float) -> tuple[SpiderSupernet, list]:
        """Score ``mutation_candidates`` random edge splits and apply up to ``mutations`` accepted ones."""
        rng = run.rng(f"spider-mutate-{k}")
        x = metric_batch(data, self.metric_samples, seed=run.seed * 1009 + k, device=run.device)
        span = unsaturated_span(net, x)  # one span for the base and every trial: their counts compare
        base = score(net, x, param_filter=is_weight, span=span)
        edges = [(i, key) for i, cell in enumerate(net.cells) for key in cell.edges]
        drawn = rng.choice(len(edges), size=min(self.mutation_candidates, len(edges)), replace=False)
        records = []
        for index in drawn:
            cell, key = edges[int(index)]
            split_seed = int(rng.integers(2**31))
            trial = self._split(copy.deepcopy(net), cell, key, split_seed)
            metrics = score(trial, x, param_filter=is_weight, span=span)
            cost = measure(plain_network(trial))
            record = {
                "cell": cell,
                "edge": key,
                "seed": split_seed,
                "ntk_cond": _finite_or_none(metrics["ntk_cond"]),
                "base_ntk_cond": _finite_or_none(base["ntk_cond"]),
                "linear_regions": metrics["linear_regions"],
                "base_linear_regions": base["linear_regions"],
                "region_span": span,
                "budget_value": cost,
                "metrics_ok": metrics["ntk_cond"] <= base["ntk_cond"]
                and metrics["linear_regions"] > base["linear_regions"],
                "fits": cost <= limit,
            }
            run.log.write("spider-mutation", iteration=k, **record)
            records.append(record)
        accepted = rank_mutations([r for r in records if r["metrics_ok"] and r["fits"]])
        applied, cells = [], set()
        for record in accepted:
            if len(applied) >= self.mutations or record["cell"] in cells:
                continue
            grown = self._split(copy.deepcopy(net), record["cell"], record["edge"], record["seed"])
            if applied and measure(plain_network(grown)) > limit:  # several splits together may not fit
                continue
            net, cells = grown, cells | {record["cell"]}
            applied.append([record["cell"], record["edge"]])
        run.log.write("spider-mutate", iteration=k, applied=applied, scored=len(records), accepted=len(accepted))
        return net, applied

    def _split(self, net: SpiderSupernet, cell: int, key: str, split_seed: int) -> SpiderSupernet:
        """An edge split with its new weights drawn from ``split_seed``: the scored and the applied split agree."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(split_seed)
            split_edge(net, cell, key, self.ops, self.gate_init, self.preserve)
        return net

    # ----- budget
    def _check_reachable(self, arch: dict, target: Target, seed: Seed, measure) -> None:
        """The smallest network of the space (every cell one edge with the cheapest op) must meet the budget."""
        cheapest = next((op for op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect") if op in self.ops), None)
        smallest = copy.deepcopy(arch)
        for cell in smallest["cells"]:
            first, last = cell["nodes"][0], cell["nodes"][-1]
            cell["nodes"], cell["edges"] = [first, last], {f"{first}_{last}": [cheapest or self.ops[0]]}
        check_feasible(target.budget, target.limit, measure(SpiderNet(smallest)), seed.metric_value)

    # ----- resume between iterations
    def _save(self, run, k: int, net: SpiderSupernet, candidate: Candidate) -> None:
        """Iteration k's supernet (after mutation) and candidate; the JSON written last marks it complete."""
        from safetensors.torch import save_file

        folder = run.out / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.detach().cpu().contiguous().clone() for n, t in net.state_dict().items()}
        atomic_write(folder / f"it{k}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        save_model(candidate.model, folder / f"cand{k}", input_shape=run.input_shape, meta={"info": candidate.info})
        atomic_write_text(folder / f"it{k}.json", json.dumps({"arch": SpiderNet.describe(net), "info": candidate.info}))

    def _restore(self, run, target: Target) -> tuple[SpiderSupernet, list[Candidate]] | None:
        """The supernet and candidates of the last completed iteration of an interrupted run (None: none)."""
        from safetensors.torch import load_file

        folder: Path = run.out / STATE_DIR
        done = [k for k in range(self.iterations) if (folder / f"it{k}.json").exists()]
        if not done:
            return None
        last = max(done)
        if done != list(range(last + 1)):
            raise CheckpointError(f"{folder} misses iterations before {last}; start a new run in another --out")
        state = json.loads((folder / f"it{last}.json").read_text())
        net = SpiderSupernet(state["arch"], self.gate_init)
        net.load_state_dict(load_file(str(folder / f"it{last}.safetensors")))
        candidates = []
        for k in range(last + 1):
            info = json.loads((folder / f"it{k}.json").read_text())["info"]
            candidates.append(Candidate(f"spider-it{k}", load_model(folder / f"cand{k}"), target, info))
        run.log.write("spider-resume", iterations_done=last + 1)
        return net.to(run.device), candidates


def accepted_by_metrics(new: dict, base: dict) -> bool:
    """The published rule: the NTK condition number must not rise and the linear-region count must rise."""
    return new["ntk_cond"] <= base["ntk_cond"] and new["linear_regions"] > base["linear_regions"]


def is_weight(name: str, _param=None) -> bool:
    """The parameters that span the NTK: every trainable one except the gates."""
    return not is_gate(name)


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a singular kernel's condition number is written as null."""
    return value if math.isfinite(value) else None


def rank_mutations(records: list[dict]) -> list[dict]:
    """Accepted splits best first: lowest sum of the ranks of the NTK condition number (ascending) and of the
    linear-region count (descending), as TE-NAS combines the two metrics (all share one base network)."""
    ntk = sorted(range(len(records)), key=lambda i: _or_inf(records[i]["ntk_cond"]))
    regions = sorted(range(len(records)), key=lambda i: -records[i]["linear_regions"])
    rank = {i: ntk.index(i) + regions.index(i) for i in range(len(records))}
    return [records[i] for i in sorted(rank, key=lambda i: (rank[i], i))]


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value
