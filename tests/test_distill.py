"""Distillation: the frozen teacher's logits remembered per training sample (CachedTeacher)."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from _toy import CFG, mlp, toy_data
from netfit import load, train_model
from netfit.distill import CachedTeacher, LogitDistiller
from netfit.engine import train
from netfit.errors import CheckpointError, NetfitError


class CountingTeacher(nn.Module):
    """A fixed random teacher that counts the samples it has been run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.net(x)


def test_remembers_each_sample_and_gives_the_teachers_logits():
    teacher = CountingTeacher()
    cached = CachedTeacher(teacher)
    x = torch.randn(6, 8)
    expected = teacher.eval()(x)
    teacher.rows = 0
    torch.testing.assert_close(cached(x[:4], torch.tensor([3, 0, 5, 1])), expected[:4])
    assert teacher.rows == 4
    # two known samples, one new: only the new one is run
    torch.testing.assert_close(cached(x[[0, 3, 4]], torch.tensor([3, 1, 7])), expected[[0, 3, 4]])
    assert teacher.rows == 5
    torch.testing.assert_close(cached(x[[4, 0]], torch.tensor([7, 3])), expected[[4, 0]])
    assert teacher.rows == 5
    # without ids (augmented data) every call runs the teacher
    torch.testing.assert_close(cached(x[:2]), expected[:2])
    assert teacher.rows == 7
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_a_table_past_its_size_limit_is_not_kept(monkeypatch):
    monkeypatch.setattr(CachedTeacher, "MAX_VALUES", 4 * 10)
    teacher = CountingTeacher()
    cached = CachedTeacher(teacher)
    x = torch.randn(3, 8)
    expected = teacher.eval()(x)
    teacher.rows = 0
    for _ in range(2):
        torch.testing.assert_close(cached(x, torch.tensor([0, 20, 5])), expected)
    assert teacher.rows == 6  # id 20 needs 21 x 4 values: nothing remembered


class AugmentedToyData(type(toy_data())):
    augment = "crop"  # says nothing of the version drawn: the trainer then gives no sample ids (same batches)


def test_distilled_training_runs_the_teacher_once_per_sample_and_trains_the_same():
    plain = toy_data()
    augmented = AugmentedToyData(plain.train, plain.val, plain.test)
    results = {}
    for name, data in (("cached", plain), ("every step", augmented)):
        teacher = CountingTeacher()
        result = train(mlp(), data, CFG, extra_losses=[LogitDistiller(teacher)], progress=False)
        results[name] = (teacher.rows, result.model.state_dict())
    n, epochs = len(plain.train), CFG.epochs
    assert results["cached"][0] == n and results["every step"][0] == n * epochs
    for key, value in results["cached"][1].items():
        torch.testing.assert_close(value, results["every step"][1][key], atol=1e-5, rtol=1e-5)


def test_fine_tunes_sharing_one_cached_teacher_run_it_once_per_sample():
    data = toy_data()
    teacher = CountingTeacher()
    shared = CachedTeacher(teacher)
    for _ in range(2):
        train(mlp(), data, CFG, extra_losses=[LogitDistiller(shared)], progress=False)
    assert teacher.rows == len(data.train)


_CONV_ROWS: list[int] = []  # per teacher, shared with its copies (CachedTeacher runs a channels_last copy)


class CountingConvTeacher(nn.Module):
    """A fixed random image classifier that counts the samples it, or a copy of it, has been run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
        self.key = len(_CONV_ROWS)  # an int, so a deep copy counts into the same entry
        _CONV_ROWS.append(0)

    @property
    def rows(self) -> int:
        return _CONV_ROWS[self.key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _CONV_ROWS[self.key] += len(x)
        return self.net(x)


class Unreported:
    """Augmented data that does not say which version it drew (no ``prepare_drawn``): no sample ids."""

    def __init__(self, data) -> None:
        self._data = data

    def __getattr__(self, name: str):
        if name == "prepare_drawn":
            raise AttributeError(name)
        return getattr(self._data, name)


def test_augmented_samples_are_remembered_per_version_drawn():
    """On augmented data the teacher runs once per sample and version drawn (digits: 9 shifts), not once per
    sample and epoch, and training is what it is when every step runs the teacher."""
    from netfit.data import load_data

    data = load_data("digits")
    data.train = TensorDataset(*(t[:256] for t in data.train.tensors))
    cfg = replace(CFG, epochs=12)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    rows, weights = {}, {}
    for name, source in (("per version", data), ("every step", Unreported(data))):
        teacher = CountingConvTeacher()
        model = train(copy.deepcopy(student), source, cfg, extra_losses=[LogitDistiller(teacher)], progress=False)
        rows[name], weights[name] = teacher.rows, model.model.state_dict()
    n = len(data.train)
    assert rows["every step"] == n * cfg.epochs
    assert n < rows["per version"] <= n * data.augmentations < n * cfg.epochs
    for key, value in weights["per version"].items():
        torch.testing.assert_close(value, weights["every step"][key], atol=1e-5, rtol=1e-5)


def test_a_channels_last_student_gets_a_channels_last_copy_of_the_teacher():
    """The engine trains images in channels_last on CPU (``StepContext.channels_last``): the teacher runs in that
    layout too (a copy, the same logits; a one-channel batch's strides cannot say which layout it is in), and
    the model given keeps its default layout (its weights stay savable)."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(5, 1, 6, 6)
    expected = teacher.eval()(x)
    cached = CachedTeacher(teacher)
    torch.testing.assert_close(cached(x, torch.arange(5)), expected)
    assert cached._channels_last is None  # the default layout: no copy
    torch.testing.assert_close(cached(x, None, channels_last=True), expected)
    assert cached._channels_last is not None and cached._channels_last is not teacher
    assert cached._channels_last[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in teacher.parameters())


class ConstantTeacher(nn.Module):
    """A teacher that says class 0 for every input (logit 40 against 0: sure of it even at the KD temperature)."""

    def __init__(self, num_classes: int = 10, logit: float = 40.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))
        with torch.no_grad():
            self.bias[0] = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def _predictions(out, digits) -> torch.Tensor:
    x, _ = digits.test.tensors
    with torch.no_grad():
        return load(out).eval()(digits.prepare(x, train=False)).argmax(1)


def test_train_model_distils_from_a_teacher_module_or_folder(tmp_path, digits):
    """``train_model(teacher=...)`` adds KD from the teacher's logits: a heavily weighted teacher that always says
    class 0 makes the student say class 0 on most test images, where plain training does not; a teacher given as
    a saved model folder acts the same as the module itself (same weights after training)."""
    settings = dict(epochs=2, seed=0, progress=False)
    train_model("cnn_small", digits, out=tmp_path / "plain", **settings)
    train_model("cnn_small", digits, out=tmp_path / "kd", teacher=ConstantTeacher(), kd_weight=2.0, **settings)
    plain, kd = (_predictions(tmp_path / name, digits) for name in ("plain", "kd"))
    assert (plain == 0).float().mean() < 0.25 < 0.75 < (kd == 0).float().mean()

    folder = tmp_path / "teacher"
    train_model("cnn_small", digits, out=folder, epochs=1, progress=False)
    train_model("cnn_small", digits, out=tmp_path / "from-module", teacher=load(folder), **settings)
    train_model("cnn_small", digits, out=tmp_path / "from-folder", teacher=folder, **settings)
    a, b = (load(tmp_path / name).state_dict() for name in ("from-module", "from-folder"))
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(value, b[key])


def test_train_model_resumes_only_with_its_own_teacher(tmp_path, digits):
    """A checkpoint records the KD loss (weight, temperature, the teacher's exact weights): resuming it with another
    teacher, another weight or none is refused; the same teacher rebuilt (equal weights) continues."""
    out, settings = tmp_path / "kd", dict(epochs=1, seed=0, progress=False)
    train_model("cnn_small", digits, out=out, teacher=ConstantTeacher(), **settings)
    resumed = {**settings, "epochs": 2, "resume": True}
    for teacher, weight in ((ConstantTeacher(logit=20.0), 1.0), (ConstantTeacher(), 2.0), (None, 1.0)):
        with pytest.raises(CheckpointError, match="extra losses"):
            train_model("cnn_small", digits, out=out, teacher=teacher, kd_weight=weight, **resumed)
    train_model("cnn_small", digits, out=out, teacher=ConstantTeacher(), **resumed)


class FixedTeacher(nn.Module):
    """A teacher without parameters or buffers: says class 0 for every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float().to(x.device) * 40.0


def test_train_model_takes_a_teacher_without_parameters(tmp_path, digits):
    out = tmp_path / "kd"
    train_model("cnn_small", digits, out=out, epochs=2, seed=0, progress=False, teacher=FixedTeacher(), kd_weight=2.0)
    assert (_predictions(out, digits) == 0).float().mean() > 0.75


def test_train_model_refuses_a_teacher_for_other_classes(tmp_path, digits):
    with pytest.raises(NetfitError, match="teacher ConstantTeacher outputs shape"):
        train_model("cnn_small", digits, out=tmp_path / "t", epochs=1, progress=False, teacher=ConstantTeacher(3))
    with pytest.raises(NetfitError, match="kd_weight must be > 0"):
        train_model("cnn_small", digits, out=tmp_path / "t", epochs=1, teacher=ConstantTeacher(), kd_weight=0.0)
