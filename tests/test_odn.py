"""ODN: exits, deployment parity, the stopping rule and resume."""

import copy

import pytest
import torch

from netfit.api import adapt
from netfit.methods.odn import ODN, ExitNet, deploy_prefix
from netfit.models import create_model

FAST = {"epochs": 2, "seed_epochs": 2, "progress": False, "train": {"batch_size": 64}}


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
        method_options={"target_acc": 0.05, "warmup_epochs": 1},
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
        method_options={"target_acc": 1.0, "warmup_epochs": 1},
        **FAST,
    )
    rows = hard.summary["candidates"]
    assert [r["info"]["depth"] for r in rows] == [1, 2, 3, 4]
    assert [r["macs"] for r in rows] == sorted(r["macs"] for r in rows)
    assert rows[-1]["info"]["chosen"] and not any(r["info"]["reached"] for r in rows)


def test_budget_caps_depth(tmp_path, digits):
    result = adapt(
        "cnn_small", digits, "60%", "odn", out=tmp_path, method_options={"target_acc": 1.0, "warmup_epochs": 1}, **FAST
    )
    rows = result.summary["candidates"]
    assert all(r["within_budget"] for r in rows)
    assert len(rows) < 4


def test_resume_skips_finished_depths(tmp_path, digits, monkeypatch):
    options = {"target_acc": 1.0, "warmup_epochs": 1}
    calls = []
    real = ODN._train_depth

    def crash_at_depth3(self, template, state, depth, *args, **kwargs):
        calls.append(depth)
        if depth == 3:
            raise KeyboardInterrupt
        return real(self, template, state, depth, *args, **kwargs)

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


def test_bad_target():
    from netfit.errors import NetfitError

    with pytest.raises(NetfitError, match="target_acc"):
        ODN(target_acc=99.0)
