"""How DNA's search step runs its passes over several budgets' networks, and which way is faster here.

Each step runs every budget's expected network on its share of the batch (the architecture pass, soft gates)
and sub-networks sampled from every budget's chains on their shares. Either runs "batched" (one pass of the
whole supernet with per-sample gates: one pass at the supernet's MACs) or "sliced" (one pass per share on a
sliced copy of the supernet: each at its own network's MACs, plus a pass's overhead per share). "joint" runs
both in the same passes: sliced, one per group of budgets (``sliced_passes``), or batched, ONE pass of every
network of the step, the smallest included (``fused_pass``: where a step costs its kernel launches rather than
its MACs, as these small networks do on a GPU, one pass instead of three). Sampled
sub-networks give the same outputs and gradients both ways; a sliced expected network leaves out the units and
blocks whose keep probability is below a tail (``PassLayout.tail``; the batched pass gates them 0, so both ways
give the same outputs and gradients there too). Which is faster depends on the network and the device, so
``choose_passes`` times both (``DNA.sample_pass`` / ``DNA.soft_pass`` "auto").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..cost.latency import device_sync, time_calls
from ..distill import kd_loss
from ..engine import amp_dtype, channels_last, channels_last_layout
from ..engine.distributed import is_distributed
from ..engine.norms import frozen_norm_statistics
from ..fileio import atomic_write_text
from ..space.elastic import ElasticNet
from ..tuning import machine, remembered_choice

if TYPE_CHECKING:
    from .dna import DNA, ArchParams

PASS_MODES = ("batched", "sliced")  # how a step runs several budgets' networks (DNA.sample_pass, DNA.soft_pass)
SOFT_MODES = (*PASS_MODES, "joint")  # joint: in the sample passes' passes (sliced_passes, fused_pass)
SOFT_TAIL = 1e-3  # the default PassLayout.tail (DNA.soft_tail)


@dataclass(frozen=True)
class PassLayout:
    """How a step's passes over several budgets' networks run: which budgets share a sliced pass (``sizes``,
    each budget's cost as a fraction of the supernet's, ``budget_sizes``; ``span``, ``pass_groups``) and where an
    expected network is cut (``tail``: ``DNA.soft_tail``, the units and blocks it keeps below it are left out)."""

    sizes: list[float]
    span: float
    tail: float = SOFT_TAIL


def batch_shares(rows, size: int) -> list[tuple[int, slice]]:
    """Each budget row's share of a batch of ``size`` samples: consecutive slices of ``tensor_split``'s sizes (the
    first ``size % len(rows)`` one sample larger); rows left without a sample are dropped."""
    base, extra = divmod(size, len(rows))
    shares, start = [], 0
    for i, row in enumerate(rows):
        stop = start + base + (i < extra)
        if stop > start:
            shares.append((row, slice(start, stop)))
        start = stop
    return shares


def fraction(part: slice, batch: torch.Tensor) -> float:
    return len(batch[part]) / len(batch)


def budget_sizes(net: ElasticNet, limits: list[float], metrics: list[str]) -> list[float]:
    """Each budget as a fraction of the supernet's largest network's cost in its metric: about what its
    networks cost to run, relative to the supernet (``pass_groups``)."""
    largest = net.cost(net.largest())
    return [limit / float(largest[metric]) for limit, metric in zip(limits, metrics)]


def pass_groups(rows: list[int], sizes: list[float], span: float) -> list[list[int]]:
    """Which shares (positions in ``rows``, their budget rows) a sliced pass runs together: from the largest
    budget down, each share joins the current group while its budget's size is within ``span`` of the group's
    first (so a group costs at most ``span`` x the supernet per sample above what its shares cost apart, and
    saves a pass's fixed costs per share); ``span`` 0 runs each budget on its own."""
    groups: list[list[int]] = []
    for k in sorted(range(len(rows)), key=lambda k: -sizes[rows[k]]):
        if groups and sizes[rows[groups[-1][0]]] - sizes[rows[k]] <= span:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def sliced_passes(
    net: ElasticNet, arch: ArchParams | None, soft, x_soft, drawn, shares, samples: int, x, layout: PassLayout
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The architecture pass (every ``soft`` share's budget's expected network on its share of ``x_soft``) and
    the sample passes (the ``drawn`` sub-networks, ``samples`` per share of ``x``), sliced: per group of budgets
    (``pass_groups`` over both passes' budgets) ONE pass of the slices of the union of all their networks, on
    the group's inputs stacked, each gated by its own network and normalised on its own statistics (so it
    computes what a pass per network would, with one pass's fixed costs per group). Returns the expected
    networks' logits of ``x_soft`` (None without ``soft``) and each sample's logits of ``x``."""
    budgets = sorted({r for r, _ in soft} | {r for r, _ in shares})
    pieces: dict = {}  # output (-1: the soft pass, i: the i-th samples) -> its pieces' logits and batch positions
    for group in pass_groups(budgets, layout.sizes, layout.span):
        members = {budgets[k] for k in group}
        soft_rows, hard_rows, inputs, taken, size = [], [], [], [], 0
        for key, batch, row_shares in [(-1, x_soft, soft)] + [(i, x, shares) for i in range(samples)]:
            for s, (r, part) in enumerate(row_shares):
                if r in members:  # the soft rows first, as run_rows_sliced stacks them
                    local = slice(size, size + part.stop - part.start)
                    if key < 0:
                        soft_rows.append((arch.width[r], arch.depth[r], local))
                    else:
                        hard_rows.append((drawn[s * samples + key][0], local))
                    inputs.append(batch[part])
                    taken.append((key, part, local))
                    size = local.stop
        if not inputs:  # no samples drawn (``samples`` 0) and no architecture pass
            continue
        out = net.run_rows_sliced(torch.cat(inputs), layout.tail, soft_rows, hard_rows)
        for key, part, local in taken:
            pieces.setdefault(key, []).append((out[local], torch.arange(part.start, part.stop)))

    def logits(key: int) -> torch.Tensor:
        outs, positions = zip(*pieces[key])
        return torch.cat(outs)[torch.cat(positions).argsort().to(x.device)]

    return (logits(-1) if soft else None), [logits(i) for i in range(samples)]


def fused_pass(
    net: ElasticNet, model, arch: ArchParams | None, soft, x_soft, drawn, shares, samples: int, x, tail: float
) -> tuple[torch.Tensor | None, list[torch.Tensor], torch.Tensor]:
    """Every network of a step in ONE masked pass through ``model``: each ``soft`` share's budget's expected
    network on its share of ``x_soft`` (the architecture pass; none without ``soft``), the i-th ``drawn``
    sub-network of every share on its share of ``x`` for each i < ``samples``, and the smallest network on the
    whole ``x``, on their inputs stacked, each gated by its own network and normalised on its own statistics
    (``ElasticNet.set_rows``): what a pass per network computes, with one pass's launches and at the supernet's
    MACs for every sample. Returns the expected networks' logits of ``x_soft`` (None without ``soft``), each
    sample's logits of ``x`` and the smallest's."""
    start = len(x_soft) if soft else 0
    soft_rows = [(arch.width[r], arch.depth[r], part) for r, part in soft] if soft else []
    hard_rows = []
    for i in range(samples + 1):  # the i-th sample of every share, then the smallest
        rows = drawn[i::samples] if i < samples else [(net.smallest(), slice(0, len(x)))]
        hard_rows += [(sub, slice(start + part.start, start + part.stop)) for sub, part in rows]
        start += len(x)
    net.set_rows(soft_rows, hard_rows, tail)
    out = model(torch.cat(([x_soft] if soft else []) + [x] * (samples + 1)))
    net.set_full()
    head = len(x_soft) if soft else 0
    pieces = out[head:].split(len(x))
    return (out[:head] if soft else None), list(pieces[:samples]), pieces[samples]


def soft_pass(
    net: ElasticNet, model, arch: ArchParams, shares, x: torch.Tensor, mode: str, layout: PassLayout
) -> torch.Tensor:
    """Every share's budget's expected network on its share of ``x`` (the logits of the whole ``x``): "batched"
    in one pass with per-sample gates, through ``model`` (the DDP wrapper under torchrun); "sliced", on one
    process, one pass per group of budgets (``pass_groups``) on the slices of the union of its networks."""
    if mode == "sliced" and not is_distributed():
        return sliced_passes(net, arch, shares, x, [], [], 0, x, layout)[0]
    net.set_soft_rows([(arch.width[r], arch.depth[r], part) for r, part in shares], layout.tail)
    return model(x)


def draw_samples(net: ElasticNet, arch: ArchParams, shares, samples: int, gen: torch.Generator) -> list:
    """``samples`` architectures drawn from each share's budget chains, as (architecture, batch slice)."""
    return [(net.sample(arch.width[r], arch.depth[r], gen), part) for r, part in shares for _ in range(samples)]


def samples_loss(outs: list[torch.Tensor], shares, teacher: torch.Tensor, samples: int) -> torch.Tensor:
    """The sampled sub-networks' distillation loss: ``outs[i]`` holds the i-th sample of every share on its
    share of the batch; each share weighs by its fraction of the batch, the sandwich's ``1 + samples`` passes
    equally (the smallest is the other one)."""
    total = sum(kd_loss(out[p], teacher[p]) * fraction(p, teacher) for out in outs for _, p in shares)
    return total / (1 + samples)


def sample_passes(
    net: ElasticNet, model, drawn, shares, samples: int, x, teacher, backward, mode: str, layout: PassLayout
) -> None:
    """The sampled sub-networks distilled from ``teacher`` and back-propagated through ``backward``: "batched"
    runs the i-th sample of every share in one masked pass; "sliced" all samples of each group of budgets
    (``pass_groups``) in one pass of the slices of their union (``sliced_passes``)."""
    if not drawn:
        return
    if len(shares) > 1 and mode == "batched":
        for i in range(samples):
            net.set_hard_rows(drawn[i::samples])
            backward(samples_loss([model(x)], shares, teacher, samples))
            net.set_full()
        return
    if is_distributed():  # every pass through the DDP wrapper, one sub-network at a time
        for sub, part in drawn:
            loss = kd_loss(run_subnet(net, sub, x[part], model), teacher[part])
            backward(loss * fraction(part, teacher) / (1 + samples))
        return
    outs = sliced_passes(net, None, [], None, drawn, shares, samples, x, layout)[1]  # no logits needed
    backward(samples_loss(outs, shares, teacher, samples))


def run_subnet(net: ElasticNet, sub, x: torch.Tensor, model) -> torch.Tensor:
    """A sub-network's logits on ``x``: sliced (its own cost) on one process; gated through the DDP wrapper
    ``model`` under torchrun, whose gradient reduction only sees passes through the wrapper."""
    if not is_distributed():
        return net.run_sliced(sub, x)
    net.set_hard(sub)
    return model(x)


def time_passes(
    net: ElasticNet,
    arch: ArchParams,
    x: torch.Tensor,
    samples: int,
    seed: int,
    amp_dtype,
    layout: PassLayout,
    repeats: int = 3,
    arch_every: int = 1,
) -> dict[str, dict[str, float]]:
    """Median seconds of one step's sample passes and of its architecture pass for every budget (forward and
    backward, under ``amp_dtype`` autocast where given), batched and sliced, of both sliced together
    (``sliced_passes``), of the smallest network's sliced pass, and of the step's networks in one batched pass
    (``fused_pass``), on the batch ``x``; each sample repeat draws new sub-networks (a sliced pass pays for
    building a new sub-network's layers). Timed in training mode, as the search runs them (batch norms on batch
    statistics, each share's its own); the gradients they leave are cleared and the normalisation statistics
    untouched: ``{"sample_pass": {mode: s}, "soft_pass": {mode: s}, "smallest": s, "fused": {"with_arch": s,
    "samples_only": s}}``, the soft pass's "joint" the time of both passes sliced in one (``sliced_passes``),
    "fused" with and without the architecture pass (the steps without it: timed only with ``arch_every`` > 1)."""
    model, device = net.model, x.device
    was_training, counters = model.training, [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    counts = [c.clone() for c in counters]
    model.train()
    shares = batch_shares(range(len(arch.width)), len(x))
    gen = torch.Generator().manual_seed(seed)
    seconds: dict[str, dict[str, float]] = {"sample_pass": {}, "soft_pass": {}}
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def median(fn) -> float:
        return sorted(time_calls(fn, 1, repeats, device_sync(device)))[repeats // 2]

    def new_draws():  # new sub-networks for every call (the warm-up's included), as every step draws, untimed
        return iter([draw_samples(net, arch, shares, samples, gen) for _ in range(repeats + 1)])

    # no trace left in the running statistics or the random stream (dropout draws from it): a search's result
    # must not depend on whether its passes were timed or read back from the tuning cache
    rng_devices = [device] if device.type == "cuda" else []
    with frozen_norm_statistics(model), torch.random.fork_rng(devices=rng_devices):
        with torch.no_grad():
            net.set_full()
            teacher = model(x).float()
        labels = teacher.argmax(1)
        for mode in PASS_MODES:
            draws = new_draws()

            def samples_pass(mode=mode, draws=draws) -> None:
                with autocast:
                    sample_passes(
                        net, model, next(draws), shares, samples, x, teacher, lambda t: t.backward(), mode, layout
                    )

            def architecture_pass(mode=mode) -> None:
                with autocast:
                    out = soft_pass(net, model, arch, shares, x, mode, layout)
                    F.cross_entropy(out, labels).backward()
                net.set_full()

            seconds["sample_pass"][mode] = median(samples_pass)
            seconds["soft_pass"][mode] = median(architecture_pass)

        draws = new_draws()

        def both_passes(draws=draws) -> None:
            with autocast:
                out, outs = sliced_passes(net, arch, shares, x, next(draws), shares, samples, x, layout)
                (F.cross_entropy(out, labels) + samples_loss(outs, shares, teacher, samples)).backward()

        seconds["soft_pass"]["joint"] = median(both_passes)

        def smallest_pass() -> None:
            with autocast:
                F.cross_entropy(net.run_sliced(net.smallest(), x), labels).backward()

        seconds["smallest"] = median(smallest_pass)
        seconds["fused"] = {}
        for name, with_arch in (("with_arch", True), ("samples_only", False))[: 1 + (arch_every > 1)]:
            draws = new_draws()

            def one_pass(draws=draws, with_arch=with_arch) -> None:
                with autocast:
                    soft = shares if with_arch else []
                    drawn = next(draws)
                    out, outs, small = fused_pass(net, model, arch, soft, x, drawn, shares, samples, x, layout.tail)
                    loss = samples_loss(outs, shares, teacher, samples) + kd_loss(small, teacher) / (1 + samples)
                    (loss + (F.cross_entropy(out, labels) if with_arch else 0)).backward()

            seconds["fused"][name] = median(one_pass)
    model.train(was_training)
    for counter, count in zip(counters, counts):
        counter.copy_(count)
    model.zero_grad(set_to_none=True)
    arch.zero_grad(set_to_none=True)
    net.set_full()
    return seconds


def choose_passes(
    net: ElasticNet,
    arch: ArchParams,
    x: torch.Tensor,
    samples: int,
    seed: int,
    layout: PassLayout,
    amp_dtype=None,
    pinned: dict[str, str] | None = None,
    joint: bool = True,
    arch_every: int = 1,
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """The fastest way to run a step's passes on this device and batch (``time_passes``), as
    ``{"sample_pass": mode, "soft_pass": mode}`` (the ``pinned`` ones as given; the soft pass "joint" only where
    the step can run it so: ``joint``), and the seconds measured. The architecture pass runs on one step in
    ``arch_every``; the smallest network's sliced pass is part of every step but the fused one's (batched
    joint). Measured on CPU at initialisation: joint on the mnist1d ResNets and MobileNetV2, sliced apart on the
    MNIST-10k ResNet-18; batched on an H200 (before "joint" existed)."""
    seconds = time_passes(net, arch, x, samples, seed, amp_dtype, layout, arch_every=arch_every)

    def per_step(sample: str, soft: str) -> float:
        if soft == "joint" and sample == "batched":  # every network of a step in one pass
            fused = seconds["fused"]
            alone = (arch_every - 1) * fused["samples_only"] if arch_every > 1 else 0.0
            return (fused["with_arch"] + alone) / arch_every
        if soft == "joint":  # both passes at once on the steps with the architecture pass
            alone = (arch_every - 1) * seconds["sample_pass"]["sliced"]
            return (seconds["soft_pass"]["joint"] + alone) / arch_every + seconds["smallest"]
        return seconds["sample_pass"][sample] + seconds["soft_pass"][soft] / arch_every + seconds["smallest"]

    def options(name: str, modes: tuple[str, ...]) -> tuple[str, ...]:
        return (pinned[name],) if pinned and name in pinned else modes

    combos = [
        (sample, soft)
        for sample in options("sample_pass", PASS_MODES)
        for soft in options("soft_pass", SOFT_MODES)
        if soft != "joint" or joint
    ]
    sample, soft = min(combos, key=lambda combo: per_step(*combo))
    rounded = {
        name: round(modes, 5) if isinstance(modes, float) else {k: round(v, 5) for k, v in modes.items()}
        for name, modes in seconds.items()
    }
    return {"sample_pass": sample, "soft_pass": soft}, rounded


def remembered_passes(opts: DNA, net: ElasticNet, arch: ArchParams, limits, metrics, data, run) -> dict[str, str]:
    """The ``sample_pass`` and ``soft_pass`` of the search ``opts`` runs, "auto" measured (``choose_passes``):
    every way timed on a training batch (a few steps' worth of passes) the first time this machine searches this
    supernet with these settings, then read back from netfit's tuning cache (``netfit.tuning``: runs of one seed
    stay reproducible); kept in the run directory so that a resumed search uses the same. Batched where the
    choice does not arise: torchrun (DDP needs every pass through its wrapper), and for the samples one budget
    or ``every_budget=False`` (each step's samples come from one budget)."""
    single = len(arch.width) < 2 or not opts.every_budget
    passes = {
        "sample_pass": "batched" if single or is_distributed() else opts.sample_pass,
        "soft_pass": "batched" if is_distributed() else opts.soft_pass,
    }
    if "auto" not in passes.values():
        return passes
    path = run.out / "dna-passes.json"
    if not path.exists():
        x = data.prepare(data.train.tensors[0][: run.config.batch_size], train=False).to(run.device)
        amp = amp_dtype(run.config, run.device)  # the search's autocast, as training sets it
        supernet = [(n, tuple(p.shape)) for n, p in net.model.named_parameters()]
        key = {**machine(run.device), "supernet": supernet, "input": tuple(x.shape), "amp": str(amp)}
        layout = opts.pass_layout(net, limits, metrics)
        key |= {"budgets": len(arch.width), "samples": opts.samples, "depths": net.depths, "fixed": passes}
        key |= {"sizes": [round(v, 4) for v in layout.sizes], "group_span": layout.span}
        key |= {"soft_tail": layout.tail}
        joint = opts.one_level  # the step can run the architecture pass in the sample passes (dna_step)
        key |= {"joint": joint, "arch_every": opts.arch_every, "timed": "joint sliced and batched"}
        layout_cl = channels_last(run.config, run.device, data.input_shape, net.model)  # as the search will train
        key |= {"channels_last": layout_cl}
        pinned = {k: v for k, v in passes.items() if v != "auto"}

        def measure() -> tuple[str, dict]:
            batch = x.contiguous(memory_format=torch.channels_last) if layout_cl else x
            with channels_last_layout(net.model, layout_cl):
                fastest, seconds = choose_passes(
                    net, arch, batch, opts.samples, run.seed, layout, amp, pinned, joint, opts.arch_every
                )
            return json.dumps(fastest), seconds

        combos = [json.dumps({"sample_pass": a, "soft_pass": b}) for a in PASS_MODES for b in SOFT_MODES]
        choice, seconds = remembered_choice("dna-passes", key, combos, measure)
        atomic_write_text(path, json.dumps({**json.loads(choice), "seconds": seconds}))
        run.log.write("dna-passes", **json.loads(choice), measured_seconds=seconds)
    kept = json.loads(path.read_text())
    return {name: kept[name] for name in passes}
