"""The memory layout: channels_last on CPU images only, never where oneDNN faults, trains like the default
layout and resumes."""

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from _toy import CFG, KillAt, ToyData, toy_data
from netfit.engine import TrainConfig, TrainConfigError, train


@dataclass
class ToyImages(ToyData):
    """The toy task as 1x2x4 images: the layout (channels_last) applies to them."""

    input_shape: tuple = (1, 2, 4)

    def prepare(self, x, train, generator=None):
        return x.float().reshape(-1, 1, 2, 4)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def test_channels_last_default_is_cpu_images_only():
    from netfit.engine import channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert channels_last(TrainConfig(), cpu, (1, 28, 28))
    assert not channels_last(TrainConfig(), cpu, (1, 40))  # signals have no channels_last layout
    assert not channels_last(TrainConfig(), gpu, (1, 28, 28))
    assert channels_last(TrainConfig(channels_last=True), gpu, (3, 32, 32))
    assert not channels_last(TrainConfig(channels_last=False), cpu, (1, 28, 28))
    with pytest.raises(TrainConfigError, match="channels_last must be a bool"):
        TrainConfig(channels_last="yes").validate()


def test_a_model_with_a_strided_pointwise_convolution_never_trains_channels_last_on_cpu(caplog):
    """oneDNN's channels_last backward of a strided 1x1 convolution with few input channels corrupts the heap on
    CPU; a ResNet's projection shortcut is one (and DNA's sliced ResNets make it narrow)."""
    from netfit.engine import channels_last
    from netfit.models import create_model

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resnet, plain = create_model("resnet18_cifar", num_classes=10, in_chans=1), small_cnn()
    assert not channels_last(TrainConfig(), cpu, (1, 28, 28), resnet)
    assert channels_last(TrainConfig(), cpu, (1, 28, 28), plain)
    assert channels_last(TrainConfig(channels_last=True), gpu, (1, 28, 28), resnet)  # cuDNN: no such fault
    assert not channels_last(TrainConfig(channels_last=True), cpu, (1, 28, 28), resnet)
    assert "channels_last is unsafe on CPU" in caplog.text
    caplog.clear()  # one training asked for channels_last says once that it does not use it
    toy = toy_data(n=64)
    shortcut = nn.Sequential(nn.Conv2d(1, 4, 1, stride=2), nn.Flatten(), nn.Linear(8, 4))
    train(shortcut, ToyImages(toy.train, toy.val, toy.test), CFG.replace(epochs=1, channels_last=True), progress=False)
    assert caplog.text.count("channels_last is unsafe on CPU") == 1


def test_the_layout_chosen_for_a_narrow_strided_pointwise_convolution_trains_without_fault():
    """The fault itself, in a fresh process with glibc's heap checks on: a [2, 4, 1, 1] stride-2 convolution
    trained in the layout netfit picks for it (in channels_last this aborted every time it was tried)."""
    script = textwrap.dedent(
        """
        import torch
        from torch import nn
        from netfit.engine import TrainConfig, channels_last
        from netfit.engine import channels_last_layout

        conv = nn.Conv2d(4, 2, 1, stride=2, bias=False)
        on = channels_last(TrainConfig(), torch.device("cpu"), (4, 8, 8), conv)
        with channels_last_layout(conv, on):
            x = torch.randn(8, 4, 8, 8, requires_grad=True)
            x = x.contiguous(memory_format=torch.channels_last) if on else x
            for _ in range(5):
                conv(x).sum().backward()
        print("layout", on)
        """
    )
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert "layout False" in done.stdout


@pytest.mark.parametrize("on", [False, True])
def test_the_step_says_which_layout_the_model_trains_in(on):
    """``StepContext.channels_last`` is the engine's choice (frozen teachers follow it: CachedTeacher)."""
    toy = toy_data(n=64)
    seen = set()

    def record(ctx, logits):
        seen.add(ctx.channels_last)
        return logits.sum() * 0

    data = ToyImages(toy.train, toy.val, toy.test)
    train(small_cnn(), data, CFG.replace(epochs=1, channels_last=on), progress=False, extra_losses=[record])
    assert seen == {on}


def test_channels_last_trains_like_the_default_layout_and_resumes(tmp_path):
    """Training in channels_last computes what the default layout does (to float rounding), the model comes
    back in the default layout, and a killed run resumes exactly."""
    toy = toy_data(n=128)
    data = ToyImages(toy.train, toy.val, toy.test)
    cfg = CFG.replace(epochs=2)
    plain = train(small_cnn(), data, cfg.replace(channels_last=False), progress=False).model
    last = train(small_cnn(), data, cfg.replace(channels_last=True), progress=False).model
    conv = last[0].weight
    assert conv.is_contiguous() and conv.stride() == (9, 9, 3, 1)
    for a, b in zip(plain.state_dict().values(), last.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)
    with pytest.raises(KeyboardInterrupt):
        train(
            small_cnn(),
            data,
            cfg.replace(channels_last=True),
            checkpoint=tmp_path / "c.pt",
            progress=False,
            callbacks=[KillAt(1)],
        )
    resumed = train(
        small_cnn(), data, cfg.replace(channels_last=True), checkpoint=tmp_path / "c.pt", resume=True, progress=False
    ).model
    for a, b in zip(last.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
