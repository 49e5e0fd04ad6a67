"""DNA: differentiable, bi-directional adaption of an existing network's width and depth (``--method dna``).

1. Grow the trained seed function-preservingly (channels ordered by importance, Net2Net-widened to
   ``grow_width`` x, ``grow_depth`` x more identity blocks per stage) into the elastic space where the options
   ask for a searched expansion; by default nothing is grown, the largest network is the seed itself, and a
   budget above the seed's cost gets the seed's widest uniform function-preserving widening within it.
2. Train the supernet with the sandwich rule (largest, smallest and ``samples`` sub-nets drawn from every
   budget's architecture distribution per step, the smaller ones distilled in place from the frozen seed, or
   from the largest with ``inplace_teacher=largest``) and, after ``warmup_epochs``, update the Markov keep
   logits of every budget on its expected network: cross-entropy + ``cost_weight`` x the dead-zone budget loss
   on the differentiable expected cost. A ``companion`` budget (2x the largest, where that is at most half the
   seed) is searched with them and never returned, so that the largest budget's sub-networks train beside
   larger ones.
3. Per budget: the expected widths and depths, scaled together to the largest network within the budget
   (the bisection priced by the space's cost formula, the one network built checked by the cost model),
   materialised as a plain dense network, its batch norms recalibrated (the supernet's statistics belong to
   the largest network) and fine-tuned with a learning-rate warm-up (distilled from the seed with ``kd``).

See docs/methods/dna.md for the design and where it departs from the paper.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..cost import measure
from ..distill import CachedTeacher
from ..engine import Callback, TrainConfig, evaluate
from ..engine.distributed import barrier, is_main
from ..errors import NetfitError
from ..fileio import atomic_write_text
from ..space.blocks import stage_blocks
from ..space.elastic import ElasticNet
from ..space.grow import grow
from ..space.latency_table import LatencyTable, measure_table
from .base import METHODS, Candidate, Seed, Target
from .common import finetune, from_scratch, inherited_accuracy, probe_inputs
from .dna_networks import searched_network, widened_network
from .dna_passes import PASS_MODES, SOFT_MODES, SOFT_TAIL, PassLayout, budget_sizes, remembered_passes
from .dna_step import DEAD_ZONE, dead_zone_loss, search_step
from .uniform import _slug

KD_TEACHERS = ("seed", "largest", "best")
INPLACE_TEACHERS = ("seed", "largest")
MAX_GROW_WIDTH = 2.0  # the default growth's cap: a largest network of about 4x the seed
# the largest companion, as a fraction of the seed: 80% (for a 40% budget) gained nothing and cost search time
COMPANION_CEILING = 0.5


class ArchParams(nn.Module):
    """The Markov keep logits: one row of width logits and one of depth logits per budget."""

    def __init__(self, width: torch.Tensor, depth: torch.Tensor) -> None:
        super().__init__()
        self.width = nn.Parameter(width)
        self.depth = nn.Parameter(depth)


@METHODS.register("dna")
@dataclass
class DNA:
    """Differentiable width and depth adaption of the seed, condensing or expanding it to each budget.

    Options:
        grow_width: width of the elastic space relative to the seed, to search expansion: a budget above the
            seed is then searched in the grown space like the others. Default (neither ``grow_width`` nor
            ``grow_depth`` given): the space is the seed (condense only) and a budget above the seed gets the
            widest uniform function-preserving widening of the seed within it (as ``uniform`` does), fine-tuned
            like the searched ones: a space grown just as far as the largest budget leaves that budget one
            architecture, the whole space, and searching it cost 30-40% of every search step for no accuracy
            (docs/methods/dna.md, "Costs and limits"). Given alone, ``grow_depth`` widens by sqrt(r) for a
            largest budget r x the seed's cost, at most 2.
        grow_depth: extra identity blocks per stage, as a fraction of the seed's blocks (0 = no deeper nets,
            the default).
        grow_copies: how the widened channels' copies start: "zero" (consumers read them with weight 0, so
            every leading slice of the supernet is the seed's own sub-network) or "split" (Net2Net).
        units: width gates (Markov steps) per channel group.
        search_epochs: supernet epochs (shared by all budgets; default: the fine-tune epochs).
        warmup_epochs: supernet epochs before the architecture logits move.
        search_lr_scale: the weights' learning rate during the search, as a fraction of the run's ``lr``.
        samples: sub-nets drawn from the architecture distribution per step (besides largest and smallest).
        arch_lr: Adam learning rate of the architecture logits.
        cost_weight: weight of the dead-zone budget loss.
        inplace_teacher: the search's in-place teacher of the smallest and sampled sub-nets: "largest" (the
            sandwich rule: the largest network trained with cross-entropy every step), "seed" (the frozen seed,
            its logits remembered per sample where the data has no random augmentation; default): the largest
            network is not run, a quarter of a condense-only search step and more of a grown one. The seed made
            condense-only runs about 1.2x cheaper, grown ones 1.1-1.2x, and was as accurate within noise on
            mnist1d (condense-only and grown) and digits once fine-tunes clip their gradient (``finetune_clip``;
            docs/methods/dna.md, "Costs and limits").
        kd: distil the fine-tuned candidates from a teacher (``kd_teacher``).
        kd_weight: weight of that distillation loss.
        kd_teacher: "seed", "largest" (the searched supernet's largest network, the sandwich rule's in-place
            teacher) or "best" (whichever of the two is more accurate on the validation split).
        one_level: the expected-network pass also trains the weights (its weight gradients join the sandwich's),
            so the weights learn the budget's own region of the space; False = alternating (DMCP): that pass only
            moves the architecture logits. One-level was better and steadier in measurement (docs/methods/dna.md).
        arch_every: run the architecture pass (and move the logits) every this many steps only; the other steps
            train the weights alone and skip its soft pass. 4 made the search cheaper and the smallest budget
            unstable (docs/methods/dna.md, "Costs and limits")
        arch_batch: the fraction of each batch the architecture pass runs on (its cost scales with it); the
            budget loss is exact whatever the fraction, only the data term of the logits' gradient is noisier.
            0.5 on MobileNetV2 (MNIST-10k): no cheaper run, 0.5-2.4 points lower at 5-2% (docs/methods/dna.md).
        split_batch: the architecture pass splits each batch between all budgets, so every budget's logits
            move at every step; False: one budget per step (round-robin) on the whole batch.
        every_budget: the sandwich's ``samples`` sub-nets are drawn from EVERY budget's chains at every step, each
            budget's on its share of the batch, so each budget's own sub-networks train all through the search;
            False: from one budget per step (round-robin) on the whole batch, which left the sub-networks of the
            smallest budgets under-trained when the search moved them away from the smallest network
            (docs/methods/dna.md).
        sample_pass: how the budgets' sampled sub-networks run (``every_budget``): "sliced" (on their shares, on
            slices of the supernet's weights: about their own MACs, one pass per group, ``group_span``),
            "batched" (all in one masked pass of the supernet with per-sample gates: one pass at the supernet's
            MACs; same outputs and gradients), or "auto" (the default): the faster of the two, timed once per
            machine, network and settings and remembered (``netfit.tuning``). Which is faster depends on both
            (batched on an H200; sliced on the suite's CPU cases, and ``soft_pass`` joint on three of the
            four): docs/methods/dna.md, "Costs and limits".
        soft_pass: how the architecture pass runs the budgets' expected networks: "batched" (one pass of the
            supernet with per-sample soft gates), "sliced" (on their shares, one pass per group, ``group_span``,
            on the slices the units and blocks some network of the group keeps above ``soft_tail`` need: the small
            budgets' networks cost a fraction of the supernet), "joint" (in the same passes as the samples, on
            their inputs stacked: with ``sample_pass`` sliced, one sliced pass per group for the expected networks
            and the samples; batched, ONE masked pass per step for the expected networks, the samples and the
            smallest network, for a device where a step costs its launches rather than its MACs; needs
            ``one_level``), or "auto" (the default): timed with ``sample_pass``, the fastest pair.
        group_span: a sliced pass runs several budgets' networks together, each on its share with its own gates
            and batch statistics, on the slices of their union: from the largest budget down, every budget
            within this fraction of the supernet's cost of the group's first joins it. A group costs at most
            ``group_span`` x the supernet per sample above its networks apart and saves a pass's fixed costs per
            budget (on CPU 10-20 ms for a ResNet-18 sub-network, plus building its sliced layers); 0 runs each
            budget's networks on their own. docs/methods/dna.md, "Costs and limits".
        soft_tail: the expected networks leave out (gate 0, in every ``soft_pass``) the units and blocks they keep
            with a probability below this; a sliced pass does not compute them. 0.05 made a MobileNetV2 search
            18-25% cheaper but its small budgets less accurate on one seed; 1e-3 leaves out what is negligible
            (docs/methods/dna.md, "Costs and limits").
        latency_table: for latency budgets, search on a per-layer latency table measured on the budget's device
            and backend (``netfit.space.latency_table``); False: on MACs scaled by the seed's latency per MAC.
        finetune_warmup: the fraction of each fine-tune spent warming the learning rate up linearly from 0: the
            searched sub-network already works (after batch-norm recalibration) but its logits are not on the
            seed's scale, and distilling it from the seed at the full learning rate from the first step undid
            most of what it knew at the small budgets (docs/methods/dna.md).
        finetune_clip: the global gradient norm each inherited fine-tune clips at, unless the training settings
            give ``grad_clip`` (None: no clipping). A safety net: a healthy fine-tune's norms stayed below it, while
            the deep, very narrow networks some searches find spiked to 23-56 once the warm-up reached the full
            learning rate and lost what they knew (docs/methods/dna.md, "Costs and limits").
        search_clip: the global gradient norm the search clips at, unless the training settings give
            ``grad_clip`` (None: no clipping). A safety net: a search's median norm is about 5 (the suite's mnist1d
            x0.5 at most 19.7), while on MobileNetV2 the narrowest sampled sub-networks (one unit per gate) send it
            to 1e4-1e20 on a few steps; at 1e20 the weights blew up to infinity in a warm-up epoch
            (docs/methods/dna.md, "Costs and limits").
        inherit: fine-tune the searched sub-networks (False: train their architectures from scratch, without
            recalibration; the benchmark's ``dna-scratch`` entry, which separates architecture from weights).
        companion: the search also searches (without returning it) a budget at this multiple of the largest
            searched budget, where that is at most half the seed: the largest budget's sub-networks then train
            beside larger ones. On mnist1d_hard (ResNet-18-1d x0.25, 3 seeds) a 5% budget searched alone fine-tuned to
            about 4 points below the same budget searched beside 10% and 25%, and beside 3% lower still
            (docs/methods/dna.md, "Budgets searched together"). 0 = off.
        init_depth_logit: starting keep logit of every skippable block (0: each block kept with p = 1/2 given
            the previous one, so search starts shallow-and-wide and the gradient adds depth where it pays);
            grown blocks never start above 0.
    """

    name: ClassVar[str] = "dna"
    description: ClassVar[str] = (
        "differentiable Markov width/depth gates on the seed (grown function-preservingly on request), "
        "sandwich-trained against the frozen seed, expected-cost budget loss; condenses or expands"
    )
    grow_width: float | None = None
    grow_depth: float | None = None
    grow_copies: str = "zero"
    units: int = 16
    search_epochs: int | None = None
    warmup_epochs: int = 1
    search_lr_scale: float = 1.0
    samples: int = 1
    arch_lr: float = 0.3
    cost_weight: float = 2.0
    kd: bool = True
    kd_weight: float = 1.0
    kd_teacher: str = "seed"
    inplace_teacher: str = "seed"
    init_depth_logit: float = 0.0
    one_level: bool = True
    arch_every: int = 1
    arch_batch: float = 1.0
    sample_pass: str = "auto"
    soft_pass: str = "auto"
    group_span: float = 0.25
    soft_tail: float = SOFT_TAIL
    split_batch: bool = True
    latency_table: bool = True
    finetune_warmup: float = 0.25
    finetune_clip: float | None = 10.0
    search_clip: float | None = 20.0
    inherit: bool = True
    every_budget: bool = True
    companion: float = 2.0

    def __post_init__(self) -> None:
        width, depth = 1.0 if self.grow_width is None else self.grow_width, self.grow_depth or 0.0
        if width < 1 or depth < 0 or self.units < 2 or self.samples < 0:
            raise NetfitError("dna needs grow_width >= 1, grow_depth >= 0, units >= 2 and samples >= 0")
        if self.grow_copies not in ("zero", "split"):
            raise NetfitError(f"dna grow_copies must be 'zero' or 'split', got {self.grow_copies!r}")
        if self.kd_teacher not in KD_TEACHERS:
            raise NetfitError(f"dna kd_teacher must be one of {', '.join(KD_TEACHERS)}, got {self.kd_teacher!r}")
        if not 0 <= self.finetune_warmup <= 1:
            raise NetfitError(f"dna finetune_warmup is a fraction of the fine-tune, got {self.finetune_warmup}")
        for name, clip in (("finetune_clip", self.finetune_clip), ("search_clip", self.search_clip)):
            if clip is not None and not clip > 0:
                raise NetfitError(f"dna {name} is a gradient norm > 0 or None, got {clip}")
        if self.inplace_teacher not in INPLACE_TEACHERS:
            raise NetfitError(
                f"dna inplace_teacher must be one of {', '.join(INPLACE_TEACHERS)}, got {self.inplace_teacher!r}"
            )
        for name, mode, modes in (
            ("sample_pass", self.sample_pass, PASS_MODES),
            ("soft_pass", self.soft_pass, SOFT_MODES),
        ):
            if mode not in (*modes, "auto"):
                raise NetfitError(f"dna {name} must be one of {', '.join((*modes, 'auto'))}, got {mode!r}")
        if self.soft_pass == "joint" and not self.one_level:
            raise NetfitError("dna soft_pass joint runs the architecture pass in the sample passes: needs one_level")
        if not 0 < self.arch_batch <= 1:
            raise NetfitError(f"dna arch_batch is a fraction of the batch in (0, 1], got {self.arch_batch}")
        if self.group_span < 0:
            raise NetfitError(f"dna group_span is a fraction of the supernet's cost >= 0, got {self.group_span}")
        if not 0 < self.soft_tail < 1:
            raise NetfitError(f"dna soft_tail is a keep probability in (0, 1), got {self.soft_tail}")
        if self.companion != 0 and self.companion <= 1:
            raise NetfitError(f"dna companion is a multiple > 1 of the largest budget (0 = off), got {self.companion}")
        if self.arch_every < 1:
            raise NetfitError(f"dna arch_every is a step count >= 1, got {self.arch_every}")
        if self.arch_lr <= 0 or self.cost_weight <= 0 or self.warmup_epochs < 0 or self.search_lr_scale <= 0:
            raise NetfitError("dna needs arch_lr > 0, cost_weight > 0, warmup_epochs >= 0 and search_lr_scale > 0")

    def search(self, seed: Seed, data, targets: list[Target], run) -> list[Candidate]:
        widened = [self.widens(t.limit, seed.metric_value) for t in targets]
        searched = [t for t, w in zip(targets, widened) if not w]
        staged = _staged_seed(seed, run) if searched else seed
        extra = self.companions(searched, seed.metric_value)
        if extra:
            run.log.write("dna-companion", limits=[t.limit for t in extra])
        net, arch, teacher = self._search(staged, data, searched + extra, run) if searched else (None, None, None)
        if teacher is None and self.kd:  # nothing searched: the seed is the only teacher there is
            teacher = CachedTeacher(seed.model)
        seed_depths = [len(s) for s in staged.model.stages] if net is not None and net.depths else None
        candidates, rows = [], iter(range(len(searched)))
        for target, widen in zip(targets, widened):
            cid = f"dna-{_slug(target.budget.spec)}"
            if widen:  # from the seed as given, as uniform widens it (a user model is not cut into stages)
                model, info = widened_network(seed, target, run)
            else:
                model, info = searched_network(net, arch, next(rows), target, staged, run)
                info["seed_depths"] = seed_depths
            run.log.write("subnet", id=cid, inherit=self.inherit, **info)
            if self.inherit:
                info["val_acc_inherited"] = inherited_accuracy(model, data, run, cid)
                settings = self._finetune_settings(run.config)
                model = finetune(model, data, run, cid, teacher, self.kd_weight, settings, info["val_acc_inherited"])
            else:
                model = finetune(from_scratch(model), data, run, cid, teacher, self.kd_weight)
            candidates.append(Candidate(cid, model, target, info))
        return candidates

    def _search(self, seed: Seed, data, targets: list[Target], run):
        """The search over the elastic space for ``targets``: (space, architecture logits, fine-tune teacher)."""
        grow_width, grow_depth = self.growth([t.limit for t in targets], seed.metric_value)
        probe = probe_inputs(data, seed.model)
        grown = grow(seed.model, seed.input_shape, grow_width, grow_depth, run.rng("dna-grow"), self.grow_copies, probe)
        net = ElasticNet(grown, seed.input_shape, units=self.units)
        seed_depths = [len(s) for s in seed.model.stages] if net.depths else None
        if self.latency_table and targets[0].metric == "latency_ms":
            self._install_latency_table(net, targets[0], run)
        metrics = [t.metric if t.metric in net.metrics else "macs" for t in targets]
        limits = [
            t.limit if m == t.metric else seed.macs * t.limit / seed.metric_value for t, m in zip(targets, metrics)
        ]
        arch = self.init_arch(net, limits, metrics, seed_depths)
        frozen = self._inplace_teacher(seed.model)
        run.log.write(
            "dna-space",
            inplace_teacher="seed" if frozen is not None else "largest",
            grow_width=grow_width,
            grow_depth=grow_depth,
            gates=len(net.gated),
            units=net.num_units,
            depths=net.depths,
            min_depths=net.min_depths,
            largest=net.cost(net.largest()),
            smallest=net.cost(net.smallest()),
        )
        # the engine trains in place and returns the same module; keep the space on whatever it returns
        net.model = net.space.model = self._train_supernet(net, arch, limits, metrics, data, run, frozen)
        return net, arch, self._kd_teacher(net, seed, data, run, frozen) if self.kd else None

    def _search_settings(self, config: TrainConfig) -> dict:
        """Training overrides of the search: its learning rate, the gradient clip where the training settings
        have none, and every epoch run with the last one's weights kept (``_search_eval_split``)."""
        settings = {"lr": config.lr * self.search_lr_scale, "keep_best": False, "early_stop_patience": None}
        return settings | _clip(config, self.search_clip)

    @staticmethod
    def _search_eval_split(config: TrainConfig, frozen: CachedTeacher | None) -> str | None:
        """What a search epoch evaluates: the raw largest network on validation, no measure of the search to stop
        on or keep by (batch norms not recalibrated), and none at all with the seed as in-place teacher, where the
        largest network never trains whole (its accuracy would be noise), unless a plateau schedule needs it."""
        return None if frozen is not None and config.schedule != "plateau" else "val"

    def _finetune_settings(self, config: TrainConfig) -> dict:
        """Training overrides of an inherited sub-network's fine-tune: the learning-rate warm-up, and the
        gradient clip where the training settings have none."""
        return {"warmup_epochs": self.finetune_warmup * config.epochs} | _clip(config, self.finetune_clip)

    @property
    def searches_expansion(self) -> bool:
        """Whether budgets above the seed are searched in a grown space (a growth option is given) rather than
        met by widening the seed uniformly (``widens``)."""
        return self.grow_width is not None or self.grow_depth is not None

    def widens(self, limit: float, seed_value: float) -> bool:
        """Whether a budget of ``limit`` (the seed's value of its metric: ``seed_value``) is met by widening the
        seed uniformly instead of searching (``searches_expansion``)."""
        return not self.searches_expansion and limit > seed_value

    def companions(self, searched: list[Target], seed_value: float) -> list[Target]:
        """The budget searched beside the largest searched one and never returned (``companion``): none above
        ``COMPANION_CEILING`` of the seed, or in a grown space."""
        if not searched or not self.companion or self.searches_expansion:
            return []
        largest = max(searched, key=lambda t: t.limit)
        limit = self.companion * largest.limit
        return [Target(largest.budget, limit)] if limit <= COMPANION_CEILING * seed_value else []

    def growth(self, limits: list[float], seed_value: float) -> tuple[float, float]:
        """(grow_width, grow_depth) of the searched space: (1, 0) by default (budgets above the seed are widened,
        not searched); with a growth option, the options where given, else just what the largest budget can
        use: with r its limit over the seed's value of the budget metric, width sqrt(r) (cost grows with width
        squared, so the largest network costs about r x the seed's), at most ``MAX_GROW_WIDTH``, and no depth
        growth. Growing depth as well (the default until 2026-12) made a supernet of 2.35x the seed for a 150%
        budget and a search step 1.4x dearer, for no accuracy (docs/methods/dna.md, "Costs and limits")."""
        if not self.searches_expansion:
            return 1.0, 0.0
        r = max(1.0, max(limits) / seed_value)
        width = self.grow_width if self.grow_width is not None else min(MAX_GROW_WIDTH, math.sqrt(r))
        depth = self.grow_depth if self.grow_depth is not None else 0.0
        return width, depth

    # ----- search
    @staticmethod
    def _install_latency_table(net: ElasticNet, target: Target, run) -> None:
        """Measure the supernet's per-layer latency table on the budget's device and backend, on the main
        process only; every process (and a resumed search) reads it back from the run directory."""
        path = run.out / "dna-latency-table.json"
        if is_main() and not path.exists():
            budget = target.budget
            table = measure_table(
                net, lambda m, shape: measure(m, shape, "latency_ms", device=budget.device, backend=budget.backend)
            )
            atomic_write_text(path, json.dumps(table.to_dict()))
            run.log.write("dna-latency-table", **table.summary())
        barrier()
        net.latency_table = LatencyTable.from_dict(json.loads(path.read_text()))

    def init_arch(self, net: ElasticNet, limits: list[float], metrics: list[str], seed_depths) -> ArchParams:
        """Start every budget's depth chains at ``init_depth_logit`` and its width chains at the uniform width
        whose expected cost is the middle of the dead zone."""
        depth = torch.zeros(len(limits), net.num_depth_logits)
        for k, (stage, j) in enumerate(net.blocks):
            depth[:, k] = self.init_depth_logit if j < seed_depths[stage] else min(0.0, self.init_depth_logit)
        width = torch.stack(
            [_uniform_logits(net, depth[0], (1 + DEAD_ZONE) / 2 * lim, m) for lim, m in zip(limits, metrics)]
        )
        return ArchParams(width, depth)

    step_fn = search_step  # the search step for engine.train: ``dna_step.search_step`` with these options

    def pass_layout(self, net: ElasticNet, limits: list[float], metrics: list[str]) -> PassLayout:
        """How the search step's passes group the budgets and cut the expected networks (``group_span``,
        ``soft_tail``)."""
        return PassLayout(budget_sizes(net, limits, metrics), self.group_span, self.soft_tail)

    def _inplace_teacher(self, seed_model: nn.Module) -> CachedTeacher | None:
        """The frozen seed as the search's in-place teacher (``inplace_teacher``), or None for the largest
        network. A copy: the teacher is frozen, and an ungrown supernet may share the seed's modules."""
        return CachedTeacher(copy.deepcopy(seed_model)) if self.inplace_teacher == "seed" else None

    def _train_supernet(
        self, net: ElasticNet, arch: ArchParams, limits, metrics, data, run, frozen: CachedTeacher | None
    ) -> nn.Module:
        epochs = self.search_epochs if self.search_epochs is not None else run.config.epochs
        optimizer = torch.optim.Adam(arch.parameters(), lr=self.arch_lr, betas=(0.5, 0.999))
        net.model.to(run.device)  # before attaching: the gates keep their indices on the model's device
        net.attach()
        try:
            opts = dataclasses.replace(self, **remembered_passes(self, net, arch, limits, metrics, data, run))
            result = run.train(
                net.model,
                data,
                "dna-search",
                epochs=epochs,
                overrides=self._search_settings(run.config),
                step_fn=opts.step_fn(net, arch, limits, metrics, run.seed, frozen),
                extra_optimizers=[optimizer],
                callbacks=[_ArchLog(net, arch, limits, metrics, run)],
                eval_split=self._search_eval_split(run.config, frozen),
            )
        finally:
            net.detach()
        return result.model

    # ----- result
    def _kd_teacher(self, net: ElasticNet, seed: Seed, data, run, frozen: CachedTeacher | None) -> CachedTeacher:
        """The fine-tunes' teacher, one cache of its logits for all of them (the search's, where its in-place
        teacher was the seed). The supernet's largest network has trained for the whole search on top of the
        seed's training, so it can be the better teacher where the seed was trained briefly (measured: not on the
        MNIST-10k ResNet-18 benchmark, docs/methods/dna.md); "best" lets the validation split decide."""
        if self.kd_teacher == "seed":
            return frozen if frozen is not None else CachedTeacher(seed.model)
        largest = copy.deepcopy(net.materialize(net.largest()))  # a copy: the teacher is frozen
        if self.kd_teacher == "largest":
            return CachedTeacher(largest)
        scores = {
            name: evaluate(model, data, "val", device=run.device)["accuracy"]
            for name, model in (("seed", seed.model), ("largest", largest))
        }
        choice = max(scores, key=scores.__getitem__)
        run.log.write("dna-kd-teacher", teacher=choice, val_accuracy=scores)
        return CachedTeacher(largest if choice == "largest" else seed.model)


def _clip(config: TrainConfig, clip: float | None) -> dict:
    """The ``grad_clip`` override of a phase: ``clip``, unless the training settings give one (or it is None)."""
    return {"grad_clip": clip} if config.grad_clip is None and clip is not None else {}


def _staged_seed(seed: Seed, run) -> Seed:
    """A user model with skippable residual blocks cut into stages (the same function), so its depth is searched
    and its candidates export as the "staged_graph" family; any other seed as it is."""
    staged = stage_blocks(seed.model, seed.input_shape)
    if staged is seed.model:
        return seed
    run.log.write("dna-blocks", depths=[len(stage) for stage in staged.stages])
    return dataclasses.replace(seed, model=staged)


class _ArchLog(Callback):
    """Logs each budget's most probable architecture and expected cost after every search epoch."""

    def __init__(self, net: ElasticNet, arch: ArchParams, limits, metrics, run) -> None:
        self.net, self.arch, self.limits, self.metrics, self.run = net, arch, limits, metrics, run

    def on_epoch_end(self, state, metrics: dict) -> None:
        for row, (limit, metric) in enumerate(zip(self.limits, self.metrics)):
            with torch.no_grad():
                expected = float(self.net.expected_cost(self.arch.width[row], self.arch.depth[row])[metric])
            _, rounded = self.net.most_probable(self.arch.width[row], self.arch.depth[row])
            self.run.log.write(
                "dna-arch",
                epoch=state.epoch,
                budget=row,
                expected_ratio=round(expected / limit, 4),
                units=rounded.units,
                depths=rounded.depths,
            )


def _uniform_logits(net: ElasticNet, depth_logits: torch.Tensor, goal: float, metric: str) -> torch.Tensor:
    """Width logits whose chains keep about the same fraction rho of every group, rho bisected to ``goal``."""

    def logits(rho: float) -> torch.Tensor:
        rows = []
        for n in net.num_units:
            u = torch.arange(n, dtype=torch.float)
            keep = torch.sigmoid(3.0 * (rho * n - u - 0.5)).clamp(1e-4, 1 - 1e-4)
            keep[0] = 1.0
            cond = (keep[1:] / keep[:-1]).clamp(1e-4, 1 - 1e-4)
            rows.append(torch.logit(cond))
        return torch.cat(rows)

    with torch.no_grad():
        lo, hi = 0.0, 1.0
        if float(net.expected_cost(logits(hi), depth_logits)[metric]) <= goal:
            return logits(hi)
        for _ in range(20):
            mid = (lo + hi) / 2
            if float(net.expected_cost(logits(mid), depth_logits)[metric]) <= goal:
                lo = mid
            else:
                hi = mid
    return logits(lo)


__all__ = ["DNA", "dead_zone_loss"]
