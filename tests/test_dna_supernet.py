"""DNA's elastic supernet: hard gates and sliced runs compute the sub-network, soft and batched passes equal
their references in outputs and gradients, the architecture step and the sandwich move what they should."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from _dna_models import elastic_supernet, float64_supernet, small_model
from netfit.engine.norms import frozen_norm_statistics
from netfit.methods.dna import DNA
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_hard_gates_compute_the_sliced_network(name):
    net = elastic_supernet(name, dropout=False)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, *net.input_shape)
    for _ in range(3):
        arch = net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen)
        sliced = net.materialize(arch).train()
        net.attach()
        try:
            net.set_hard(arch)
            with torch.no_grad():
                gated = net.model.train()(x)
        finally:
            net.detach()
        with torch.no_grad():
            assert torch.allclose(gated, sliced(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_sliced_runs_follow_the_supernets_mode(name):
    """A sliced pass runs in the supernet's train/eval mode, also after it changes between passes (the runner
    sets its skeletons' mode only when the supernet's changes): batch statistics in training, running ones in
    eval, as the materialised sub-network does."""
    net, shape = float64_supernet(name)
    for m in net.model.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics unlike any batch's
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    gen = torch.Generator().manual_seed(5)
    arch = net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen)
    x = torch.randn(8, *shape, dtype=torch.float64)
    for training in (True, False, True, False):
        net.model.train(training)
        plain = net.materialize(arch).double().train(training)
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0  # the sliced pass never writes statistics
        with torch.no_grad():  # plain's weights went through float32: agreement to 1e-6, not 1e-10
            torch.testing.assert_close(net.run_sliced(arch, x), plain(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_sliced_runs_match_the_gated_network_in_outputs_and_gradients(name, channels_last):
    """run_sliced computes the sub-network on slices of the supernet's parameters (leading channels as views,
    which keep a channels_last supernet's layout): the masked pass's outputs and gradients, and the supernet's
    normalisation statistics stay as they were."""
    net, shape = float64_supernet(name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, *shape, dtype=torch.float64)
    if channels_last:
        net.model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    archs = [net.smallest()] + [
        net.sample(torch.randn(net.num_width_logits) + 1, torch.randn(net.num_depth_logits), gen) for _ in range(2)
    ]

    def outputs_and_grads(run):
        net.model.zero_grad(set_to_none=True)
        out = run()
        out.square().sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad for p in net.model.parameters()]

    for arch in archs:
        net.model.train()
        stats = {n: b.clone() for n, b in net.model.named_buffers()}
        sliced, sliced_grads = outputs_and_grads(lambda arch=arch: net.run_sliced(arch, x))
        for n, b in net.model.named_buffers():
            assert torch.equal(b, stats[n]), n
        net.attach()
        try:
            net.set_hard(arch)
            with frozen_norm_statistics(net.model):
                gated, gated_grads = outputs_and_grads(lambda: net.model(x))
        finally:
            net.detach()
        assert torch.allclose(sliced, gated, atol=1e-10)
        for a, b in zip(sliced_grads, gated_grads):  # each relative to its tensor's scale
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "resnet18_1d", "user"])
def test_soft_sliced_pass_is_the_expected_network_without_its_negligible_tail(name):
    """run_soft_sliced drops the units and blocks whose keep probability is below the tail and gates the rest
    by their probabilities: the set_soft pass's outputs and gradients (weights and logits) where the dropped
    part's gates are negligible, on a skeleton narrower than the supernet; tail 0 keeps everything, exactly."""
    net, shape = float64_supernet(name)
    x = torch.randn(4, *shape, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    width = torch.randn(net.num_width_logits, generator=gen, dtype=torch.float64) + 2
    depth = torch.randn(net.num_depth_logits, generator=gen, dtype=torch.float64)
    start = 0
    for n in net.num_units:  # every gate's chain falls off (to ~1e-40) after a random unit, a block chain too
        cut = int(torch.randint(0, n - 1, (1,), generator=gen))
        width[start + cut : start + n - 1] = -90.0
        start += n - 1
    depth[: len(depth) // 2] = -90.0

    def outputs_and_grads(run):
        w, d = width.clone().requires_grad_(), depth.clone().requires_grad_()
        net.model.zero_grad(set_to_none=True)
        out = run(w, d)
        out.square().sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in net.model.parameters()]
        return out.detach(), [*grads, w.grad, torch.zeros_like(d) if d.grad is None else d.grad]

    def gated(w, d):
        net.attach()
        try:
            net.set_soft(w, d)
            with frozen_norm_statistics(net.model):
                return net.model(x)
        finally:
            net.detach()

    net.model.train()
    reference, reference_grads = outputs_and_grads(gated)
    for tail in (0.0, 1e-6):
        stats = {n: b.clone() for n, b in net.model.named_buffers()}
        sliced, sliced_grads = outputs_and_grads(lambda w, d, tail=tail: net.run_soft_sliced(w, d, x, tail))
        for n, b in net.model.named_buffers():
            assert torch.equal(b, stats[n]), n
        assert torch.allclose(sliced, reference, atol=1e-10)
        for a, b in zip(sliced_grads, reference_grads):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()
    skeleton = next(reversed(net._sliced.skeletons.values())).module  # the tail's, built last
    assert sum(t.numel() for t in skeleton.parameters()) < sum(p.numel() for p in net.model.parameters())


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar"])
def test_each_pass_builds_its_consumer_masks_once(name):
    """A pass builds each consumer's input mask once, shared by the consumers of the same channels (fewer masks
    than consumers: fewer launches on a GPU); the next pass, after the first one's backward freed its graph,
    builds its own from the gates set for it and computes the same gradients."""
    net, shape = float64_supernet(name)
    net.model.train()
    x = torch.randn(6, *shape, dtype=torch.float64)
    width = torch.randn(net.num_width_logits, dtype=torch.float64, requires_grad=True)
    depth = torch.randn(net.num_depth_logits, dtype=torch.float64, requires_grad=True)
    grads = []
    net.attach()
    try:
        for _ in range(2):
            width.grad = None
            net.set_soft(width, depth)
            with frozen_norm_statistics(net.model):
                net.model(x).square().sum().backward()
            grads.append(width.grad.clone())
            assert 0 < len(net._input_masks) < len(net._consumers)
    finally:
        net.detach()
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv2_cifar", "user"])
def test_one_pass_per_batch_matches_one_pass_per_budget(name):
    """set_soft_rows runs every budget's expected network on its share of the batch in one pass: the same
    outputs and gradients (weights and architecture logits) as one set_soft pass per share; set_hard_rows runs
    one sampled sub-network per share in one masked pass: the same as running each sliced on its share. Both
    again in one pass of the sliced union of the rows' networks (run_rows_sliced)."""
    net, shape = float64_supernet(name)
    net.model.train()
    x = torch.randn(10, *shape, dtype=torch.float64)
    shares = [slice(0, 4), slice(4, 7), slice(7, 10)]
    logits = [
        (torch.randn(net.num_width_logits, dtype=torch.float64), torch.randn(net.num_depth_logits, dtype=torch.float64))
        for _ in shares
    ]
    for w, d in logits:
        w.requires_grad_(), d.requires_grad_()
    params = list(net.model.parameters()) + [t for pair in logits for t in pair]

    def outputs_and_grads(run):
        for p in params:
            p.grad = None
        out = run()
        out.square().sum().backward()
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    def one_pass_per_share():
        outs = []
        for (w, d), part in zip(logits, shares):
            net.set_soft(w, d)
            outs.append(net.model(x[part]))
        return torch.cat(outs)

    def one_pass():
        net.set_soft_rows([(w, d, part) for (w, d), part in zip(logits, shares)])
        return net.model(x)

    gen = torch.Generator().manual_seed(1)
    archs = [net.sample(w.detach() + 1, d.detach(), gen) for w, d in logits[:2]] + [net.smallest()]

    def sliced_per_share():
        net.set_full()
        return torch.cat([net.run_sliced(arch, x[part]) for arch, part in zip(archs, shares)])

    def one_masked_pass():
        net.set_hard_rows(list(zip(archs, shares)))
        return net.model(x)

    def one_sliced_pass():  # the union of the rows' expected networks, sliced (tail 0: nothing left out)
        return net.run_rows_sliced(x, 0.0, soft=[(w, d, part) for (w, d), part in zip(logits, shares)])

    def one_sliced_hard_pass():
        return net.run_rows_sliced(x, 0.5, hard=list(zip(archs, shares)))

    stats = {n: b.clone() for n, b in net.model.named_buffers() if "running" in n}
    net.attach()
    try:
        with frozen_norm_statistics(net.model):
            soft = [outputs_and_grads(one_pass_per_share), outputs_and_grads(one_pass)]
            hard = [outputs_and_grads(sliced_per_share), outputs_and_grads(one_masked_pass)]
    finally:
        net.detach()
    soft_sliced, hard_sliced = outputs_and_grads(one_sliced_pass), outputs_and_grads(one_sliced_hard_pass)
    for n, b in net.model.named_buffers():
        if n in stats:
            assert torch.equal(b, stats[n]), n  # running statistics untouched
    assert any(g.abs().sum() > 0 for g in soft[1][1][-2 * len(shares) :])  # the logits did get gradients
    pairs = (soft, hard, (soft[0], soft_sliced), (hard[0], hard_sliced))
    for (apart, apart_grads), (together, together_grads) in pairs:
        assert torch.allclose(apart, together, atol=1e-10)
        for a, b in zip(apart_grads, together_grads):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()


@pytest.mark.parametrize("split_batch", [True, False])
def test_architecture_step_moves_every_budget_or_one(split_batch):
    """split_batch: every budget's logits get a gradient at every step; else only the round-robin budget's."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = small_model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    method = DNA(samples=0, warmup_epochs=0, split_batch=split_batch)
    arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    net.attach()
    try:
        out = method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
            StepContext(net.model.train(), net.model, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
        )
    finally:
        net.detach()
    moved = [bool(row.abs().sum() > 0) for row in arch.width.grad]
    assert moved == ([True] * 3 if split_batch else [False, True, False])  # step 4 -> budget 4 % 3 = 1
    assert out.metrics["expected_cost_ratio_min"] <= out.metrics["expected_cost_ratio_max"]


def test_architecture_pass_on_a_fraction_of_the_batch_is_that_fraction_alone():
    """arch_batch=0.5: the logits' gradient is the whole architecture pass's on the batch's first half (the
    budget loss unchanged), so the pass costs half as much."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = small_model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    grads = []
    for arch_batch, size in ((0.5, 16), (1.0, 8)):
        method = DNA(samples=0, warmup_epochs=0, arch_batch=arch_batch)
        arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(net.model.train(), net.model, x[:size], y[:size], 0, 0, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads.append((arch.width.grad, arch.depth.grad))
    for half, alone in zip(*grads):
        assert half.abs().sum() > 0 and torch.allclose(half, alone, atol=1e-6)


@pytest.mark.parametrize("one_level", [False, True])
def test_architecture_step_and_weight_gradients(one_level):
    """Alternating: the soft expected-network pass only trains the logits, the weights get the sandwich's
    gradients alone. One-level: the soft pass's weight gradients are added to the sandwich's."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = small_model("cnn_small")
    grown = grow(model, shape, 1.5, 0.5, np.random.default_rng(0))
    net = ElasticNet(grown, shape, units=4)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    grads, arch_grads = {}, {}
    for warmup in (0, 1):  # warmup 0: the architecture pass runs at epoch 0; warmup 1: it does not
        method = DNA(samples=0, warmup_epochs=warmup, one_level=one_level)
        arch = method.init_arch(net, [1e5], ["macs"], [len(s) for s in model.stages])
        grown.zero_grad(set_to_none=True)
        net.attach()
        try:
            method.step_fn(net, arch, [1e5], ["macs"], 0)(
                StepContext(grown.train(), grown, x, y, 0, 0, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads[warmup] = [p.grad.clone() for p in grown.parameters() if p.grad is not None]
        arch_grads[warmup] = arch.width.grad
    assert arch_grads[0] is not None and arch_grads[1] is None
    assert len(grads[0]) == len(grads[1])
    same = all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))
    assert same != one_level


@pytest.mark.parametrize("every_budget", [True, False])
def test_sandwich_trains_sub_networks_of_every_budget_or_one(every_budget, monkeypatch):
    """every_budget: each step draws ``samples`` sub-networks from EVERY budget's chains, each run on its own
    share of the batch (a budget's samples in one sliced pass with group_span 0; every budget's in one sliced
    pass when a group spans them); otherwise from one budget's chains (round-robin) on the whole batch."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = small_model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    limits = [1e5, 5e4, 2e4]
    method = DNA(samples=2, warmup_epochs=1, every_budget=every_budget, sample_pass="sliced", group_span=0.0)
    arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
    drawn, batches, grouped = [], [], []
    sample, run_sliced, run_rows = net.sample, net.run_sliced, net.run_rows_sliced
    monkeypatch.setattr(net, "sample", lambda w, d, gen: drawn.append(w) or sample(w, d, gen))
    monkeypatch.setattr(net, "run_sliced", lambda sub, x: batches.append(len(x)) or run_sliced(sub, x))

    def rows_pass(x, tail, soft=(), hard=()):
        grouped.append([len(x[p]) for _, p in hard])
        return run_rows(x, tail, soft, hard)

    monkeypatch.setattr(net, "run_rows_sliced", rows_pass)
    x, y = torch.randn(15, *shape), torch.randint(0, 10, (15,))

    def step(method):
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(net.model.train(), net.model, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()

    step(method)
    rows = [next(r for r in range(3) if w is arch.width[r] or torch.equal(w, arch.width[r])) for w in drawn]
    if every_budget:
        assert rows == [0, 0, 1, 1, 2, 2] and batches == [15]  # the smallest alone, on the whole batch
        assert grouped == [[5, 5]] * 3  # each budget's two samples in one pass
        batches.clear(), grouped.clear()
        step(dataclasses.replace(method, group_span=1.0))
        assert batches == [15] and grouped == [[5] * 6]  # every budget's samples at once
    else:
        assert rows == [1, 1] and grouped == [[15, 15]] and batches == [15]  # step 4 -> budget 4 % 3 = 1


def test_batched_grouped_and_joint_passes_give_the_same_gradients(monkeypatch):
    """sample_pass="batched" runs the i-th sample of every budget in one masked pass with per-sample gates,
    "sliced" with a group_span of the whole supernet every sample in one sliced pass of their union, and
    soft_pass "joint" runs the expected networks and the samples of a group in one pass (sliced samples) or every
    network of the step, the smallest included, in one masked pass (batched samples): the search step's weight
    and logit gradients are those of one sliced pass per budget (group_span 0) and a batched architecture pass,
    with the expected networks cut at a soft_tail that leaves units out (the batched pass gates them 0, the sliced
    ones do not compute them)."""
    from netfit.engine import StepContext, TrainConfig

    tail = 0.2
    torch.manual_seed(0)
    model, shape = small_model("resnet18_cifar")
    net = ElasticNet(grow(model, shape, 1.5, 0.5, np.random.default_rng(0)), shape, units=4)
    grown = net.model.double()  # float64: batch shares of 5 make float32 batch-norm rounding large
    limits = [2e6, 1e6, 4e5]
    x, y = torch.randn(15, *shape, dtype=torch.float64), torch.randint(0, 10, (15,))
    run_rows, passes = net.run_rows_sliced, []

    def rows_pass(x, tail, soft=(), hard=()):
        passes[-1].append((len(soft), len(hard)))
        return run_rows(x, tail, soft, hard)

    monkeypatch.setattr(net, "run_rows_sliced", rows_pass)
    forwards = []  # the batch of every pass through the supernet itself (a sliced pass runs a copy)
    grown.register_forward_pre_hook(lambda module, args: forwards[-1].append(len(args[0])))
    grads = []
    ways = [("sliced", "batched", 0.0), ("batched", "batched", 0.25), ("sliced", "batched", 1.0)]
    ways += [("batched", "sliced", 0.25), ("sliced", "sliced", 1.0), ("batched", "joint", 0.0)]
    ways += [("sliced", "joint", 0.0), ("sliced", "joint", 1.0)]
    for sample_pass, soft_pass, span in ways:
        method = DNA(
            samples=2, warmup_epochs=0, sample_pass=sample_pass, soft_pass=soft_pass, group_span=span, soft_tail=tail
        )
        arch = method.init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages]).double()
        assert min(float(p.min()) for p in net.unit_probs(arch.width.detach())) < tail  # the tail leaves units out
        grown.zero_grad(set_to_none=True)
        passes.append([]), forwards.append([])
        net.attach()
        try:
            method.step_fn(net, arch, limits, ["macs"] * 3, 0)(
                StepContext(grown.train(), grown, x, y, 0, 4, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        grads.append([p.grad.clone() for p in [*grown.parameters(), *arch.parameters()] if p.grad is not None])
    for other in grads[1:]:
        assert len(grads[0]) == len(other)
        for a, b in zip(grads[0], other):
            assert (a - b).abs().max() <= 1e-10 + 1e-8 * b.abs().max()
    assert passes[2] == [(0, 6)] and passes[4] == [(3, 0), (0, 6)]  # sliced apart: a pass each
    assert passes[-1] == [(3, 6)]  # joint: one pass for all of them
    assert passes[-2] == [(1, 2)] * 3  # span 0: per budget, its expected network and its two samples
    assert forwards[1] == [15, 15, 15, 15]  # batched: the largest, the expected networks, each sample index
    assert passes[-3] == [] and forwards[-3] == [15, 15 + 2 * 15 + 15]  # fused: the largest, then all at once


def test_seed_as_inplace_teacher_drops_only_the_largest_pass():
    """inplace_teacher=seed: a step's gradients are the sandwich step's without the largest network's
    cross-entropy (given the same teacher logits), no batch norm statistics move, and no logits are reported."""
    from netfit.engine import StepContext, TrainConfig

    model, shape = small_model("cnn_small")
    net = ElasticNet(grow(model, shape, 1.0, 0.0, np.random.default_rng(0)), shape, units=4)
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    limits = [1e5, 5e4]
    method = DNA(warmup_epochs=0, samples=1)
    arch = method.init_arch(net, limits, ["macs"] * 2, [len(s) for s in model.stages])
    model_ = net.model.train()

    def step(frozen=None):
        model_.zero_grad(set_to_none=True)
        arch.width.grad = arch.depth.grad = None
        net.attach()
        try:
            out = method.step_fn(net, arch, limits, ["macs"] * 2, 0, frozen)(
                StepContext(model_, model_, x, y, 0, 3, TrainConfig(), torch.device("cpu"))
            )
        finally:
            net.detach()
        return out, {n: p.grad.clone() for n, p in model_.named_parameters()}, arch.width.grad.clone()

    stats = {n: b.clone() for n, b in model_.named_buffers()}
    largest = model_(x)
    ce = torch.nn.functional.cross_entropy(largest, y)
    ce_grads = dict(zip([n for n, _ in model_.named_parameters()], torch.autograd.grad(ce, model_.parameters())))
    buffers = dict(model_.named_buffers())
    for name, value in stats.items():  # the pass above moved them: put them back
        buffers[name].copy_(value)
    sandwich, grads, width_grad = step()
    frozen_out, frozen_grads, frozen_width_grad = step(lambda inputs, ids, channels_last: largest.detach())
    assert sandwich.logits is not None and frozen_out.logits is None and torch.isfinite(frozen_out.loss)
    torch.testing.assert_close(frozen_width_grad, width_grad)
    for name, grad in grads.items():
        torch.testing.assert_close(frozen_grads[name] + ce_grads[name], grad, atol=1e-5, rtol=1e-4)
    before = {n: b.clone() for n, b in model_.named_buffers() if "running" in n}
    step(lambda inputs, ids, channels_last: largest.detach())
    assert before and all(torch.equal(buffers[n], v) for n, v in before.items())
