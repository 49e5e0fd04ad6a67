"""Tests of netfit.space.chains and of the elastic supernet's chain evaluation built on it."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import operation_count
from netfit.models import create_model
from netfit.space.chains import Chains
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow


def test_products_are_each_chains_own_running_product_to_the_bit():
    lengths = [3, 0, 1, 5, 2]
    chains = Chains(lengths)
    cond = torch.rand(4, sum(lengths), dtype=torch.float64, requires_grad=True)
    products = chains.products(cond)
    assert products.shape == (4, len(lengths), 5)
    reference = [c.cumprod(-1) for c in cond.split(lengths, -1)]
    for c, (length, ref) in enumerate(zip(lengths, reference)):
        assert torch.equal(products[:, c, :length], ref)
        assert not products[:, c, length:].any()  # nothing past a chain's end
    assert torch.equal(chains.flatten(products), torch.cat(reference, -1))
    weights = torch.rand_like(products)
    (grad,) = torch.autograd.grad((products * weights).sum(), cond)
    expected = sum((ref * weights[:, c, :n]).sum() for c, (n, ref) in enumerate(zip(lengths, reference)))
    (want,) = torch.autograd.grad(expected, cond)
    assert torch.allclose(grad, want, rtol=1e-12, atol=0)


def test_no_chains_and_empty_chains():
    assert Chains([]).products(torch.zeros(2, 0)).shape == (2, 0, 0)
    assert torch.equal(Chains([0, 0]).flatten(Chains([0, 0]).products(torch.zeros(0))), torch.zeros(0))


def _elastic(name: str, shape: tuple[int, ...], width_mult: float) -> ElasticNet:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=shape[0], width_mult=width_mult)
    return ElasticNet(grow(model, shape, 1.0, 0.5, np.random.default_rng(0)), shape, units=8)


def _reference_sample(net: ElasticNet, width: torch.Tensor, depth: torch.Tensor, gen: torch.Generator):
    """The draw chain by chain, as ElasticNet.sample defines it: one uniform per link, in the logits' order."""

    def draw(cond: torch.Tensor) -> int:
        return int((torch.rand(len(cond), generator=gen) < cond).long().cumprod(0).sum())

    widths = torch.sigmoid(width).split([n - 1 for n in net.num_units])
    units = [1 + draw(c) for c in widths]
    depths = torch.sigmoid(depth).split([d - m for d, m in zip(net.depths, net.min_depths)])
    return units, [m + draw(c) for m, c in zip(net.min_depths, depths)]


def test_elastic_probabilities_and_draws_equal_the_chain_by_chain_definition():
    net = _elastic("resnet18_cifar", (1, 8, 8), 0.25)
    gen = torch.Generator().manual_seed(3)
    width = torch.randn(2, net.num_width_logits, generator=gen) + 1
    depth = torch.randn(2, net.num_depth_logits, generator=gen)
    for p, c in zip(net.unit_probs(width), torch.sigmoid(width).split([n - 1 for n in net.num_units], -1)):
        assert torch.equal(p, torch.cat([torch.ones(2, 1), c.cumprod(-1)], -1))
    chains = torch.sigmoid(depth).split([d - m for d, m in zip(net.depths, net.min_depths)], -1)
    assert torch.equal(net.block_probs(depth), torch.cat([c.cumprod(-1) for c in chains], -1))
    for seed in range(10):
        arch = net.sample(width[0], depth[0], torch.Generator().manual_seed(seed))
        units, depths = _reference_sample(net, width[0], depth[0], torch.Generator().manual_seed(seed))
        assert (arch.units, arch.depths) == (units, depths)


def test_the_expected_cost_issues_as_many_operations_whatever_the_number_of_gates_and_stages():
    """Its forward and backward are a fixed set of tensor operations: a supernet of twice the gates costs no more
    launches on a GPU (chain by chain, the expected cost issued more operations than a dense training step)."""

    def operations(net: ElasticNet) -> int:
        width = torch.zeros(3, net.num_width_logits, requires_grad=True)
        depth = torch.zeros(3, net.num_depth_logits, requires_grad=True)

        def cost_and_gradient() -> None:
            cost = net.expected_cost(width, depth)
            (cost["macs"] + cost["params"]).sum().backward()

        return operation_count(cost_and_gradient)

    small, large = _elastic("resnet18_cifar", (1, 8, 8), 0.25), _elastic("resnet34_cifar", (1, 8, 8), 0.25)
    assert len(large.gated) > len(small.gated) and len(large.blocks) > len(small.blocks)
    assert operations(small) == operations(large)


def test_the_elastic_net_leaves_the_models_mode_as_given():
    """Its tracing and costing run in eval mode; a supernet handed over for training must stay in training mode
    (a benchmark timed the gated passes in eval mode, where the gates and per-share norms do not act)."""
    for training in (True, False):
        model = create_model("resnet18_cifar", num_classes=10, in_chans=1, width_mult=0.25).train(training)
        net = ElasticNet(model, (1, 8, 8), units=4)
        assert net.model.training == training
