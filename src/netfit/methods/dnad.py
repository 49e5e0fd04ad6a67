"""DNAD / SNPS: a DARTS cell supernet shrunk progressively from dense to sparse; a Pareto set from one run.

``--method dnad`` (Rao et al., "Differentiable Neural Architecture Distillation"): the supernet of
``netfit.space.darts`` (every cell its own topology, nodes mixing all (input, op) pairs by w = ReLU(theta) /
sum ReLU(theta)) is trained with the one-level loss (CE + lambda KD)(1 + gamma S) + gamma mu S on the same batch for
weights and theta; pairs with w < 0.01 are deleted for good after every step; the adaptive controller steers gamma
and marks plateaus, and every plateau's genotype is one member of the set. KD is feature distillation from the
teacher (the run's trained seed): 1x1 conv + BN adapters on the supernet's three stage ends against the teacher's
last three stage outputs, weights r = [0.2, 0.3, 0.5]. ``--method snps`` is the same search without KD.

Every member is then built as a plain ``darts`` network from its genotype and trained from scratch with the run's
epochs (optionally distilled from the teacher's logits); all members are returned, and the pipeline selects per
budget the one with the best validation accuracy within it. See docs/methods/dnad.md.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..budget import check_feasible
from ..distill import CachedTeacher, kd_loss
from ..engine import Callback, StepOutput
from ..engine.distributed import is_main
from ..errors import NetfitError, UnsupportedLayerError
from ..fileio import atomic_write_text
from ..models import build_model
from ..models.cell_ops import OPS
from ..models.staged import bn_nd, conv_nd
from ..space.darts import SPARSITY_COSTS, CellSupernet, ControllerConfig, ShrinkController, build_supernet
from .base import METHODS, Candidate, Seed, Target
from .common import cost_fn, finetune

DEFAULT_OPS = "sep_conv_3x3,skip_connect,dil_conv_5x5"
SNAPSHOT_FILE = "dnad-snapshots.json"
# the supernet's weights train as published (Adam, constant lr, grad clip 5), whatever the run's settings
SEARCH_SETTINGS = {
    "optimizer": "adamw",
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "grad_clip": 5.0,
    "keep_best": False,
    "early_stop_patience": None,
}


class TeacherTaps:
    """The frozen teacher's logits and the outputs of three of its modules (default: its last three stages)."""

    def __init__(self, teacher: nn.Module, layers: list[str] | None, input_shape: tuple[int, ...]) -> None:
        self.teacher = copy.deepcopy(teacher).eval()
        self.channels_last = False
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        modules = dict(self.teacher.named_modules())
        if layers:
            missing = [name for name in layers if name not in modules]
            if missing or len(layers) != 3:
                raise UnsupportedLayerError(
                    f"teacher_layers must name 3 modules of the teacher; not found: {', '.join(missing) or '-'}"
                )
            taps = [modules[name] for name in layers]
        else:
            stages = getattr(self.teacher, "stages", None)
            if not isinstance(stages, (nn.ModuleList, nn.Sequential)) or len(stages) < 3:
                raise UnsupportedLayerError(
                    f"cannot find the stages of teacher {type(teacher).__name__} for feature KD (it needs a "
                    "'stages' list of >= 3 modules); pass -x teacher_layers=a,b,c or use snps / -x kd=false"
                )
            taps = list(stages)[-3:]
        self.outputs: list[torch.Tensor] = []
        for module in taps:
            module.register_forward_hook(lambda m, i, o: self.outputs.append(o))
        param = next(self.teacher.parameters(), None)
        with torch.no_grad():
            self(torch.zeros(2, *input_shape, device=param.device if param is not None else "cpu"))
        self.channels = [o.shape[1] for o in self.outputs]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, channels_last: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and tapped outputs of ``x``; ``channels_last``: the student trains in that layout
        (``StepContext.channels_last``), and so does the teacher from then on (it is this object's own copy)."""
        self.teacher.to(x.device)
        if channels_last and not self.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
            self.channels_last = True
        self.outputs = []
        logits = self.teacher(x)
        return logits, self.outputs


class FeatureDistiller(nn.Module):
    """sum_i r_i MSE(BN(conv1x1(student_i)), BN(teacher_i)); the larger map is average-pooled to the smaller."""

    def __init__(self, ndim: int, student: list[int], teacher: list[int], ratios: list[float]) -> None:
        super().__init__()
        self.ratios = ratios
        self.adapters = nn.ModuleList(
            nn.Sequential(conv_nd(ndim, s, t, 1, bias=False), bn_nd(ndim, t)) for s, t in zip(student, teacher)
        )
        norm = nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d
        self.teacher_norms = nn.ModuleList(norm(t, affine=False) for t in teacher)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        loss = 0.0
        for r, adapt, norm, s, t in zip(self.ratios, self.adapters, self.teacher_norms, student, teacher):
            s, t = adapt(s), norm(t.detach())
            size = [min(a, b) for a, b in zip(s.shape[2:], t.shape[2:])]
            pool = F.adaptive_avg_pool1d if s.ndim == 3 else F.adaptive_avg_pool2d
            loss = loss + r * F.mse_loss(pool(s, size), pool(t, size))
        return loss


class SearchModel(nn.Module):
    """What the engine trains: the supernet (with its theta) and, for DNAD, the KD adapters."""

    def __init__(self, net: CellSupernet, distiller: FeatureDistiller | None) -> None:
        super().__init__()
        self.net = net
        self.distiller = distiller

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Shrinker(Callback):
    """After every step: delete pairs below the threshold, update the controller, snapshot plateaus, stop.

    Its state (controller, snapshots, timing window, stop flag) is checkpointed with the search phase; the deleted
    pairs are in the supernet's ``alive`` buffers, so a resumed search continues where the last epoch ended."""

    def __init__(self, net: CellSupernet, method: DNAD, warmup: int, limit: float | None, metric: str) -> None:
        self.net, self.method, self.warmup, self.limit, self.metric = net, method, warmup, limit, metric
        self.controller = ShrinkController(method.controller_config())
        self.snapshots: list[dict] = []
        self.deleted: list[list] = []
        self.done = False
        self.window = [0.0, 0]  # seconds and steps run with the current structure
        self.position = [0, 0]  # (step, epoch) of the last step seen
        self.last: float | None = None

    def on_epoch_start(self, state) -> None:
        self.last = None  # the epoch's first step would include the previous evaluation

    def on_step_end(self, state, out) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.window = [self.window[0] + now - self.last, self.window[1] + 1]
        self.last = now
        self.position = [state.step, state.epoch]
        if self.done or state.epoch < self.warmup:
            return
        deleted = self.net.delete_below(self.method.threshold)
        self.deleted += [[state.step, *d] for d in deleted]
        if deleted:
            self.window = [0.0, 0]  # a new structure: its own steps are timed from here
        plateau = self.controller.update(len(deleted))
        if not (deleted or plateau):
            return
        cost = self.net.cost()
        reason = None
        if self.limit is not None and cost[self.metric] <= self.limit:
            reason = "budget"  # the smallest budget is passed
        elif self.method.target_sparsity is not None and self.sparsity() >= self.method.target_sparsity:
            reason = "sparsity"
        elif self.net.exhausted():
            reason = "exhausted"
        if plateau or reason:
            self.snapshot(reason or "plateau", cost)
        if reason:
            self.done = state.stop = True

    def sparsity(self) -> float:
        """The fraction of the dense supernet's pairs deleted so far."""
        return 1 - self.net.live_pairs() / self.net.total_pairs()

    def snapshot(self, reason: str, cost: dict | None = None) -> None:
        genotype = self.net.genotype()
        if self.snapshots and self.snapshots[-1]["genotype"] == genotype:
            return  # no deletion since the last plateau: not a new member
        seconds, steps = self.window
        self.snapshots.append(
            {
                "reason": reason,
                "step": self.position[0],
                "epoch": self.position[1],
                "genotype": genotype,
                "pairs": self.net.live_pairs(),
                **(cost or self.net.cost()),
                "step_seconds": seconds / steps if steps else None,  # None: this structure has not run yet
                "gamma": self.controller.gamma,
                "mu": self.controller.mu,
            }
        )

    def state_dict(self) -> dict:
        return {
            "controller": self.controller.state_dict(),
            "snapshots": json.dumps(self.snapshots),
            "deleted": json.dumps(self.deleted),
            "done": self.done,
            "window": list(self.window),
            "position": list(self.position),
        }

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.snapshots, self.deleted = json.loads(state["snapshots"]), json.loads(state["deleted"])
        self.done, self.window, self.position = state["done"], list(state["window"]), list(state["position"])


@METHODS.register("dnad")
@dataclass
class DNAD(ControllerConfig):
    """Progressive shrinking of a DARTS cell supernet with feature distillation from the seed (DNAD).

    Options:
        ops: the operations every pair may use, comma-separated (any of ``netfit.models.cell_ops.OPS``).
        cells, channels, nodes: cells of the supernet, initial channels C (doubled at each reduction), nodes per cell.
        stem_stride: stride of the stem (1 keeps the input's size; 2 runs the cells on half-size maps, for
            28x28 and larger inputs on a small compute budget).
        search_epochs: supernet training epochs (default: the run's epochs).
        warmup_epochs: epochs of plain (CE + KD) training before sparsity and deletion start.
        lr, weight_decay: Adam(W) settings of the supernet's weights during the search; arch_lr: SGD lr of theta.
        threshold: a pair whose weight falls below it is deleted.
        sparsity_cost: what each pair's term of S weighs: ``pairs`` (1 each, the paper), ``macs`` or ``params``
            (its cost over the mean pair's, floored at 0.1: the pressure falls on what the budget counts and free
            skip connections are kept; see docs/methods/dnad.md).
        gamma0, gamma_max, phi, k, n_max, tau, t_max, mu0, rho: the adaptive controller, inherited from
            ``space.darts.ControllerConfig`` (the published defaults).
        target_sparsity: stop once this fraction of the pairs is deleted (None: only the other stop rules).
        kd: feature distillation from the teacher (the trained seed) during the search; False = SNPS.
        kd_weight: lambda; kd_ratios: the three stage-end weights r.
        logit_kd: weight of an extra logit KD term during the search (0: off).
        teacher_layers: three comma-separated module names of the teacher to distil from (default: its last
            three stages).
        retrain_kd: members are trained with logit KD from the teacher (default: plain from scratch).
    """

    name: ClassVar[str] = "dnad"
    description: ClassVar[str] = (
        "DARTS cell supernet shrunk from dense to sparse with feature KD from the seed; one Pareto set per run"
    )
    ops: str | list = DEFAULT_OPS
    cells: int = 8
    channels: int = 16
    nodes: int = 4
    stem_stride: int = 1
    search_epochs: int | None = None
    warmup_epochs: int = 0
    lr: float = 5e-4
    weight_decay: float = 3e-4
    arch_lr: float = 0.2
    threshold: float = 0.01
    sparsity_cost: str = "pairs"
    target_sparsity: float | None = None
    kd: bool = True
    kd_weight: float = 1.0
    kd_ratios: str | list = "0.2,0.3,0.5"
    logit_kd: float = 0.0
    teacher_layers: str | list | None = None
    retrain_kd: bool = False

    def __post_init__(self) -> None:
        self.op_list = _names(self.ops)
        unknown = [op for op in self.op_list if op not in OPS or op == "none"]
        if unknown or not self.op_list:
            raise NetfitError(
                f"{self.name} ops: unknown operation(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(o for o in OPS if o != 'none')}"
            )
        try:
            self.ratios = [float(r) for r in _names(self.kd_ratios)]
        except ValueError:
            self.ratios = []
        if len(self.ratios) != 3:
            raise NetfitError(f"{self.name} kd_ratios needs three numbers, got {self.kd_ratios!r}")
        bad = self.controller_config().check()
        if self.cells < 3 or self.channels < 2 or self.nodes < 1 or self.stem_stride < 1:
            bad.append("cells >= 3, channels >= 2, nodes >= 1, stem_stride >= 1")
        if not 0 < self.threshold < 1 or self.lr <= 0 or self.arch_lr <= 0 or self.warmup_epochs < 0:
            bad.append("0 < threshold < 1, lr > 0, arch_lr > 0, warmup_epochs >= 0")
        if self.sparsity_cost not in SPARSITY_COSTS:
            bad.append(f"sparsity_cost one of {', '.join(SPARSITY_COSTS)}")
        if self.target_sparsity is not None and not 0 < self.target_sparsity <= 1:
            bad.append("0 < target_sparsity <= 1")
        if bad:
            raise NetfitError(f"{self.name} needs {'; '.join(bad)}")

    def controller_config(self) -> ControllerConfig:
        return ControllerConfig(**{f.name: getattr(self, f.name) for f in fields(ControllerConfig)})

    # ----- search
    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        shape = tuple(seed.input_shape)
        if len(shape) not in (2, 3):
            raise UnsupportedLayerError(f"{self.name} builds 1-D or 2-D cells; input shape {shape} is neither")
        torch.manual_seed(run.seed)  # the supernet's initial weights belong to the run seed
        net = build_supernet(
            shape, data.num_classes, self.op_list, self.cells, self.channels, self.nodes, self.stem_stride
        )
        net.weigh_sparsity(self.sparsity_cost)
        smallest_target = min(targets, key=lambda t: t.limit)
        self._check_reachable(net, smallest_target, run)
        taps = TeacherTaps(seed.model, _names(self.teacher_layers), shape) if self.kd or self.logit_kd else None
        distiller = None
        if self.kd:
            student = [o.shape[1] for o in _stage_outputs(net, shape)]
            distiller = FeatureDistiller(len(shape) - 1, student, taps.channels, self.ratios)
        model = SearchModel(net, distiller)
        # "the smallest budget is passed": crossed while shrinking (a dense net already within it shrinks on)
        metric = smallest_target.metric
        crossing = metric in ("macs", "params") and net.cost()[metric] > smallest_target.limit
        stop_limit = smallest_target.limit if crossing else None
        shrinker = Shrinker(net, self, self.warmup_epochs, stop_limit, smallest_target.metric)
        dense = net.cost()
        run.log.write(f"{self.name}-space", ops=self.op_list, cells=self.cells, pairs=net.total_pairs(), **dense)
        thetas = [node.theta for node in net.nodes()]
        result = run.train(
            model,
            data,
            f"{self.name}-search",
            epochs=self.search_epochs,
            step_fn=self._step_fn(model, shrinker, taps),
            callbacks=[shrinker],
            extra_optimizers=[torch.optim.SGD(thetas, lr=self.arch_lr, momentum=0.0)],
            param_filter=lambda name, _: not name.endswith("theta"),
            overrides={**SEARCH_SETTINGS, "lr": self.lr, "weight_decay": self.weight_decay},
        )
        net = result.model.net
        if not shrinker.snapshots or shrinker.snapshots[-1]["genotype"] != net.genotype():
            shrinker.snapshot("end")
        if is_main():
            atomic_write_text(run.out / SNAPSHOT_FILE, json.dumps({"snapshots": shrinker.snapshots}, indent=1))
        run.log.write(f"{self.name}-shrunk", members=len(shrinker.snapshots), deleted=len(shrinker.deleted))
        teacher = CachedTeacher(seed.model) if self.retrain_kd else None  # one cache for every member's training
        return self._train_members(net, shrinker.snapshots, data, run, teacher)

    def _check_reachable(self, net: CellSupernet, target: Target, run) -> None:
        """The smallest network of the space is the one without pairs (stem, preprocessing, head)."""
        empty = build_model({**net.plain_arch(), "genotype": [[[] for _ in c.nodes] for c in net.cells]})
        check_feasible(target.budget, target.limit, cost_fn(run, target)(empty))

    def _step_fn(self, model: SearchModel, shrinker: Shrinker, taps: TeacherTaps | None):
        """One-level step: (CE + lambda KD)(1 + gamma S) + gamma mu S on the same batch for weights and theta."""
        net, controller, warmup = model.net, shrinker.controller, self.warmup_epochs

        def step(ctx) -> StepOutput:
            logits = ctx.model(ctx.x)
            task = F.cross_entropy(logits, ctx.y, label_smoothing=ctx.config.label_smoothing)
            metrics = {"ce": float(task.detach())}
            if taps is not None:
                teacher_logits, teacher_features = taps(ctx.x, ctx.channels_last)
                if model.distiller is not None:
                    kd = model.distiller(net.stage_outputs, teacher_features)
                    metrics["kd"] = float(kd.detach())
                    task = task + self.kd_weight * kd
                if self.logit_kd:
                    task = task + self.logit_kd * kd_loss(logits, teacher_logits)
            loss = task
            if ctx.epoch >= warmup:
                s = net.sparsity()
                gamma, mu = controller.gamma, controller.mu
                loss = task * (1 + gamma * s) + gamma * mu * s
                metrics.update(sparsity=float(s.detach()), gamma=gamma, mu=mu, pairs=net.live_pairs())
            return StepOutput(loss, logits, metrics)

        return step

    # ----- members
    def _train_members(self, net, snapshots, data, run, teacher) -> list[Candidate]:
        members = []
        for m, snap in enumerate(snapshots):
            cid = f"{self.name}-m{m}"
            arch = {**net.plain_arch(), "genotype": snap["genotype"]}
            torch.manual_seed(run.seed + m)  # from scratch: the family's own initialisation, seeded
            model = finetune(build_model(arch), data, run, cid, teacher)
            # timing stays in the snapshot file: result.json holds only what a rerun reproduces
            info = {k: v for k, v in snap.items() if k not in ("genotype", "step_seconds")}
            info["search_macs"] = info.pop("macs")
            info["search_params"] = info.pop("params")
            members.append(Candidate(cid, model, None, info))  # the pipeline selects per budget, on validation
        return members


@METHODS.register("snps")
@dataclass
class SNPS(DNAD):
    """DNAD's progressive shrinking without distillation (SNPS); same options, ``kd`` off."""

    name: ClassVar[str] = "snps"
    description: ClassVar[str] = "DARTS cell supernet shrunk from dense to sparse (no KD); one Pareto set per run"
    kd: bool = False


def _names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@torch.no_grad()
def _stage_outputs(net: CellSupernet, shape: tuple[int, ...]) -> list[torch.Tensor]:
    was_training = net.training
    net.eval()
    net(torch.zeros(1, *shape))
    net.train(was_training)
    return net.stage_outputs
