"""Block-wise supervised NAS, the DNA family (``--method blockwise``).

1. Cut the teacher (the trained seed, or ``teacher=DIR``) into blocks at its stages (or at named modules).
2. Per block, train a supernet of MBConv candidates (expansion x kernel per layer, a few layers) to map the
   teacher's previous block output to its block output (MSE, one uniformly sampled candidate per step). Blocks
   are independent: under torchrun each rank trains its share and rank 0's results are everyone's.
3. Rate EVERY candidate of every block (batch norms recalibrated, then mean |s - t| / std(t) on the validation
   split); the tables go to ``<run>/blockwise/block<i>.{json,csv}``.
4. Per budget, the exact top-k combinations (least summed rating, summed cost within the budget; the assembled
   network's cost is measured again after), assembled as plain ``blocknet`` networks and trained from scratch
   for the run's epochs (distilled from the teacher with ``kd``).

See docs/methods/blockwise.md for the design and its departures from the paper.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.distributed as dist
from torch import nn

from ..budget import check_feasible
from ..engine.distributed import dist_env, independent, init_distributed
from ..errors import BudgetInfeasibleError, NetfitError
from ..export import load_model
from ..fileio import atomic_write_text
from ..models import StagedNet, build_model
from ..models.staged import Head
from ..space.block_search import SearchStats, space_size, top_k
from ..space.blockwise import (
    BlockSpace,
    BlockSupernet,
    BlockTrainer,
    Path,
    TeacherBlocks,
    block_samples,
    candidate_id,
    layer_costs,
    path_cost,
    rate_block,
)
from .base import METHODS, Candidate, Seed, Target
from .common import LATENCY_MARGIN, cost_fn, finetune
from .uniform import _slug

TABLES = "blockwise"  # the run directory's folder of per-block tables
METRICS = ("macs", "params", "latency_ms")  # additive over blocks


@METHODS.register("blockwise")
@dataclass
class Blockwise:
    """Block-wise supervised NAS: every candidate of every block rated against the teacher, exact top-k search.

    Options:
        teacher: a netfit model folder (arch.json + model.safetensors) to imitate; default: the trained seed.
        blocks: module names of the teacher's blocks in forward order (a list, or "a,b,c"); default: its stages.
        expansions, kernels: the ops of every MBConv layer (expansion x kernel).
        min_layers, max_layers: layers per block (depth choice; the first layer strides to the block's width).
        block_epochs: epochs per block supernet (default: the run's epochs).
        block_lr: AdamW learning rate of the block supernets.
        recal_samples: training samples that recalibrate the batch norms before each candidate is rated.
        rate_samples: validation samples each candidate is rated on.
        top_k: architectures retrained per budget (the k best combinations).
        kd: distil the retrained networks from the teacher; kd_weight: that loss's weight.
    """

    name: ClassVar[str] = "blockwise"
    description: ClassVar[str] = (
        "block-wise supervised NAS (DNA family): per-block MBConv supernets imitate the teacher's stages, every "
        "candidate rated, exact top-k search under the budget, retrained from scratch"
    )
    teacher: str | None = None
    blocks: list[str] | str | None = None
    expansions: list[int] = field(default_factory=lambda: [3, 6])
    kernels: list[int] = field(default_factory=lambda: [3, 5, 7])
    min_layers: int = 1
    max_layers: int = 3
    block_epochs: int | None = None
    block_lr: float = 3e-2  # 0.01 left the 30-epoch supernets short of converged (docs/methods/blockwise.md)
    recal_samples: int = 256
    rate_samples: int = 512
    top_k: int = 2
    kd: bool = False
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        self.space = BlockSpace(tuple(self.expansions), tuple(self.kernels), self.min_layers, self.max_layers)
        if self.top_k < 1 or self.recal_samples < 2 or self.rate_samples < 1 or self.block_lr <= 0:
            raise NetfitError("blockwise needs top_k >= 1, recal_samples >= 2, rate_samples >= 1 and block_lr > 0")
        if self.block_epochs is not None and self.block_epochs < 1:
            raise NetfitError(f"blockwise block_epochs must be >= 1, got {self.block_epochs}")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        bad = sorted({t.metric for t in targets} - set(METRICS))
        if bad:
            raise NetfitError(f"blockwise fits {', '.join(METRICS)} budgets (block costs add up), not {bad[0]}")
        teacher = self._teacher(seed, data, run)
        names = self.blocks.split(",") if isinstance(self.blocks, str) else self.blocks
        cut = TeacherBlocks(teacher, seed.input_shape, [n.strip() for n in names] if names else None)
        timed = [t.budget for t in targets if t.metric == "latency_ms"]
        latency = {"device": timed[0].device, "backend": timed[0].backend} if timed else None
        template = _template(cut, teacher, data.num_classes, names is None)
        smallest = _assemble(template, cut, [(min(self.space.ops),) * self.space.min_layers] * len(cut))
        for target in targets:  # before any training: can the smallest network of the space fit at all?
            check_feasible(target.budget, target.limit, cost_fn(run, target)(build_model(smallest)), seed.metric_value)
        tables = self._tables(cut, data, run, latency)
        candidates, trained = [], {}
        for target in targets:
            for rank, (arch, info) in enumerate(self._choose(cut, tables, template, target, seed, run), 1):
                cid = f"bw-{_slug(target.budget.spec)}-{rank}"
                key = json.dumps(arch, sort_keys=True)
                if key not in trained:  # the same architecture chosen for two budgets trains once
                    trained[key] = self._retrain(arch, cid, data, run, teacher)
                candidates.append(Candidate(cid, trained[key], target, {**info, "rank": rank}))
        return candidates

    # ----- blocks: train, rate, tabulate (resumable per block; one block per rank under torchrun)
    def _teacher(self, seed: Seed, data, run) -> nn.Module:
        if self.teacher is None:
            return seed.model
        from ..api import check_compatible  # the pipeline's own check; imported here (api imports methods)

        model = load_model(self.teacher).to(run.device)
        check_compatible(model, f"teacher {self.teacher}", data)
        return model

    def _tables(self, cut: TeacherBlocks, data, run, latency: dict | None) -> list[dict]:
        rank, world, _ = dist_env()
        if world > 1:
            init_distributed(run.device)
        mine = {}
        with independent() if world > 1 else contextlib.nullcontext():
            for i in range(rank, len(cut), world):
                mine[i] = self._block_table(cut, i, data, run, latency)
        if world == 1:
            return [mine[i] for i in range(len(cut))]
        gathered: list[dict | None] = [None] * world
        dist.all_gather_object(gathered, mine)
        merged = {i: table for part in gathered for i, table in (part or {}).items()}
        return [merged[i] for i in range(len(cut))]

    def _block_table(self, cut: TeacherBlocks, i: int, data, run, latency: dict | None) -> dict:
        path = run.out / TABLES / f"block{i}.json"
        if run.resume and path.exists():
            return json.loads(path.read_text())
        cin, cout = cut.in_shapes[i][0], cut.out_shapes[i][0]
        with torch.random.fork_rng(devices=[]):  # the same weights whether or not earlier blocks were resumed
            torch.manual_seed(int(run.rng(f"blockwise-block{i}").integers(2**31)))
            supernet = BlockSupernet(self.space, cut.ndim, cin, cout, cut.strides[i])
        trainer = BlockTrainer(cut, i, supernet)
        started = time.perf_counter()
        run.train(
            trainer,
            data,
            f"blockwise-block{i}",
            epochs=self.block_epochs,
            overrides={"optimizer": "adamw", "lr": self.block_lr},
            step_fn=trainer.step_fn(run.seed),
        )
        trained = time.perf_counter()
        recal, _ = block_samples(cut, i, data, "train", self.recal_samples, run.seed)
        inputs, targets = block_samples(cut, i, data, "val", self.rate_samples, run.seed)
        losses = rate_block(supernet, recal, inputs, targets, seed=run.seed)
        rated = time.perf_counter()
        costs = layer_costs(self.space, cut.ndim, cut.in_shapes[i], cut.out_shapes[i], cut.strides[i], latency)
        metrics = ["macs", "params"] + (["latency_ms"] if latency else [])
        rows = [
            {"id": candidate_id(p), "layers": [list(op) for op in p], "loss": loss}
            | {m: path_cost(costs, p, m) for m in metrics}
            for p, loss in losses.items()
        ]
        rows.sort(key=lambda r: r["loss"])
        table = {
            "block": i,
            "module": cut.names[i],
            "in_shape": list(cut.in_shapes[i]),
            "out_shape": list(cut.out_shapes[i]),
            "stride": cut.strides[i],
            "space": self.space.to_dict(),
            "train_seconds": round(trained - started, 3),
            "rate_seconds": round(rated - trained, 3),
            "candidates": rows,
        }
        _write_table(path, table, metrics)
        run.log.write(
            "blockwise-block",
            block=i,
            candidates=len(rows),
            best=rows[0]["id"],
            best_loss=rows[0]["loss"],
            train_seconds=table["train_seconds"],
            rate_seconds=table["rate_seconds"],
        )
        return table

    # ----- search and retrain
    def _choose(self, cut, tables: list[dict], template: dict, target: Target, seed: Seed, run) -> list[tuple]:
        """The top-k architectures for one budget: searched on the tables' summed costs plus the stem and head,
        each assembled network's cost measured again (exact) and kept only within the budget."""
        metric, exact = target.metric, cost_fn(run, target)
        paths = [[tuple(tuple(op) for op in row["layers"]) for row in t["candidates"]] for t in tables]
        losses = [[row["loss"] for row in t["candidates"]] for t in tables]
        costs = [[row[metric] for row in t["candidates"]] for t in tables]
        smallest = [ps[min(range(len(cs)), key=cs.__getitem__)] for ps, cs in zip(paths, costs)]
        budget = target.budget
        raw = run.measure(
            build_model(_assemble(template, cut, smallest)), metric, device=budget.device, backend=budget.backend
        )
        fixed = raw - sum(min(cs) for cs in costs)  # stem and head: what the blocks' costs leave out
        padded = target.limit * (1 - LATENCY_MARGIN) if metric == "latency_ms" else target.limit
        measured: dict[str, float] = {}
        ask, chosen = self.top_k, []
        while True:
            stats, started = SearchStats(), time.perf_counter()
            combos = top_k(losses, costs, padded - fixed, ask, stats=stats)
            seconds = time.perf_counter() - started
            chosen = []
            for combo in combos:
                arch = _assemble(template, cut, [paths[b][c] for b, c in enumerate(combo.choices)])
                key = json.dumps(arch, sort_keys=True)
                if key not in measured:
                    measured[key] = exact(build_model(arch))
                if measured[key] <= target.limit:
                    chosen.append((arch, combo))
                if len(chosen) == self.top_k:
                    break
            if len(chosen) == self.top_k or len(combos) < ask or ask >= 64 * self.top_k:
                break
            ask *= 2  # latency: some predicted fits measured over the budget; look further down the ranking
        if not chosen:
            least = exact(build_model(_assemble(template, cut, smallest)))
            check_feasible(target.budget, target.limit, least, seed.metric_value)
            raise BudgetInfeasibleError(
                f"no assembled network measured within budget {target.budget.spec!r}; raise the budget"
            )
        run.log.write(
            "blockwise-search",
            budget=target.budget.spec,
            seconds=round(seconds, 4),
            nodes=stats.nodes,
            space=space_size(losses),
            found=len(chosen),
        )
        return [
            (
                arch,
                {
                    "blocks": [tables[b]["candidates"][c]["id"] for b, c in enumerate(combo.choices)],
                    "predicted_loss": round(combo.loss, 6),
                    "block_losses": [round(losses[b][c], 6) for b, c in enumerate(combo.choices)],
                    f"predicted_{metric}": round(combo.cost + fixed) if metric != "latency_ms" else combo.cost + fixed,
                    "search_seconds": round(seconds, 4),
                    "search_nodes": stats.nodes,
                    "space_size": space_size(losses),
                },
            )
            for arch, combo in chosen
        ]

    def _retrain(self, arch: dict, cid: str, data, run, teacher: nn.Module) -> nn.Module:
        """The assembled network from scratch (seeded init), trained for the run's epochs (phase ``cid``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(run.rng(f"blockwise-init-{cid}").integers(2**31)))
            model = build_model(arch)
        return finetune(model, data, run, cid, teacher if self.kd else None, self.kd_weight)


def _template(cut: TeacherBlocks, teacher: nn.Module, num_classes: int, staged: bool) -> dict:
    """The blocknet spec around the blocks: a conv stem reaching block 0's input shape, and the teacher's head
    (a plain pool + linear head when the blocks were named in a user model)."""
    stride = cut.stem_stride
    # a user model cut into stages (staged_graph) has a traced head, described as the plain one
    built_in = staged and isinstance(teacher, StagedNet) and isinstance(teacher.head, Head)
    head = teacher.head.describe() if built_in else {"neck": 0, "dropout": 0.0}
    return {
        "family": "blocknet",
        "num_classes": num_classes,
        "in_chans": cut.input_shape[0],
        "ndim": cut.ndim,
        "stem": {"width": cut.in_shapes[0][0], "stride": stride, "kernel": 3 if stride <= 2 else 7},
        "stages": [],
        "head": head,
    }


def _assemble(template: dict, cut: TeacherBlocks, paths: list[Path]) -> dict:
    """The blocknet spec with one candidate per block (hidden width = expansion x the layer's input width)."""
    stages, cin = [], template["stem"]["width"]
    for i, path in enumerate(paths):
        cout = cut.out_shapes[i][0]
        layers = [{"hidden": (cin if j == 0 else cout) * e, "kernel": k} for j, (e, k) in enumerate(path)]
        stages.append({"stride": cut.strides[i], "width": cout, "blocks": layers})
        cin = cout
    return {**template, "stages": stages}


def _write_table(path, table: dict, metrics: list[str]) -> None:
    """block<i>.csv, then block<i>.json (the JSON marks the block done for a resume)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["candidate", "depth", "loss", *metrics])
    for row in table["candidates"]:
        writer.writerow([row["id"], len(row["layers"]), f"{row['loss']:.6g}", *(row[m] for m in metrics)])
    atomic_write_text(path.with_suffix(".csv"), buffer.getvalue())
    atomic_write_text(path, json.dumps(table, indent=1))
