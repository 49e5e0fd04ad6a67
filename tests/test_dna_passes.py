"""DNA's sample_pass and soft_pass "auto": both ways of both passes timed without side effects, the choice
remembered per machine (``netfit.tuning``) so runs of one seed stay reproducible, and kept in the run directory
for a resume."""

import json

import numpy as np
import pytest
import torch

from netfit import tuning
from netfit.api import adapt
from netfit.methods.dna import DNA
from netfit.methods.dna_passes import PASS_MODES, SOFT_MODES, PassLayout, budget_sizes, choose_passes, pass_groups
from netfit.models import create_model
from netfit.space.elastic import ElasticNet
from netfit.space.grow import grow

FAST = {"epochs": 1, "seed_epochs": 1, "progress": False, "train": {"batch_size": 64}}


def test_remembered_choice_measures_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    calls = []

    def measure(choice):
        return lambda: calls.append(choice) or (choice, {choice: 0.1})

    assert tuning.remembered_choice("t", {"a": 1}, ("x", "y"), measure("x")) == ("x", {"x": 0.1})
    assert tuning.remembered_choice("t", {"a": 1}, ("x", "y"), measure("y")) == ("x", None)  # read back
    assert tuning.remembered_choice("t", {"a": 2}, ("x", "y"), measure("y")) == ("y", {"y": 0.1})  # another key
    assert calls == ["x", "y"]
    # an entry that is not one of the choices (or not JSON) is measured again
    (entry,) = [p for p in (tmp_path / "tuning").iterdir() if json.loads(p.read_text())["key"] == {"a": 1}]
    entry.write_text(json.dumps({"choice": "z"}))
    assert tuning.remembered_choice("t", {"a": 1}, ("x", "y"), measure("y")) == ("y", {"y": 0.1})
    entry.write_text("not json")
    assert tuning.remembered_choice("t", {"a": 1}, ("x", "y"), measure("x")) == ("x", {"x": 0.1})


def test_timing_the_passes_leaves_no_trace():
    """Timing both ways of both passes (in training mode, as the search runs them) trains nothing: no gradients
    left (weights or architecture logits), batch norm statistics and counters unchanged, the mode restored, and
    the random stream where it was (a search must not depend on whether its timing was cached: MobileNetV2's
    dropout draws from it)."""
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", num_classes=10, in_chans=1, width_mult=0.25)
    model.head.dropout = torch.nn.Dropout(0.2)  # a training pass draws random numbers
    shape = (1, 16, 16)
    net = ElasticNet(grow(model, shape, 1.0, 0.0, np.random.default_rng(0)), shape, units=4)
    limits = [2e6, 1e6, 4e5]
    arch = DNA().init_arch(net, limits, ["macs"] * 3, [len(s) for s in model.stages])
    stats = {k: v.clone() for k, v in net.model.state_dict().items() if "running" in k or "batches" in k}
    modes = []
    norm = next(m for m in net.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    x = torch.randn(12, *shape)
    rng = torch.get_rng_state()
    net.attach()
    try:
        layout = PassLayout(budget_sizes(net, limits, ["macs"] * 3), span=0.25)
        choice, seconds = choose_passes(net, arch, x, 1, 0, layout)
    finally:
        net.detach()
    assert set(choice) == {"sample_pass", "soft_pass"}
    assert set(seconds) == {"sample_pass", "soft_pass", "smallest", "fused"}
    assert set(seconds["sample_pass"]) == set(PASS_MODES) and set(seconds["soft_pass"]) == set(SOFT_MODES)
    assert set(seconds["fused"]) == {"with_arch"} and seconds["smallest"] > 0  # no step without the arch pass
    assert min(v for name in ("sample_pass", "soft_pass", "fused") for v in seconds[name].values()) > 0
    assert all(p.grad is None for p in [*net.model.parameters(), *arch.parameters()])
    assert all(torch.equal(net.model.state_dict()[k], v) for k, v in stats.items())
    assert modes and all(modes) and not net.model.training  # timed training; grow's eval mode given back
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    ("sample_batched", "soft_sliced", "joint", "fused", "pinned", "arch_every", "expected"),
    [
        (1.0, 0.7, 0.5, 9, {}, 1, ("sliced", "joint")),  # both at once: 0.5 against 0.6 + 0.5 apart
        (1.0, 0.7, 1.2, 9, {}, 1, ("sliced", "batched")),  # 0.6 + 0.5 against 1.2 at once
        (1.0, 0.4, 1.2, 9, {}, 1, ("sliced", "sliced")),  # 0.6 + 0.4 apart against 1.2 at once
        (0.5, 0.7, 0.6, 9, {}, 1, ("sliced", "joint")),  # 0.6 against 0.5 + 0.5 batched
        (0.5, 0.7, 0.6, 9, {}, 8, ("batched", "batched")),  # (0.6 + 7 x 0.6) / 8 against 0.5 + 0.5 / 8
        (1.0, 0.7, 0.5, 9, {"soft_pass": "batched"}, 1, ("sliced", "batched")),  # a pinned pass is kept
        (1.0, 0.7, 0.5, 9, {"sample_pass": "batched"}, 1, ("batched", "batched")),  # 1.0 + 0.5 + 0.1 < 9
        # every network in one pass: 0.6 (the smallest's pass saved) against 0.5 + 0.1 + 0.1 at best apart
        (1.0, 0.7, 0.5, 0.55, {}, 1, ("batched", "joint")),
        (1.0, 0.7, 0.5, 0.65, {}, 1, ("sliced", "joint")),
        (1.0, 0.7, 0.5, 0.65, {"sample_pass": "batched"}, 1, ("batched", "joint")),  # 0.65 < 1.0 + 0.5 + 0.1
        # the steps without the architecture pass run the samples and the smallest alone: (0.55 + 3 x 0.8) / 4
        (1.0, 0.7, 0.5, 0.55, {}, 4, ("sliced", "joint")),
    ],
)
def test_the_fastest_pair_of_passes_is_chosen(
    monkeypatch, sample_batched, soft_sliced, joint, fused, pinned, arch_every, expected
):
    """choose_passes picks the pair with the least time per step (every way but the fused one, batched
    "joint", also runs the smallest network's sliced pass), "joint" (both passes at once) only where the step
    can run it (the samples' pass alone on the steps without the architecture pass)."""
    from netfit.methods import dna_passes

    seconds = {
        "sample_pass": {"batched": sample_batched, "sliced": 0.6},
        "soft_pass": {"batched": 0.5, "sliced": soft_sliced, "joint": joint},
        "smallest": 0.1,
        "fused": {"with_arch": fused, "samples_only": 0.8},
    }
    monkeypatch.setattr(dna_passes, "time_passes", lambda *args, **kwargs: seconds)
    choice, _ = choose_passes(None, None, None, 1, 0, PassLayout([], 0.25), None, pinned, True, arch_every)
    assert (choice["sample_pass"], choice["soft_pass"]) == expected
    apart, _ = choose_passes(None, None, None, 1, 0, PassLayout([], 0.25), None, pinned, False, arch_every)
    assert apart["soft_pass"] != "joint"


def test_sliced_passes_group_the_budgets_within_the_span():
    """From the largest budget down, a budget joins the group while it is within the span of the group's first."""
    sizes = [0.33, 0.17, 0.07, 0.03, 0.013, 0.007, 0.003, 1.0]  # the MNIST-10k suite's budgets over a 1.5x supernet
    rows = list(range(8))
    assert pass_groups(rows, sizes, 0.25) == [[7], [0, 1], [2, 3, 4, 5, 6]]
    assert pass_groups(rows, sizes, 0.0) == [[k] for k in (7, 0, 1, 2, 3, 4, 5, 6)]
    assert pass_groups(rows, sizes, 1.0) == [[7, 0, 1, 2, 3, 4, 5, 6]]
    assert pass_groups([4, 0], sizes, 0.5) == [[1, 0]]  # positions in rows, the largest budget's first
    assert pass_groups([4, 0], sizes, 0.25) == [[1], [0]]


def _events(out, name):
    return [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if e["event"] == name]


def test_auto_is_measured_once_then_read_back(tmp_path, digits, monkeypatch):
    monkeypatch.setenv("NETFIT_CACHE_DIR", str(tmp_path / "cache"))  # not what earlier tests of this space measured
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4}
    first = adapt("cnn_small", digits, "50%,25%", "dna", out=tmp_path / "a", method_options=options, **FAST)
    second = adapt("cnn_small", digits, "50%,25%", "dna", out=tmp_path / "b", method_options=options, **FAST)
    (measured,), (cached,) = _events(tmp_path / "a", "dna-passes"), _events(tmp_path / "b", "dna-passes")
    for name, modes in (("sample_pass", PASS_MODES), ("soft_pass", SOFT_MODES)):
        assert measured[name] in modes and set(measured["measured_seconds"][name]) == set(modes)
        assert cached[name] == measured[name]
    assert cached["measured_seconds"] is None
    kept = json.loads((tmp_path / "a" / "dna-passes.json").read_text())
    assert (kept["sample_pass"], kept["soft_pass"]) == (measured["sample_pass"], measured["soft_pass"])
    # same choice, same seed: the same networks and accuracies
    a, b = first.summary["candidates"], second.summary["candidates"]
    assert [(c["macs"], c["accuracy"]) for c in a] == [(c["macs"], c["accuracy"]) for c in b]


@pytest.mark.parametrize("soft_pass", PASS_MODES)
def test_a_pinned_pass_is_used_and_the_other_measured(tmp_path, digits, soft_pass, monkeypatch):
    """A pinned soft_pass is kept as given while sample_pass "auto" is measured; the step runs the pinned way."""
    from netfit.methods import dna_step

    used = []
    original = dna_step.soft_pass
    monkeypatch.setattr(dna_step, "soft_pass", lambda *a: used.append(a[5]) or original(*a))
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4, "soft_pass": soft_pass}
    adapt("cnn_small", digits, "50%,25%", "dna", out=tmp_path, method_options=options, **FAST)
    (measured,) = _events(tmp_path, "dna-passes")
    assert measured["soft_pass"] == soft_pass and measured["sample_pass"] in PASS_MODES
    assert used and set(used) == {soft_pass}


@pytest.mark.parametrize(
    "options", [{"sample_pass": "sliced", "soft_pass": "batched"}, {"every_budget": False, "soft_pass": "sliced"}]
)
def test_no_measurement_where_nothing_is_to_choose(tmp_path, digits, options):
    """Pinned passes are used as given; without every budget's samples per step there is no sample choice."""
    options = {"search_epochs": 1, "warmup_epochs": 0, "units": 4, **options}
    adapt("cnn_small", digits, "50%,25%", "dna", out=tmp_path, method_options=options, **FAST)
    assert not _events(tmp_path, "dna-passes") and not (tmp_path / "dna-passes.json").exists()
