"""SpiderNet: straight-through gates, deadheading (gone from compute and cost), function-preserving edge splits,
the published mutation rule, the hardware rejection rule, plain export, resume between iterations, bad input."""

import json

import numpy as np
import pytest
import torch

from netfit.api import adapt
from netfit.budget import Budget
from netfit.cli import main
from netfit.cost import count_cost
from netfit.engine import RunLog, TrainConfig
from netfit.errors import BudgetInfeasibleError, NetfitError
from netfit.export import export_onnx, load_model, save_model
from netfit.methods import Target
from netfit.methods import spider as spider_module
from netfit.methods.spider import SpiderNetSearch, accepted_by_metrics, rank_mutations
from netfit.models.spidernet import SPIDER_OPS, SpiderNet, initial_arch
from netfit.run import Run
from netfit.space.spider import (
    GatedEdge,
    GateMonitor,
    SpiderSupernet,
    deadhead,
    gated_edges,
    hard_gate,
    live_nodes,
    plain_network,
    random_arch,
    split_edge,
)
from netfit.trainfree import metric_batch, unsaturated_span

FAST = {"epochs": 1, "seed_epochs": 1, "progress": False, "train": {"batch_size": 128}}
TINY = {
    "channels": 4,
    "reductions": 1,
    "iterations": 2,
    "mutation_candidates": 2,
    "metric_samples": 4,
    "ops": ["sep_conv_3x3", "max_pool_3x3", "skip_connect"],
}


def tiny_net(ndim: int = 1, nodes: int = 1, seed: int = 0) -> SpiderSupernet:
    torch.manual_seed(seed)
    return SpiderSupernet(initial_arch(ndim, 1, 3, channels=4, reductions=1, nodes=nodes)).eval()


def sample(ndim: int = 1, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, *([12] if ndim == 1 else [8, 8]), generator=torch.Generator().manual_seed(1))


def close(net: SpiderSupernet, cell: int, key: str, op: str, off_fraction: float = 1.0) -> None:
    """Close one op's gate and record it as closed on ``off_fraction`` of 100 counted steps."""
    edge = net.cells[cell].edges[key]
    with torch.no_grad():
        edge.gates[op].fill_(-0.01)
        edge.off[list(edge.ops).index(op)] = 100 * off_fraction
        net.gate_steps.fill_(100)


def test_hard_gate_is_straight_through():
    w = torch.tensor([0.01, -0.01, 0.0], requires_grad=True)
    g = hard_gate(w)
    assert g.tolist() == [1.0, 0.0, 0.0]
    (g * torch.tensor([3.0, 5.0, 7.0])).sum().backward()
    assert w.grad.tolist() == [3.0, 5.0, 7.0]  # closed gates still learn what their op would add


def test_closed_gate_learns_but_its_op_does_not():
    torch.manual_seed(0)
    edge = GatedEdge(1, 4, 1, ["sep_conv_3x3", "avg_pool_3x3"])
    with torch.no_grad():
        edge.gates["sep_conv_3x3"].fill_(-0.01)
    x = torch.randn(2, 4, 10)
    out = edge(x)
    torch.testing.assert_close(out, edge.ops["avg_pool_3x3"](x))  # the closed op contributes nothing
    out.pow(2).sum().backward()
    assert edge.gates["sep_conv_3x3"].grad.abs() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in edge.ops["sep_conv_3x3"].parameters())


def test_gate_monitor_clamps_and_counts_by_name():
    net = tiny_net()
    edge = net.cells[0].edges["0_1"]
    with torch.no_grad():
        edge.gates["sep_conv_5x5"].fill_(-0.3)
        edge.gates["avg_pool_3x3"].fill_(0.3)
    GateMonitor(net).on_step_end(None, None)
    assert edge.gates["sep_conv_5x5"].item() == pytest.approx(-0.05)
    assert edge.gates["avg_pool_3x3"].item() == pytest.approx(0.05)
    counts = dict(zip(edge.ops, edge.off.tolist()))
    assert counts["sep_conv_5x5"] == 1 and sum(counts.values()) == 1 and float(net.gate_steps) == 1


@pytest.mark.parametrize("ndim", [1, 2])
def test_deadheaded_op_is_gone_from_compute_and_cost(ndim):
    net, x = tiny_net(ndim), sample(ndim)
    close(net, 1, "0_1", "sep_conv_3x3")
    close(net, 1, "0_2", "max_pool_3x3", off_fraction=0.5)  # closed now, but not often enough: kept
    op_params = sum(p.numel() for p in net.cells[1].edges["0_1"].ops["sep_conv_3x3"].parameters())
    before_out, before_cost = net(x), count_cost(net, x.shape[1:])
    removed = deadhead(net)
    assert removed["ops"] == [[1, "0_1", "sep_conv_3x3", 1.0]]
    edge = net.cells[1].edges["0_1"]
    assert "sep_conv_3x3" not in edge.ops and "sep_conv_3x3" not in edge.gates and len(edge.off) == len(edge.ops)
    assert "max_pool_3x3" in net.cells[1].edges["0_2"].ops
    torch.testing.assert_close(net(x), before_out)
    after = count_cost(net, x.shape[1:])
    assert after.params == before_cost.params - op_params - 1  # the op and its gate
    assert after.macs < before_cost.macs
    assert not any(k.startswith("cells.1.edges.0_1.ops.sep_conv_3x3") for k in net.state_dict())


def test_deadheading_removes_input_less_nodes_and_keeps_cells_connected():
    net, x = tiny_net(), sample()
    for op in SPIDER_OPS:
        close(net, 0, "0_1", op)  # node 1 loses its only input
    for key in ("0_2", "1_2"):
        for op in SPIDER_OPS:
            close(net, 2, key, op)  # every op of cell 2 closed
    removed = deadhead(net)
    assert [0, 1] in removed["nodes"] and net.cells[0].nodes == [0, 2] and list(net.cells[0].edges) == ["0_2"]
    cell = net.cells[2]
    into_output = [e for key, e in cell.edges.items() if key.endswith("_2")]
    assert sum(len(e.ops) for e in into_output) == 1  # one op kept: the output still has an input
    assert net(x).shape == (4, 3)


@pytest.mark.parametrize("ndim", [1, 2])
def test_split_edge_starts_function_preserving_and_trainable(ndim):
    net, x = tiny_net(ndim), sample(ndim)
    before = net(x)
    new = split_edge(net, 1, "0_2", SPIDER_OPS)  # a reduction cell's edge from its input
    cell = net.cells[1]
    assert cell.nodes == [0, 1, new, 2] and {"0_2", f"0_{new}", f"{new}_2"} <= set(cell.edges)
    assert set(cell.edges[f"0_{new}"].ops) == set(SPIDER_OPS) and cell.edges[f"0_{new}"].stride == 2
    torch.testing.assert_close(net(x), before)
    net.train()
    net(x).pow(2).sum().backward()
    down = cell.edges[f"{new}_2"]
    assert down.ops["sep_conv_3x3"][-1].weight.grad.abs().sum() > 0  # the silent path still learns
    assert down.gates["max_pool_3x3"].grad is not None


def test_split_edge_without_preserve_changes_the_function():
    net, x = tiny_net(), sample()
    before = net(x)
    split_edge(net, 0, "0_2", SPIDER_OPS, preserve=False)
    assert not torch.allclose(net(x), before)


def test_plain_network_equals_supernet_and_round_trips(tmp_path):
    net, x = tiny_net(2), sample(2)
    close(net, 0, "0_1", "sep_conv_3x3")
    close(net, 2, "1_2", "skip_connect")
    plain = plain_network(net).eval()
    assert type(plain) is SpiderNet and not any("gates" in k or "aux" in k for k in plain.state_dict())
    assert "sep_conv_3x3" not in plain.cells[0].edges["0_1"].ops
    torch.testing.assert_close(plain(x), net(x))
    save_model(plain, tmp_path / "m", input_shape=(1, 8, 8))
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(x), plain(x))
    pytest.importorskip("onnxruntime")
    assert export_onnx(loaded, tmp_path / "m" / "model.onnx", (1, 8, 8))["max_abs_diff"] < 1e-4


def test_plain_network_of_a_cell_with_every_gate_closed_computes_zeros():
    net, x = tiny_net(), sample()
    for key in net.cells[2].edges:
        for op in SPIDER_OPS:
            with torch.no_grad():
                net.cells[2].edges[key].gates[op].fill_(-0.01)
    plain = plain_network(net).eval()
    assert plain.cells[2].describe()["edges"] == {"0_2": ["none"]}
    torch.testing.assert_close(plain(x), net(x))


def test_published_mutation_rule():
    base = {"ntk_cond": 100.0, "linear_regions": 50}
    assert accepted_by_metrics({"ntk_cond": 90.0, "linear_regions": 51}, base)
    assert accepted_by_metrics({"ntk_cond": 100.0, "linear_regions": 51}, base)  # "must not rise"
    assert not accepted_by_metrics({"ntk_cond": 101.0, "linear_regions": 60}, base)
    assert not accepted_by_metrics({"ntk_cond": 90.0, "linear_regions": 50}, base)  # "must rise"
    records = [
        {"id": "a", "ntk_cond": 95.0, "linear_regions": 52},
        {"id": "b", "ntk_cond": 80.0, "linear_regions": 70},
        {"id": "c", "ntk_cond": None, "linear_regions": 60},  # singular kernel: ranked last on the NTK
    ]
    assert [r["id"] for r in rank_mutations(records)] == ["b", "a", "c"]  # a and c tie on rank sum: draw order


def _run(tmp_path, input_shape=(1, 12)) -> Run:
    config = TrainConfig(epochs=1, batch_size=32).validate()
    return Run(tmp_path, config, 0, torch.device("cpu"), input_shape, False, False, RunLog(tmp_path / "log.jsonl"))


class _Data:
    """A few random 1-D samples, shaped like a DataBundle for the metric minibatch."""

    def __init__(self) -> None:
        self.train = torch.utils.data.TensorDataset(sample(1, 8), torch.zeros(8, dtype=torch.long))

    def prepare(self, x, train, generator=None):
        return x


@pytest.mark.parametrize("metric", ["params", "memory_bytes"])
def test_hardware_rule_rejects_splits_that_break_the_budget(tmp_path, monkeypatch, metric):
    # every split passes the metric rule here (fake scores), so only the budget decides
    calls, spans = iter(range(100)), []

    def fake_score(*args, span, **kwargs):
        spans.append(span)
        return {"ntk_cond": 1.0, "linear_regions": next(calls)}

    monkeypatch.setattr(spider_module, "score", fake_score)
    run, method = _run(tmp_path), SpiderNetSearch(mutation_candidates=3, **{"channels": 4, "reductions": 1})
    net = tiny_net()
    current = run.measure(plain_network(net), metric)
    target = Target(Budget.parse("1MB memory" if metric == "memory_bytes" else "1M params"), current)
    measure = spider_module.cost_fn(run, target)
    same, applied = method._mutate(net, _Data(), run, 0, measure, limit=current)  # no room for anything
    assert applied == [] and same is net
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    scored = [e for e in events if e["event"] == "spider-mutation"]
    assert len(scored) == 3 and all(e["metrics_ok"] and not e["fits"] for e in scored)
    # the base and every trial counted regions at one span, the one at which the base's count can still rise
    assert set(spans) == {scored[0]["region_span"]} == {unsaturated_span(net, metric_batch(_Data(), 16, seed=0))}
    grown, applied = method._mutate(net, _Data(), run, 1, measure, limit=float("inf"))
    assert len(applied) == 1 and sum(len(c.nodes) for c in grown.cells) == sum(len(c.nodes) for c in net.cells) + 1


def test_adapt_end_to_end_exports_every_iteration(tmp_path, digits):
    result = adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=TINY, **FAST)
    rows = result.summary["candidates"]
    assert [r["id"] for r in rows] == ["spider-it0", "spider-it1"]
    assert all(r["arch"]["family"] == "spidernet" and r["within_budget"] for r in rows)
    assert rows[0]["info"]["iteration"] == 0 and "mutations" in rows[0]["info"]
    x = torch.randn(2, 1, 8, 8)
    loaded = load_model(tmp_path / "spider-it1")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.models["spider-it1"].eval().cpu()(x))


def test_resume_between_iterations(tmp_path, digits, monkeypatch):
    real = SpiderNetSearch._train

    def crash_in_iteration_1(self, net, data, run, k, teacher):
        if k == 1:
            raise KeyboardInterrupt
        return real(self, net, data, run, k, teacher)

    monkeypatch.setattr(SpiderNetSearch, "_train", crash_in_iteration_1)
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=TINY, **FAST)
    monkeypatch.setattr(SpiderNetSearch, "_train", real)
    ckpt = tmp_path / "ckpt" / "spider-it0.pt"
    stamp = ckpt.stat().st_mtime_ns
    saved = json.loads((tmp_path / "spider" / "it0.json").read_text())
    resumed = adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=TINY, resume=True, **FAST)
    rows = resumed.summary["candidates"]
    assert [r["id"] for r in rows] == ["spider-it0", "spider-it1"]
    assert ckpt.stat().st_mtime_ns == stamp  # iteration 0 was not trained again
    assert rows[0]["info"] == saved["info"]
    grown = sum(len(c["nodes"]) for c in saved["arch"]["cells"])
    assert sum(len(c["nodes"]) for c in rows[1]["arch"]["cells"]) <= grown  # it1 grew from the saved supernet


def test_final_phase_trains_the_last_network_alone(tmp_path, digits):
    options = {**TINY, "final_epochs": 1}
    result = adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=options, **FAST)
    rows = result.summary["candidates"]
    assert [r["id"] for r in rows] == ["spider-it0", "spider-it1", "spider-final"]
    assert rows[2]["arch"] == rows[1]["arch"] and rows[2]["info"]["final_epochs"] == 1
    assert "iteration" not in rows[2]["info"] and rows[2]["within_budget"]
    last, final = result.models["spider-it1"].state_dict(), result.models["spider-final"].state_dict()
    assert any(not torch.equal(last[k], final[k]) for k in last)  # trained further, from the last weights


def test_resume_in_the_final_phase(tmp_path, digits, monkeypatch):
    options = {**TINY, "final_epochs": 1}
    real = spider_module.finetune

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(spider_module, "finetune", crash)
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=options, **FAST)
    monkeypatch.setattr(spider_module, "finetune", real)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").glob("spider-it*.pt")}
    resumed = adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=options, resume=True, **FAST)
    assert [r["id"] for r in resumed.summary["candidates"]] == ["spider-it0", "spider-it1", "spider-final"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ckpt").glob("spider-it*.pt")} == stamps


@pytest.mark.parametrize(
    "options, total, expected",
    [({"iterations": 6}, 40, (5, 10)), ({"iterations": 6, "final_epochs": 0}, 30, (5, 0)), ({}, 1, (1, 0))],
)
def test_epochs_split_between_iterations_and_the_final_phase(options, total, expected):
    assert SpiderNetSearch(**options).epoch_split(total) == expected


@pytest.mark.parametrize(
    "options, match",
    [
        ({"reductions": -1}, "reductions"),
        ({"channels": 1}, "channels"),
        ({"ops": ["sep_conv_3x3", "nope"]}, "ops"),
        ({"ops": []}, "ops"),
        ({"gate_init": 0.1}, "gate_init"),
        ({"deadhead_threshold": 1.5}, "deadhead_threshold"),
        ({"iterations": 0}, "iterations"),
        ({"final_epochs": -1}, "final_epochs"),
        ({"metric_samples": 1}, "metric_samples"),
        ({"stem_stride": 0}, "stem_stride"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(NetfitError, match=match):
        SpiderNetSearch(**options)


def test_infeasible_budget_and_cli_errors(tmp_path, digits, capsys):
    with pytest.raises(BudgetInfeasibleError, match="below the smallest network"):
        adapt("cnn_small", digits, "100 params", "spider", out=tmp_path / "a", method_options=TINY, **FAST)
    code = main(["adapt", "--model", "cnn_small", "--method", "spider", "-x", "channels=1", "--out", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_initial_arch_counts():
    arch = initial_arch(2, 3, 10, channels=8, reductions=2, nodes=2)
    assert [c["reduction"] for c in arch["cells"]] == [False, True, False, True, False]
    assert [c["channels"] for c in arch["cells"]] == [8, 16, 16, 32, 32]
    assert all(len(c["edges"]) == 6 and all(len(v) == 7 for v in c["edges"].values()) for c in arch["cells"])
    assert sum(1 for _ in gated_edges(SpiderSupernet(arch))) == 30
    assert np.isfinite(SpiderNet(arch)(torch.randn(2, 3, 16, 16)).detach().numpy()).all()


def test_stem_stride_runs_the_cells_on_half_size_maps():
    shape = (1, 16, 16)
    nets = {s: SpiderSupernet(initial_arch(2, 1, 3, channels=4, reductions=1, stem_stride=s)) for s in (1, 2)}
    sizes = {s: net.forward_features(torch.randn(2, *shape)).shape[-1] for s, net in nets.items()}
    assert sizes == {1: 8, 2: 4}
    macs = {s: count_cost(plain_network(net), shape).macs for s, net in nets.items()}
    assert macs[2] < macs[1] / 3
    split_edge(nets[2], 0, "0_2", SPIDER_OPS)  # a grown network and its plain form keep the stride
    plain = plain_network(nets[2])
    assert plain.describe()["stem_stride"] == 2 and SpiderNet(plain.describe()).stem[0].stride == (2, 2)
    legacy = {k: v for k, v in initial_arch(1, 1, 3, channels=4, reductions=1).items() if k != "stem_stride"}
    assert SpiderNet(legacy).describe()["stem_stride"] == 1  # specs saved before the option load as before
    assert random_arch(initial_arch(2, 1, 3, channels=4, stem_stride=2), np.random.default_rng(0))["stem_stride"] == 2


def test_random_arch_draws_valid_networks_of_the_same_space():
    template = initial_arch(1, 1, 3, channels=4, reductions=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = random_arch(template, rng, max_nodes=3)
        assert [c["channels"] for c in arch["cells"]] == [c["channels"] for c in template["cells"]]
        for cell in arch["cells"]:
            assert live_nodes(cell["nodes"], cell["edges"]) == cell["nodes"]
            assert all(ops and set(ops) <= set(SPIDER_OPS) for ops in cell["edges"].values())
        assert SpiderNet(arch)(sample()).shape == (4, 3)


def test_kd_distils_every_iteration_and_the_final_phase(tmp_path, digits):
    options = {**TINY, "final_epochs": 1, "kd": True}
    result = adapt("cnn_small", digits, "100%", "spider", out=tmp_path, method_options=options, **FAST)
    assert [r["id"] for r in result.summary["candidates"]] == ["spider-it0", "spider-it1", "spider-final"]
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    searched = [e for e in events if e["event"] == "epoch" and e["phase"].startswith("spider-it")]
    assert searched and all(e["kd"] > 0 for e in searched)  # the seed's (cached) logits as targets
