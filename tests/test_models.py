"""Every registered model: forward/backward, arch spec round trips, sub-networks, known sizes, cost cross-check."""

import json

import pytest
import torch
import torch.fx

from _shapes import input_shape
from netfit.cost import count_macs, count_params
from netfit.errors import CheckpointError, MissingExtraError, UnknownNameError
from netfit.models import arch_of, build_model, create_model, default_arch, list_models

MODELS = list_models()


def make(name: str):
    torch.manual_seed(0)
    return create_model(name, num_classes=7, in_chans=input_shape(name)[0])


def test_registry_names():
    assert set(MODELS) >= {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet18_cifar",
        "resnet34_cifar",
        "resnet50_cifar",
        "mobilenetv2",
        "mobilenetv2_cifar",
        "cnn_small",
        "cnn1d",
        "resnet18_1d",
    }


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    model = make(name)
    out = model(torch.randn(2, *input_shape(name)))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_arch_round_trip(name):
    model = make(name).eval()
    arch = arch_of(model)
    assert arch == default_arch(name, num_classes=7, in_chans=input_shape(name)[0])
    rebuilt = build_model(json.loads(json.dumps(arch)))
    assert arch_of(rebuilt) == arch
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, *input_shape(name))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_sub_networks(name):
    arch = arch_of(make(name))
    shallow = json.loads(json.dumps(arch))
    for stage in shallow["stages"]:
        stage["blocks"] = stage["blocks"][:1]
    narrow = json.loads(json.dumps(arch))
    block = narrow["stages"][-1]["blocks"][-1]
    key = next(iter(block), None)
    if key:
        block[key] = max(1, block[key] // 2)
    for sub in (shallow, narrow):
        model = build_model(sub)
        assert arch_of(model) == sub
        assert model(torch.randn(2, *input_shape(name))).shape == (2, 7)
    assert count_params(build_model(shallow)) < count_params(make(name))


@pytest.mark.parametrize("name", MODELS)
def test_fx_traceable(name):
    model = make(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *input_shape(name))
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_macs_match_fvcore(name):
    """Our conv+linear MACs equal fvcore's conv+linear count exactly (fvcore: 1 'flop' = 1 MAC)."""
    from fvcore.nn import FlopCountAnalysis

    model = make(name).eval()
    x = torch.randn(1, *input_shape(name))
    analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    conv_linear = sum(v for k, v in by_op.items() if k in ("conv", "linear", "addmm", "matmul", "bmm"))
    assert count_macs(model, input_shape(name)) == conv_linear


@pytest.mark.parametrize(
    ("name", "params"),
    [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("mobilenetv2", 3_504_872)],
)
def test_standard_sizes(name, params):
    """Same parameter counts as torchvision's models (1000 classes, RGB): the architectures are the standard ones."""
    assert count_params(create_model(name, num_classes=1000, in_chans=3)) == params


def test_width_mult_and_depths():
    base = count_params(create_model("resnet18_cifar"))
    assert count_params(create_model("resnet18_cifar", width_mult=0.5)) < base / 3
    arch = default_arch("resnet18_cifar", depths=[1, 1, 1, 1])
    assert [len(s["blocks"]) for s in arch["stages"]] == [1, 1, 1, 1]


def test_errors():
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("resnet81")
    with pytest.raises(CheckpointError, match="invalid arch spec"):
        build_model({"family": "resnet", "num_classes": 10})
    with pytest.raises(CheckpointError, match="family"):
        build_model({"stages": []})
    with pytest.raises(UnknownNameError, match="model family"):
        build_model({"family": "transformer9000"})


def test_timm_requires_extra():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match=r"netfit\[timm\]"):
            create_model("timm:resnet18")
    else:
        pytest.skip("timm is installed; the missing-extra path cannot be exercised")
