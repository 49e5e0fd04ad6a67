"""The benchmark harness: the peer method (with an in-process stand-in tool), result tables, plot and checks."""

import sys
import types
from dataclasses import asdict, replace

import pytest

from benchmarks import run as bench
from benchmarks.common import environment, seed_network
from benchmarks.peers import TOOLS, Tool
from benchmarks.suite import SUITES, Case, check, entries
from benchmarks.suite_report import _run_times, plot, to_markdown
from netfit.api import adapt, train_model
from netfit.errors import NetfitError
from netfit.space.subnet import SubnetSpace


@pytest.fixture
def stand_in_tool(monkeypatch):
    """A peer 'tool' that prunes uniformly with netfit's own space (or, variant 'over', does nothing)."""

    def prune(job):
        if job.variant == "over":
            return job.model
        space = SubnetSpace(job.model, job.example.shape[1:])
        return space.fit_width(job.macs, job.limit)[1]

    module = types.ModuleType("benchmarks.peers.stand_in")
    module.prune = prune
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(TOOLS, "stand_in", Tool("stand_in", ("uniform", "over"), ()))
    from benchmarks.peers import method  # registers "peer"

    return method


@pytest.fixture(scope="module")
def digits_seed(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("seed")
    train_model("cnn_small", digits, out=out, epochs=1, progress=False)
    return out


def test_peer_output_is_finetuned_and_within_budget(stand_in_tool, digits_seed, digits, tmp_path):
    result = adapt(
        digits_seed, digits, "40%,20%", "peer", out=tmp_path / "r", epochs=1, seed_weights=digits_seed,
        method_options={"tool": "stand_in", "variant": "uniform"}, progress=False,
    )  # fmt: skip
    candidates = result.summary["candidates"]
    assert [c["id"] for c in candidates] == ["stand_in-uniform-40pct", "stand_in-uniform-20pct"]
    assert all(c["within_budget"] for c in candidates)
    seed_macs = result.summary["seed"]["macs"]
    assert candidates[1]["macs"] <= 0.2 * seed_macs < candidates[0]["macs"] <= 0.4 * seed_macs
    # the tool's network is rebuilt as a plain netfit model (loadable from its arch.json)
    assert type(result.models["stand_in-uniform-20pct"]).__module__.startswith("netfit.")


def test_peer_over_budget_is_an_error(stand_in_tool, digits_seed, digits, tmp_path):
    with pytest.raises(NetfitError, match="above the limit"):
        adapt(
            digits_seed, digits, "50%", "peer", out=tmp_path / "r", epochs=1, seed_weights=digits_seed,
            method_options={"tool": "stand_in", "variant": "over"}, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [({"tool": "nope"}, "unknown peer tool"), ({"tool": "torch_pruning", "variant": "l3-uniform"}, "variants are")],
)
def test_peer_options_are_checked(stand_in_tool, options, message):
    with pytest.raises(NetfitError, match=message):
        stand_in_tool.Peer(**options)


def _payload(over_budget: bool = False) -> dict:
    suite = SUITES["quick"]
    case = suite.cases[0]
    rows = [
        {"entry": entry, "budget_pct": b, "accuracy": acc, "macs": int(b * 1000), "params": 10 * b,
         "within_budget": not over_budget, "search_over_seed": 2.0, "budgets_in_run": 2}
        for entry, acc in (("uniform", 0.9), ("dna", 0.92), ("torch_pruning:l1-uniform", 0.91))
        for b in case.budgets_for(entry)
    ]  # fmt: skip
    runs = [
        {"case": asdict(case), "seed": s, "seed_network": {"macs": 100_000, "params": 1000, "accuracy": 0.95},
         "rows": rows, "failed": {"nni-l1@10": "RuntimeError: boom"}, "dna_epoch_ratio": 3.0, "throughput": {},
         "dna_step_ratios": {"dense_seed": 1.0, "supernet_largest": 2.5, "dna_search_step": 7.0}}
        for s in (0, 1)
    ]  # fmt: skip
    return {"suite": "quick", "settings": asdict(suite), "environment": environment(), "runs": runs}


def test_markdown_table_and_plot(tmp_path):
    payload = _payload()
    markdown = to_markdown(payload)
    assert "## digits_cnn_small_w1" in markdown
    assert "| 50% | dna | 92.00 ± 0.00 | -3.00 | - | 50,000 | 500 | 2 |" in markdown
    assert markdown.index("| 50% | dna") < markdown.index("| 50% | uniform")  # best first
    # the headline: dna against the best other entry and the best peer; peers never run above 100%
    assert "| 50% | 92.00 ± 0.00 | uniform 90.00 ± 0.00 | torch_pruning:l1-uniform 91.00 ± 0.00 | +1.00 | -4.00 |" in (
        markdown
    )
    assert "| 150% | 92.00 ± 0.00 | uniform 90.00 ± 0.00 | - | +2.00 | - |" in markdown
    # an entry that ran on one seed only shows no spread rather than a made-up 0.00
    payload["runs"][1]["rows"] = [r for r in payload["runs"][1]["rows"] if ":" not in r["entry"]]
    assert "| torch_pruning:l1-uniform 91.00 (1 seed) |" in to_markdown(payload)
    assert "`nni-l1` at 10%: RuntimeError: boom" in markdown
    assert "search epoch / dense seed epoch: 3.00x" in markdown
    assert "supernet largest 2.50x, dna search step 7.00x." in markdown
    # the cut-out networks' accuracy before fine-tuning, and flagged candidates, are shown where recorded
    for run in payload["runs"]:
        for row in run["rows"]:
            if row["entry"] == "uniform":
                row |= {"val_acc_inherited": 0.8, "warning": "near chance: ..." if row["budget_pct"] == 10 else None}
    markdown = to_markdown(payload)
    assert "| 50% | uniform | 90.00 ± 0.00 | -5.00 | 80.0 |" in markdown
    assert "| 10% | uniform | 90.00 ± 0.00 (2 flagged) |" in markdown
    plot(payload, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_unsound_rows_are_flagged_whoever_made_them():
    """Peers' results carry no warnings of their own: the suite flags a chance-level row itself, and keeps the
    warning a netfit method gave."""
    payload = _payload()
    rows = payload["runs"][0]["rows"]  # both seeds share these row objects
    peer = next(r for r in rows if r["entry"].startswith("torch_pruning") and r["budget_pct"] == 10)
    peer["accuracy"] = 0.1
    own = next(r for r in rows if r["entry"] == "uniform" and r["budget_pct"] == 50)
    own["warning"] = "diverged: ..."
    bench.flag_unsound(payload)
    assert peer["warning"].startswith("near chance")
    assert own["warning"] == "diverged: ..."
    assert all(r["warning"] is None for r in rows if r is not peer and r is not own)
    assert "| 10% | torch_pruning:l1-uniform | 10.00 ± 0.00 (2 flagged) |" in to_markdown(payload)


def test_check_flags_missing_entries_and_overruns():
    payload = _payload()
    with pytest.raises(AssertionError, match="no result for uniform-scratch at 50%"):
        check(payload)
    payload = _payload(over_budget=True)
    for run in payload["runs"]:
        run["rows"] = [r for r in run["rows"] if r["entry"] == "dna"]
        run["failed"] = {name.replace(":", "-"): "x" for name in entries(SUITES["quick"]) if name != "dna"}
    with pytest.raises(AssertionError, match="over budget"):
        check(payload)


def test_results_merge_by_case_and_seed():
    earlier = _payload()
    stale = replace(SUITES["quick"].cases[1], epochs=99)  # a case since reconfigured
    earlier["runs"].append(dict(earlier["runs"][0], case=asdict(stale), seed=0))
    new = _payload()
    new["runs"] = [dict(new["runs"][1], seed=2, seed_network={"macs": 100_000, "params": 1000, "accuracy": 0.5})]
    merged = bench.merge(earlier, new)
    assert [(Case(**r["case"]).key, r["seed"]) for r in merged["runs"]] == [
        ("digits_cnn_small_w1", 0), ("digits_cnn_small_w1", 1), ("digits_cnn_small_w1", 2)
    ]  # fmt: skip
    assert merged["settings"]["seeds"] == [0, 1, 2]
    # a rerun of one (case, seed) replaces the earlier one
    again = bench.merge(merged, dict(new, runs=[dict(new["runs"][0], seed=0)]))
    assert [r["seed_network"]["accuracy"] for r in again["runs"]] == [0.5, 0.95, 0.5]


def test_a_partial_rerun_keeps_the_other_entries_of_the_same_seed_network():
    earlier = _payload()
    partial = _payload()
    partial["runs"] = [dict(partial["runs"][0], rows=[r for r in partial["runs"][0]["rows"] if r["entry"] == "dna"])]
    partial["runs"][0]["failed"] = {}
    partial["runs"][0]["seed_network"] = dict(partial["runs"][0]["seed_network"], seconds=9.9)  # timing differs
    merged = bench.merge(earlier, partial)
    rerun = next(r for r in merged["runs"] if r["seed"] == partial["runs"][0]["seed"])
    assert sorted({r["entry"] for r in rerun["rows"]}) == sorted({r["entry"] for r in earlier["runs"][0]["rows"]})
    assert "dna" not in rerun["carried_over"] and rerun["carried_over"]
    assert rerun["failed"] == earlier["runs"][0]["failed"]
    assert "Carried over from an earlier invocation" in to_markdown(merged)
    # another seed network: nothing is carried over
    other = dict(partial["runs"][0], seed_network={"macs": 1, "params": 1, "accuracy": 0.1})
    merged = bench.merge(earlier, dict(partial, runs=[other]))
    rerun = next(r for r in merged["runs"] if r["seed"] == other["seed"])
    assert {r["entry"] for r in rerun["rows"]} == {"dna"} and "carried_over" not in rerun


def test_run_time_sums_an_entrys_split_runs():
    row = {"entry": "nni:l1", "search_over_seed": 1.5}
    runs = [
        {"seed": 0, "rows": [row | {"run": "nni-l1@50"}, row | {"run": "nni-l1@10"}]},
        {"seed": 1, "rows": [row | {"run": "nni-l1", "search_over_seed": 2.0}] * 2},  # one run, two budgets
    ]
    assert _run_times(runs) == {"nni:l1": [3.0, 2.0]}


def test_case_selection():
    suite = bench.select_cases(SUITES["mnist"], ["mnist1d"])
    assert [c.key for c in suite.cases] == ["mnist1d_resnet18_1d_w0.25", "mnist1d_resnet18_1d_w0.5"]
    with pytest.raises(SystemExit, match="no case matches"):
        bench.select_cases(SUITES["mnist"], ["imagenet"])


def test_every_case_gives_everyone_the_same_epochs():
    for suite in SUITES.values():
        assert set(entries(suite)) >= {"uniform", "uniform-scratch", "random", "dna"}
        for case in suite.cases:
            budgets = len(case.budgets)
            dna_total = case.dna_search_epochs + budgets * case.dna_finetune_epochs
            assert case.dna_finetune_epochs > 0 and dna_total <= budgets * case.epochs
            assert all(b <= 100 for b in case.budgets_for("torch_pruning:l1-uniform"))


def test_a_failing_budget_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    """One budget that cannot be met (or diverges) costs only itself: the entry reruns per budget."""
    calls = []

    def fake(label, case, suite, seed, seed_dir, out, budgets):
        calls.append(list(budgets))
        if 10 in budgets:
            return "TrainingError: loss became nan"
        out.mkdir(parents=True)
        (out / "result.json").write_text("{}")
        return None

    monkeypatch.setattr(bench, "_netfit_process", fake)
    suite = SUITES["quick"]
    case = suite.cases[0]  # budgets 50, 10, 150
    done = bench.run_entry("uniform", case, suite, 0, tmp_path / "seed", tmp_path / "uniform")
    assert calls == [[50, 10, 150], [50], [10], [150]]
    assert [d.name for d in done] == ["uniform@50", "uniform@150"]
    assert bench.failures(tmp_path) == {"uniform@10": "TrainingError: loss became nan"}
    # a rerun reuses what finished and does not retry what failed
    calls.clear()
    assert [d.name for d in bench.run_entry("uniform", case, suite, 0, tmp_path / "seed", tmp_path / "uniform")] == [
        "uniform@50",
        "uniform@150",
    ]
    assert calls == []


def test_user_models_netfit_side_and_table():
    """The netfit half of benchmarks/user_models.py (Torch-Pruning is not installed in CI: its row is faked)."""
    from benchmarks import user_models

    models, shape = user_models.zoo()
    senet = user_models.netfit_side(models["SENet"], shape)
    assert (senet["prunable"], senet["groups"]) == (10, 12) and senet["smallest_runs"]
    assert senet["smallest_fraction"] == senet["smallest_macs"] / senet["seed_macs"] <= 0.1
    assert {f["reason"] for f in senet["frozen"]} == set(user_models.BOUNDARY)
    fixed = user_models.netfit_side(models["FixedSplitNet"], shape)
    assert (fixed["prunable"], fixed["groups"]) == (2, 5)
    tp_row = {
        "groups": 8, "prunable": 7, "smallest_fraction": 0.4, "smallest_runs": True, "eligible_list": [],
        "one_shot": {"smallest_fraction": 0.9, "smallest_runs": True},
        "structural": {"smallest_fraction": 0.002, "smallest_runs": True, "refused": []},
    }  # fmt: skip
    payload = {
        "settings": {"steps": 100},
        "environment": {"device": "CPU", "torch": "x"},
        "netfit": {"SENet": senet, "FixedSplitNet": fixed},
        "torch_pruning": {"version": "1.6.1", "rows": {"SENet": tp_row, "FixedSplitNet": {"error": "tracing: boom"}}},
    }
    table = user_models.to_markdown(payload)
    assert "| SENet | 1,979,648 | 10/12 | 0.2 | 7/8 | 40.0 | 90.0 | 0.2 | only input and logits |" in table
    assert "| FixedSplitNet | 14,376 | 2/5 | 13.9 | error | error | error | error | 'split' at node" in table
    assert "netfit 0.22% (met)" in table and "- FixedSplitNet: `tracing: boom`" in table


def test_a_seed_network_depends_on_the_seed_alone(digits):
    import torch

    first = seed_network("cnn_small", digits, 1.0, 3)
    torch.rand(100)  # whatever ran before in the process
    again, other = seed_network("cnn_small", digits, 1.0, 3), seed_network("cnn_small", digits, 1.0, 4)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_markdown_gives_dna_over_uniform_in_wall_and_cpu_time():
    payload = _payload()
    for run in payload["runs"]:
        for row in run["rows"]:
            row["search_over_seed"] = {"dna": 4.0, "uniform": 2.0}.get(row["entry"], 1.0)
            row["cpu_seconds"] = {"dna": 30.0, "uniform": 10.0}.get(row["entry"], 5.0)
    assert "DNA's whole run / uniform's (per seed, mean and range): wall 2.00x (2.00-2.00), CPU 3.00x" in (
        to_markdown(payload)
    )
    first = payload["runs"][0]
    first["rows"] = [{**row, "cpu_seconds": None} for row in first["rows"]]  # logged before CPU time was
    for row in first["rows"]:
        row["search_over_seed"] *= 3 if row["entry"] == "uniform" else 1  # this seed's uniform run took 3x longer
    assert "wall 1.33x (0.67-2.00), CPU 3.00x (3.00-3.00)." in to_markdown(payload)  # CPU: the other seed only


def test_dna_steps_times_every_option_set_side_by_side(digits, monkeypatch):
    """``benchmarks.dna_steps`` times the default first, then each variant with its options, in one table."""
    import argparse

    from benchmarks import dna_steps

    calls = []

    def fake_ratios(model, data, batch_size, seed, budgets, options, repeats, device, count_operations):
        calls.append(options)
        step = 4.0 if options.get("grow_depth") else 3.0
        timed = {"dense_seed_ms": 10.0} if device == "cuda" else {}  # what step_ratios adds on CUDA
        ops = {"dense_seed": 1.0, **dict.fromkeys(dna_steps.PASSES, 1.25), "dna_search_step": 2.5}
        ops["dense_seed_count"] = 300
        ratios = {"dense_seed": 1.0, **dict.fromkeys(dna_steps.PASSES, 1.5), "dna_search_step": step} | timed
        return ratios | ({"operations": ops} if count_operations else {})

    monkeypatch.setattr(dna_steps, "step_ratios", fake_ratios)
    monkeypatch.setattr(dna_steps, "load_data", lambda name: digits)
    args = argparse.Namespace(
        data="digits", model="cnn_small", width=1.0, budgets=[50.0, 150.0], variant=[["deeper", "grow_depth=0.5"]],
        batch_size=8, repeats=1, seed=0, device="cpu",
    )  # fmt: skip
    rows = dna_steps.measure(args)
    assert calls == [{}, {"grow_depth": 0.5}]
    markdown = dna_steps.to_markdown(args, rows, environment())
    assert "| default | - | 1.50x" in markdown and "| deeper | grow_depth=0.5 |" in markdown and "**4.00x**" in markdown
    assert "dense seed step's 300" in markdown and "| default | 1.25x" in markdown and "**2.50x**" in markdown
    assert "images/s" not in markdown
    args.device = "cuda"  # throughput: batch 8 in 10 ms = 800 images/s; the search step at 3x and 4x that
    markdown = dna_steps.to_markdown(args, dna_steps.measure(args), environment())
    assert "| default | 800 | 267 |" in markdown and "| deeper | 800 | 200 |" in markdown


def test_operation_count_counts_what_computes_not_views():
    import torch

    from benchmarks.common import operation_count

    x = torch.ones(4, 3, requires_grad=True)
    assert operation_count(lambda: x.sum()) == 1
    assert operation_count(lambda: x.t()[:2].unsqueeze(0).sum()) == 1  # views compute nothing
    assert operation_count(lambda: x.t().contiguous().sum()) == 2  # a copy does
    assert operation_count(lambda: (x * 2).sum().backward()) > operation_count(lambda: (x * 2).sum())


def test_blockwise_ranking_noise_ceiling_from_repeated_trainings():
    from benchmarks.blockwise import _ranking

    def arch(rating: float, macs: int, accuracies: list[float]) -> dict:
        return {"rating": rating, "macs": macs, "accuracies": accuracies, "accuracy": sum(accuracies) / 2}

    # the second training ranks the architectures in reverse: one training says nothing about another
    ranked = [arch(0.4, 10, [0.90, 0.96]), arch(0.3, 20, [0.92, 0.94]), arch(0.2, 30, [0.94, 0.92])]
    ranking = _ranking(ranked)
    assert ranking["tau_between_retrains"] == pytest.approx(-1.0)
    assert ranking["std_within"] == pytest.approx((0.06 + 0.02 + 0.02) / 3 / 2**0.5)
    assert ranking["std_between"] == pytest.approx(0.0, abs=1e-12)  # every mean is 0.93
    single = _ranking(
        [{k: v for k, v in r.items() if k != "accuracies"} | {"accuracy": a} for r, a in zip(ranked, [0.9, 0.92, 0.94])]
    )
    assert single["tau"] == pytest.approx(1.0) and single["tau_macs"] == pytest.approx(1.0)
    assert "tau_between_retrains" not in single


def test_dnad_noise_compares_the_sets_on_the_mean_of_their_trainings():
    from benchmarks.dnad_noise import summarise, to_markdown

    run = {
        "seed": 0,
        "snps": [{"id": "snps-m0", "macs": 100, "accuracy": 0.90}],
        "dnad": [{"id": "dnad-m0", "macs": 100, "accuracy": 0.92}],
        "random": [{"matched": "dnad-m0", "macs": 95, "accuracy": 0.95}],
        "trainings": {"snps-m0": [0.90, 0.96], "dnad-m0": [0.92, 0.92], "random-dnad-m0": [0.95, 0.93]},
    }
    summary = summarise([run])
    first, means = summary["first_training"], summary["mean_of_trainings"]
    assert first["dnad_minus_snps"]["mean_std"][0] == pytest.approx(0.02)
    assert first["dnad_minus_random"]["mean_std"][0] == pytest.approx(-0.03)
    assert means["dnad_minus_snps"]["mean_std"][0] == pytest.approx(-0.01)  # SNPS's second training caught up
    assert means["dnad_minus_random"]["mean_std"][0] == pytest.approx(-0.02)
    assert summary["noise_ceiling"][0]["std_within"] == pytest.approx((0.06 + 0.0 + 0.02) / 3 / 2**0.5)
    saved = types.SimpleNamespace(data="digits", cells=2, channels=4, ops="skip_connect", epochs=1, seed_epochs=1)
    saved.__dict__.update(optimizer="adamw", lr=0.003, batch_size=8, grad_clip=None)
    markdown = to_markdown(saved, 2, [run], summary)
    assert "| 0 | snps-m0 | 90.00% / 96.00% | 93.00% |" in markdown
    assert "| 0 | dnad-m0 | 100 | 92.00% | 93.00% | 94.00% |" in markdown


def test_dnad_noise_finds_a_partial_runs_random_cell_by_its_member(digits):
    """Random cells are drawn for every DNAD member in order; when only the smaller members' cells were trained,
    each is checked against the draw for its own member, not the first draw."""
    import argparse

    from benchmarks.dnad import cell_space, random_cells
    from benchmarks.dnad_noise import architectures
    from netfit.cost import count_cost
    from netfit.models import build_model

    space = cell_space(argparse.Namespace(ops="sep_conv_3x3,skip_connect", cells=2, channels=4), digits)
    shape = tuple(digits.input_shape)
    limits = [count_cost(space, shape).macs * 3 // 4, count_cost(space, shape).macs // 3]
    drawn = random_cells(space, limits, seed=3)
    members = [
        {"id": f"dnad-m{i}", "genotype": g, "macs": m, "accuracy": 0.9} for i, (g, m) in enumerate(zip(drawn, limits))
    ]
    macs = count_cost(build_model({**space.plain_arch(), "genotype": drawn[1]}), shape).macs
    run = {"seed": 3, "snps": [], "dnad": members, "random": [{"matched": "dnad-m1", "macs": macs, "accuracy": 0.8}]}
    cell = architectures(run, space, shape)[-1]
    assert cell["id"] == "random-dnad-m1" and cell["genotype"] == drawn[1]


def test_dnad_noise_with_kd_pairs_each_architecture_with_its_plain_trainings():
    """``--kd --plain``: each group's KD gain is per architecture against its own plain trainings, and the DNAD
    set with KD is compared with the plain SNPS set and the plain random cells."""
    from benchmarks.dnad_noise import summarise, to_markdown

    def run(trainings):
        return {
            "seed": 0,
            "snps": [{"id": "snps-m0", "macs": 100, "accuracy": 0.0}],
            "dnad": [{"id": "dnad-m0", "macs": 100, "accuracy": 0.0}],
            "random": [{"matched": "dnad-m0", "macs": 95, "accuracy": 0.0}],
            "trainings": trainings,
        }

    plain = run({"snps-m0": [0.90, 0.92], "dnad-m0": [0.88, 0.90], "random-dnad-m0": [0.91, 0.93]})
    kd = run({"snps-m0": [0.93, 0.95], "dnad-m0": [0.94, 0.94], "random-dnad-m0": [0.92, 0.92]})
    summary = summarise([kd], [plain])
    against = summary["against_plain"]
    gains = {group: m for group, (m, _) in against["kd_gain"].items()}
    assert gains == pytest.approx({"snps": 0.03, "dnad": 0.05, "random": 0.0})
    assert against["dnad_kd_vs_plain"]["dnad_minus_snps"]["mean_std"][0] == pytest.approx(0.94 - 0.91)
    assert against["dnad_kd_vs_plain"]["dnad_minus_random"]["mean_std"][0] == pytest.approx(0.94 - 0.92)
    assert summary["mean_of_trainings"]["dnad_minus_snps"]["mean_std"][0] == pytest.approx(0.94 - 0.94)
    with pytest.raises(SystemExit, match="no run of seeds"):
        summarise([kd], [{**plain, "seed": 1}])
    saved = types.SimpleNamespace(data="digits", cells=2, channels=4, ops="skip_connect", epochs=1, seed_epochs=1)
    saved.__dict__.update(optimizer="adamw", lr=0.003, batch_size=8, grad_clip=None)
    markdown = to_markdown(saved, 2, [kd], summary, kd=True)
    assert "trained 2 times with KD" in markdown and "| dnad | +5.00 ± 0.00 |" in markdown
    once = run({arch: accuracies[:1] for arch, accuracies in kd["trainings"].items()})  # --kd --retrains 1
    summary = summarise([once], [plain])
    assert summary["noise_ceiling"] is None and "Noise ceiling" not in to_markdown(saved, 1, [once], summary, kd=True)
    assert summary["against_plain"]["kd_gain"]["random"][0] == pytest.approx(0.92 - 0.92)
    no_snps = run({arch: a for arch, a in kd["trainings"].items() if not arch.startswith("snps")})  # --groups
    summary = summarise([no_snps], [plain])
    assert summary["mean_of_trainings"]["dnad_minus_snps"]["points"] == 0
    assert summary["first_training"]["dnad_minus_random"]["mean_std"][0] == pytest.approx(0.94 - 0.92)
    assert summary["against_plain"]["dnad_kd_vs_plain"]["dnad_minus_snps"]["mean_std"][0] == pytest.approx(0.03)
    assert set(summary["against_plain"]["kd_gain"]) == {"dnad", "random"}
    markdown = to_markdown(saved, 2, [no_snps], summary, kd=True)
    assert "| 0 | dnad-m0 | 100 | 94.00% | - | 92.00% |" in markdown  # all with KD
    assert "| 0 | dnad-m0 | 100 | 94.00% | 91.00% | 92.00% |" in markdown  # DNAD with KD, the others plain
    assert "(here only dnad and random: `--groups`)" in markdown


def test_dnad_noise_draws_the_recorded_random_cells_again_or_refuses(digits):
    import argparse

    from benchmarks.dnad import cell_space, random_cells
    from benchmarks.dnad_noise import architectures
    from netfit.cost import count_cost
    from netfit.models import build_model

    args = argparse.Namespace(ops="sep_conv_3x3,skip_connect", cells=2, channels=4)
    space = cell_space(args, digits)
    shape = tuple(digits.input_shape)
    limit = count_cost(space, shape).macs // 2
    genotype = random_cells(space, [limit], seed=3)[0]
    macs = count_cost(build_model({**space.plain_arch(), "genotype": genotype}), shape).macs
    member = {"id": "dnad-m0", "genotype": genotype, "macs": limit, "accuracy": 0.9}
    run = {"seed": 3, "snps": [], "dnad": [member], "random": [{"matched": "dnad-m0", "macs": macs, "accuracy": 0.8}]}
    archs = architectures(run, space, shape)
    assert [(a["id"], a["init_seed"]) for a in archs] == [("dnad-m0", 3), ("random-dnad-m0", 3)]
    assert archs[1]["genotype"] == genotype
    run["random"][0]["macs"] = macs + 1
    with pytest.raises(SystemExit, match="not the one recorded"):
        architectures(run, space, shape)


def test_spider_tau_shards_train_the_networks_of_one_run():
    """``spider tau --shard I/N``: the shards together train exactly the networks one process would (the same
    architectures, metrics and accuracies), so separate processes can share the work and be merged."""
    from argparse import Namespace

    from benchmarks.spider import run_tau, tau_summary

    base = {
        "data": "digits",
        "seeds": [0],
        "channels": 4,
        "reductions": 1,
        "stem_stride": 1,
        "metric_samples": 8,
        "retrains": 1,
    }
    base |= {"networks": 3, "epochs": 1, "lr": 0.05, "batch_size": 64, "grad_clip": 5.0}
    whole = run_tau(Namespace(**base, shard=(0, 1)))
    parts = [run_tau(Namespace(**base, shard=(i, 2)))["rows"] for i in range(2)]
    assert [r["network"] for r in parts[0]] == [0, 2] and [r["network"] for r in parts[1]] == [1]
    merged = tau_summary(sorted(parts[0] + parts[1], key=lambda r: r["network"]))
    assert merged == whole


def test_dnad_rerun_peers_replaces_only_the_peer_rows(tmp_path):
    """``--rerun-peers``: the seed is retrained by the recorded recipe, the peers measured on it within their budget,
    and the result rewritten with them; the sets and the rest of the result are kept as they were."""
    import argparse
    import json

    from benchmarks.dnad import rerun_peers
    from benchmarks.dnad_report import summarise

    settings = {
        "data": "digits", "model": "cnn_small", "width": 0.5, "budgets": [50], "seed_epochs": 1, "epochs": 2,
        "search_epochs": 1, "dna_search_epochs": 1, "ops": "skip_connect", "cells": 2, "channels": 4,
        "stem_stride": 1, "x": [], "peers": ["uniform"], "batch_size": 64, "lr": 0.05, "grad_clip": None,
        "optimizer": "sgd", "collect": False, "timing_shape": None,
    }  # fmt: skip
    member = {"id": "dnad-m0", "reason": "plateau", "pairs": 3, "macs": 1000, "params": 10, "accuracy": 0.5}
    member["step_seconds"] = 0.01
    run = {
        "seed": 0,
        "seed_network": {"accuracy": 0.9, "macs": 4000},
        "snps": [],
        "dnad": [member],
        "random": [],
        "peers": {"uniform": [{"id": "stale", "target": "50% macs", "accuracy": 0.1, "macs": 1, "params": 1}]},
        "dense_step_seconds": 0.02,
        "remeasured_step_seconds": {"snps": [], "dnad": [0.01]},
    }
    path = tmp_path / "dnad_digits_test.json"
    path.write_text(json.dumps({"benchmark": "dnad", "settings": settings, "runs": [run], "summary": summarise([run])}))
    args = argparse.Namespace(peers=["uniform", "dna"])
    rerun_peers(args, path, tmp_path / "runs")

    saved = json.loads(path.read_text())
    new = saved["runs"][0]
    assert {k: new[k] for k in run if k != "peers"} == {k: v for k, v in run.items() if k != "peers"}
    seed_macs = json.loads((tmp_path / "runs" / "uniform-0" / "result.json").read_text())["seed"]["macs"]
    for peer in ("uniform", "dna"):
        (row,) = new["peers"][peer]
        assert row["id"] != "stale" and 0 < row["macs"] <= 0.5 * seed_macs and 0 <= row["accuracy"] <= 1
    assert 0 < new["peers_seed_accuracy"] <= 1
    assert saved["settings"]["peers"] == ["uniform", "dna"] and saved["settings"]["peers_rerun"]["netfit"]
    markdown = (tmp_path / "dnad_digits_test.md").read_text()
    assert "`--rerun-peers`" in markdown and "## dna on the seed" in markdown


def test_dnad_members_meet_the_random_cell_drawn_at_their_macs():
    """Random cells pair with the DNAD member they were drawn for, not by position: a partial collect (random
    cells trained for the smaller members only) must not compare a member with another member's cell."""
    from benchmarks.dnad_report import matched

    members = [
        {"id": f"dnad-m{i}", "macs": macs, "accuracy": acc} for i, (macs, acc) in enumerate([(900, 0.9), (400, 0.8)])
    ]
    run = {
        "snps": [{"macs": 380, "accuracy": 0.7}],
        "dnad": members,
        "random": [{"matched": "dnad-m1", "macs": 390, "accuracy": 0.75}],
    }
    (row,) = matched(run)
    assert (row["id"], row["dnad"], row["snps"], row["random"], row["random_macs"]) == ("dnad-m1", 0.8, 0.7, 0.75, 390)
