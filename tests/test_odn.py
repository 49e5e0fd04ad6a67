"""ODN: exits, deployment parity, the stopping rule and resume."""

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from netfit.api import adapt
from netfit.engine.norms import recalibration_batches
from netfit.methods.odn import ODN, ExitNet, deploy_prefix, depth_lr
from netfit.models import arch_of, create_model

FAST = {"epochs": 2, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}
QUICK = {"warmup_epochs": 1, "depth_epochs": 2}  # tests cap every depth at 2 epochs (the default trains to a plateau)


@pytest.mark.parametrize(
    ("name", "shape"), [("resnet18_cifar", (1, 8, 8)), ("resnet18_1d", (1, 40)), ("cnn_small", (1, 8, 8))]
)
def test_exits_and_deployment_parity(name, shape):
    torch.manual_seed(0)
    seed = create_model(name, num_classes=10, in_chans=1).eval()
    net = ExitNet(copy.deepcopy(seed), shape, 10).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        all_logits = net(x, all_exits=True)
        assert len(all_logits) == len(net.blocks) == sum(len(s) for s in seed.stages)
        for depth in range(1, len(net.blocks) + 1):
            assert torch.allclose(all_logits[depth - 1], net(x, depth=depth), atol=1e-6)
            deployed = deploy_prefix(net, seed, depth)
            assert sum(1 for _ in deployed.modules()) < sum(1 for _ in seed.modules()) or depth == len(net.blocks)
            assert torch.allclose(deployed(x), net(x, depth=depth), atol=1e-5)


def test_stops_at_first_depth_reaching_target(tmp_path, digits):
    """Target 0.05 (below chance) is reached at depth 1; target 1.0 is never reached -> deepest within budget."""
    easy = adapt(
        "cnn_small",
        digits,
        "100%",
        "odn",
        out=tmp_path / "easy",
        method_options={"target_acc": 0.05, **QUICK},
        **FAST,
    )
    assert [r["info"]["depth"] for r in easy.summary["candidates"]] == [1]
    assert easy.summary["candidates"][0]["info"]["chosen"]
    hard = adapt(
        "cnn_small",
        digits,
        "100%",
        "odn",
        out=tmp_path / "hard",
        method_options={"target_acc": 1.0, **QUICK},
        **FAST,
    )
    rows = hard.summary["candidates"]
    assert [r["info"]["depth"] for r in rows] == [1, 2, 3, 4]
    assert [r["macs"] for r in rows] == sorted(r["macs"] for r in rows)
    assert rows[-1]["info"]["chosen"] and not any(r["info"]["reached"] for r in rows)
    log = [json.loads(line) for line in (tmp_path / "hard" / "log.jsonl").read_text().splitlines()]
    first_lr = {e["phase"]: e["lr"] for e in reversed(log) if e["event"] == "epoch" and e["epoch"] == 1}
    base = first_lr["odn-depth1"]  # every later depth restarts at half of it, as the public code does
    assert [first_lr[f"odn-depth{d}"] for d in (2, 3, 4)] == pytest.approx([base / 2] * 3)


def test_budget_caps_depth(tmp_path, digits):
    result = adapt("cnn_small", digits, "60%", "odn", out=tmp_path, method_options={"target_acc": 1.0, **QUICK}, **FAST)
    rows = result.summary["candidates"]
    assert all(r["within_budget"] for r in rows)
    assert len(rows) < 4


def test_resume_skips_finished_depths(tmp_path, digits, monkeypatch):
    options = {"target_acc": 1.0, **QUICK}
    calls = []
    real = ODN._train_depth

    def crash_at_depth3(self, start, depth, *args, **kwargs):
        calls.append(depth)
        if depth == 3:
            raise KeyboardInterrupt
        return real(self, start, depth, *args, **kwargs)

    monkeypatch.setattr(ODN, "_train_depth", crash_at_depth3)
    with pytest.raises(KeyboardInterrupt):
        adapt("cnn_small", digits, "100%", "odn", out=tmp_path, method_options=options, **FAST)
    monkeypatch.setattr(ODN, "_train_depth", real)
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "odn-depth1.pt" in ckpts and "odn-depth2.pt" in ckpts and "odn-depth3.pt" not in ckpts
    before = {n: (tmp_path / "ckpt" / n).stat().st_mtime_ns for n in ckpts}
    resumed = adapt("cnn_small", digits, "100%", "odn", out=tmp_path, method_options=options, resume=True, **FAST)
    assert [r["info"]["depth"] for r in resumed.summary["candidates"]] == [1, 2, 3, 4]
    for name, mtime in before.items():  # finished phases were not trained again
        assert (tmp_path / "ckpt" / name).stat().st_mtime_ns == mtime


def test_initial_depth_and_kd_from_the_full_network(tmp_path, digits, monkeypatch):
    """initial_depth=2 never trains depth 1; kd adds a distillation term to every depth phase and the fine-tune,
    whose teacher is the trained seed."""
    from netfit import distill
    from netfit.export import load_model

    teachers = []
    real_init = distill.CachedTeacher.__init__

    def record(self, teacher):
        teachers.append(teacher)
        real_init(self, teacher)

    monkeypatch.setattr(distill.CachedTeacher, "__init__", record)
    options = {"target_acc": 1.0, "initial_depth": 2, "kd": True, **QUICK}
    result = adapt("cnn_small", digits, "100%", "odn", out=tmp_path, method_options=options, **FAST)
    assert [r["info"]["depth"] for r in result.summary["candidates"]] == [2, 3, 4]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in log if e["event"] == "epoch" and e["phase"].startswith("odn")]
    assert {e["phase"] for e in epochs} == {"odn-warmup", "odn-depth2", "odn-depth3", "odn-depth4", "odn-finetune4"}
    assert all(("extra0" in e) == (e["phase"] != "odn-warmup") for e in epochs)
    assert all(e["extra0"] > 0 for e in epochs if "extra0" in e)
    (teacher,) = teachers
    seed = load_model(tmp_path / "seed")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), seed.state_dict().values()))


def test_initial_depth_beyond_the_budget_is_an_error(tmp_path, digits):
    from netfit.errors import BudgetInfeasibleError

    with pytest.raises(BudgetInfeasibleError, match="initial_depth 4"):
        options = {"initial_depth": 4, **QUICK}
        adapt("cnn_small", digits, "60%", "odn", out=tmp_path, method_options=options, **FAST)


# scripted validation accuracy per depth; after the script every epoch scores 0.1 (no improvement)
CURVES = {1: [0.50, 0.60, 0.62, 0.61, 0.62, 0.60, 0.99], 2: [0.70, 0.80, 0.90, 0.85, 0.90, 0.89, 0.99]}


def test_each_depth_trains_to_its_plateau(tmp_path, digits, monkeypatch):
    """Depth 1 peaks at epoch 3 and stops 3 epochs later (patience 3, never seeing its 0.99); its lr drops x0.6
    after 2 epochs without improvement; depth 2 reaches the target 0.85, is chosen, and deeper ones never train."""
    from netfit.engine import trainer

    real, served, tracked = trainer.evaluate, {}, set()

    def scripted(model, data, split, **kwargs):
        if not isinstance(model, ExitNet) or model.depth not in CURVES:  # the seed and the all-exit warm-up
            return real(model, data, split, **kwargs)
        used = [model.stem, *model.blocks[: model.depth]]
        tracked.update(int(m.num_batches_tracked) for p in used for m in p.modules() if isinstance(m, nn.BatchNorm2d))
        i = served[model.depth] = served.get(model.depth, -1) + 1
        curve = CURVES[model.depth]
        return {"accuracy": curve[i] if i < len(curve) else 0.1, "loss": 1.0}

    monkeypatch.setattr(trainer, "evaluate", scripted)
    options = {"target_acc": 0.85, "warmup_epochs": 1, "depth_epochs": 20, "patience": 3, "lr_patience": 2}
    result = adapt("cnn_small", digits, "100%", "odn", out=tmp_path, method_options=options, **FAST)
    rows = [r["info"] for r in result.summary["candidates"]]
    assert [(r["depth"], r["epochs"], r["val_acc"], r["plateaued"]) for r in rows] == [
        (1, 6, 0.62, True),
        (2, 6, 0.90, True),
    ]
    assert not rows[0]["reached"] and rows[1]["reached"] and rows[1]["chosen"]
    # every evaluated depth carries the statistics of the recalibration (a few batches), not of its training steps
    assert tracked == {len(recalibration_batches(len(digits.train), ODN.precise_bn, 64, 0))}
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = [e["lr"] for e in log if e["event"] == "epoch" and e["phase"] == "odn-depth1"]
    assert lrs == pytest.approx([lrs[0]] * 5 + [lrs[0] * 0.6])
    depth2 = [e["lr"] for e in log if e["event"] == "epoch" and e["phase"] == "odn-depth2"]
    assert depth2[0] == pytest.approx(lrs[0] / 2)  # the public code: the base lr / 2 past depth 1


def test_depth_cap_ends_a_depth_that_still_improves(tmp_path, digits, monkeypatch):
    from netfit.engine import trainer

    real, served = trainer.evaluate, {}

    def rising(model, data, split, **kwargs):
        if not isinstance(model, ExitNet) or model.depth != 1:
            return real(model, data, split, **kwargs)
        served[1] = served.get(1, 0) + 1
        return {"accuracy": 0.1 * served[1], "loss": 1.0}

    monkeypatch.setattr(trainer, "evaluate", rising)
    options = {"target_acc": 0.95, "warmup_epochs": 1, "depth_epochs": 4}
    result = adapt("cnn_small", digits, "60%", "odn", out=tmp_path, method_options=options, **FAST)
    first = result.summary["candidates"][0]["info"]
    assert (first["epochs"], first["plateaued"], first["val_acc"]) == (4, False, pytest.approx(0.4))


def test_cosine_depth_schedule_trains_every_depth_its_full_anneal(tmp_path, digits, monkeypatch):
    """depth_schedule=cosine: the flat curve that ends a plateau-scheduled depth after 3 epochs does not end this
    one; it trains all 5 epochs, its lr annealed from the depth's lr towards 0, and keeps its best epoch."""
    from netfit.engine import trainer

    real, served = trainer.evaluate, {}

    def flat(model, data, split, **kwargs):
        if not isinstance(model, ExitNet) or model.depth != 1:
            return real(model, data, split, **kwargs)
        served[1] = served.get(1, 0) + 1
        return {"accuracy": 0.5 if served[1] == 2 else 0.4, "loss": 1.0}

    monkeypatch.setattr(trainer, "evaluate", flat)
    options = {"target_acc": 0.95, "warmup_epochs": 1, "depth_epochs": 5, "patience": 2, "depth_schedule": "cosine"}
    result = adapt("cnn_small", digits, "60%", "odn", out=tmp_path, method_options=options, **FAST)
    first = result.summary["candidates"][0]["info"]
    assert (first["epochs"], first["val_acc"]) == (5, pytest.approx(0.5))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = [e["lr"] for e in log if e["event"] == "epoch" and e["phase"] == "odn-depth1"]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 * lrs[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_acc": 99.0}, "target_acc"),
        ({"target_drop": -0.1}, "target_drop"),
        ({"depth_epochs": 0}, "depth"),
        ({"precise_bn": -1}, "precise_bn"),
        ({"depth_schedule": "step"}, "depth_schedule"),
        ({"start": "pretrained"}, "start"),
        ({"depth_lr_factor": 0.0}, "depth_lr_factor"),
        ({"kd_weight": 0.0}, "kd_weight"),
        ({"initial_depth": 0}, "initial_depth"),
    ],
)
def test_bad_options(options, message):
    from netfit.errors import NetfitError

    with pytest.raises(NetfitError, match=message):
        ODN(**options)


def test_scratch_start_draws_fresh_weights_of_the_seeds_architecture():
    """start=scratch: the seed's architecture with new weights, the same for the same run seed (resume);
    start=seed: the seed's own weights."""
    trained = create_model("cnn_small", num_classes=10, in_chans=1)
    seed = SimpleNamespace(model=trained)

    def run(number: int) -> SimpleNamespace:
        return SimpleNamespace(rng=lambda purpose: np.random.default_rng([number, len(purpose)]))

    fresh, again, other = (ODN(start="scratch")._body(seed, run(n)) for n in (0, 0, 1))
    assert arch_of(fresh) == arch_of(trained)
    first = next(iter(trained.state_dict()))
    assert not torch.equal(fresh.state_dict()[first], trained.state_dict()[first])
    assert torch.equal(fresh.state_dict()[first], again.state_dict()[first])
    assert not torch.equal(fresh.state_dict()[first], other.state_dict()[first])
    kept = ODN()._body(seed, run(0))
    assert kept is not trained and all(torch.equal(a, b) for a, b in zip(kept.parameters(), trained.parameters()))


def test_depth_lr_factor():
    assert depth_lr(0.1, 1, 0.25) == 0.1
    assert [depth_lr(0.1, d) for d in (2, 3)] == pytest.approx([0.05, 0.05])
    assert depth_lr(0.1, 3, 1.0) == pytest.approx(0.1)
