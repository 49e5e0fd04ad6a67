"""Export and load: safetensors + arch.json round trips (built-in and user models), validation, ONNX parity."""

import json
import pickle

import pytest
import torch
from torch import nn

from netfit.errors import CheckpointError, NetfitError, UnsupportedLayerError
from netfit.export import export_onnx, load_model, save_model
from netfit.models import create_model


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = x + self.body(x)
        return self.fc(torch.flatten(x, 1))


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1)
        self.b = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(self.pool(y).flatten(1))


class AttrNet(nn.Module):
    """get_attr parameters and buffers, slicing, chunk and a transposed conv."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 4, 2, stride=2)
        self.scale = nn.Parameter(torch.randn(1, 2, 1, 1))
        self.register_buffer("shift", torch.randn(1, 2, 1, 1))
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        a, b = self.up(x).chunk(2, dim=1)
        y = (a + b)[:, :2] * self.scale + self.shift
        return self.fc(y.reshape(y.size(0), -1))


class FFTNet(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real


def outputs_equal(a, b, shape):
    x = torch.randn(3, *shape)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (lambda: create_model("cnn_small", in_chans=1), (1, 8, 8)),
        (lambda: create_model("resnet18_1d", in_chans=1), (1, 40)),
        (ResidualNet, (1, 4, 4)),
        (CatNet, (1, 5, 5)),
        (AttrNet, (2, 4, 4)),
    ],
)
def test_round_trip(tmp_path, model, shape):
    torch.manual_seed(0)
    net = model().eval()
    save_model(net, tmp_path, input_shape=shape, meta={"note": "x"})
    loaded = load_model(tmp_path)
    assert outputs_equal(net, loaded, shape)
    assert loaded.netfit_input_shape == shape
    assert json.loads((tmp_path / "arch.json").read_text())["meta"] == {"note": "x"}


def test_user_model_rebuilds_without_its_class(tmp_path):
    save_model(ResidualNet().eval(), tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded).__name__ == "NetfitGraph" and not isinstance(loaded, ResidualNet)


def test_mismatched_arch_names_the_layer(tmp_path):
    save_model(create_model("cnn_small", in_chans=1), tmp_path)
    doc = json.loads((tmp_path / "arch.json").read_text())
    doc["arch"]["stem"]["width"] = 16
    (tmp_path / "arch.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"does not match model.safetensors.*stem\.0\.weight expects"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "arch.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "arch.json").unlink(), "arch.json not found"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors not found"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 20), "corrupt"),
        (lambda d: (d / "arch.json").write_text('{"format": "other"}'), "not a netfit arch file"),
    ],
)
def test_broken_folders(tmp_path, damage, message):
    save_model(create_model("cnn_small", in_chans=1), tmp_path)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_unsupported_op_is_refused(tmp_path):
    with pytest.raises(UnsupportedLayerError, match="not supported"):
        save_model(FFTNet(), tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save_model(ResidualNet(), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_model(tmp_path)


def test_onnx_parity(tmp_path):
    report = export_onnx(create_model("cnn_small", in_chans=1).eval(), tmp_path / "m.onnx", (1, 8, 8))
    assert report["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0


def test_graph_spec_keeps_buffers_as_buffers(tmp_path):
    save_model(AttrNet(), tmp_path)
    loaded = load_model(tmp_path)
    assert [n for n, _ in loaded.named_buffers()] == ["shift"]
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in AttrNet().parameters())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a["modules"]["conv"].update(type="Bilinear"), "'Bilinear' of conv is not a standard layer"),
        (lambda a: next(n for n in a["nodes"] if n["op"] == "call_function").update(target="os.system"), "os.system"),
        (lambda a: next(n for n in a["nodes"] if n["op"] == "call_method").update(target="__reduce__"), "__reduce__"),
    ],
)
def test_tampered_graph_spec_is_refused(tmp_path, edit, message):
    save_model(CatNet(), tmp_path)
    doc = json.loads((tmp_path / "arch.json").read_text())
    doc["arch"]["modules"]["conv"] = doc["arch"]["modules"].pop("a")  # so the layer edit has a stable name
    for node in doc["arch"]["nodes"]:
        node["target"] = "conv" if node["target"] == "a" else node["target"]
    edit(doc["arch"])
    (tmp_path / "arch.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_unwritable_folder_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NetfitError, match="cannot write the model"):
        save_model(CatNet(), blocker / "out")
    with pytest.raises(NetfitError, match="JSON-serialisable"):
        save_model(CatNet(), tmp_path / "m", meta={"bad": object()})
    assert not (tmp_path / "m").exists()
