"""Train-free metrics on tiny networks with known answers, and ``netfit score``."""

import json
import math

import pytest
import torch
from torch import nn

from netfit.cli import main
from netfit.errors import NetfitError
from netfit.export import save_model
from netfit.models import create_model
from netfit.trainfree import activation_patterns, linear_regions, ntk_condition_number, score_path, unsaturated_span

KINKS = [-0.8, -0.3, 0.1, 0.5, 0.9]


def kinked_1d_net(kinks=KINKS) -> nn.Module:
    """f(x) = sum_i relu(x - k_i): a 1-D ReLU net whose pieces on [-1, 1] are known (len(kinks) + 1)."""
    net = nn.Sequential(nn.Linear(1, len(kinks)), nn.ReLU(), nn.Linear(len(kinks), 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(-torch.tensor(kinks))
    return net


class FunctionalRelu(nn.Module):
    """The same function with torch.relu instead of an nn.ReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = kinked_1d_net()

    def forward(self, x):
        return self.inner[2](torch.relu(self.inner[0](x)))


def test_ntk_condition_number_of_a_linear_model():
    # f(x) = w . x: each sample's gradient is x itself, so the NTK is X X^T = diag(1, 4)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert ntk_condition_number(nn.Linear(2, 1, bias=False), x) == pytest.approx(4.0)
    assert ntk_condition_number(nn.Linear(2, 1, bias=False), torch.tensor([[1.0, 2.0], [2.0, 4.0]])) == math.inf


def test_ntk_parameter_filter_and_mode_are_respected():
    net = nn.Sequential(nn.Linear(2, 1, bias=True))
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    only_weight = ntk_condition_number(net, x, param_filter=lambda n, p: n.endswith("weight"))
    assert only_weight == pytest.approx(4.0)
    net.train()
    ntk_condition_number(net, x)
    assert net.training  # the mode is restored
    with pytest.raises(NetfitError, match="at least 2"):
        ntk_condition_number(net, x[:1])


@pytest.mark.parametrize("model", [kinked_1d_net(), FunctionalRelu()])
def test_linear_regions_of_a_1d_relu_net(model):
    ends = torch.tensor([[-1.0], [1.0]])
    assert linear_regions(model, ends, points=1000, span=1.0) == len(KINKS) + 1
    assert linear_regions(model, ends, points=1000, span=0.5) == 3  # [-1, 0] holds the kinks at -0.8 and -0.3
    two_segments = torch.tensor([[-1.0], [1.0], [0.2], [0.3]])  # the second segment crosses no kink
    assert linear_regions(model, two_segments, points=1000, span=1.0) == len(KINKS) + 1 + 1


def test_unsaturated_span_halves_until_the_count_can_rise():
    """Along [-1, 1] at 4 points every step crosses a kink (4 of at most 4): the count cannot rise. Half the span
    ([-1, 0]) still crosses in 2 of 3 steps; a quarter ([-1, -0.5]) crosses -0.8 only: 2, half the maximum."""
    net, ends = kinked_1d_net(), torch.tensor([[-1.0], [1.0]])
    assert linear_regions(net, ends, points=4, span=1.0) == 4
    assert linear_regions(net, ends, points=4, span=0.5) == 3
    span = unsaturated_span(net, ends, points=4, span=1.0)
    assert span == 0.25 and linear_regions(net, ends, points=4, span=span) == 2
    assert unsaturated_span(net, ends, points=4, span=0.25) == 0.25  # unsaturated already: kept


def test_activation_patterns_and_no_relu():
    codes = activation_patterns(kinked_1d_net(), torch.tensor([[0.0], [1.0]]))
    assert codes.tolist() == [[True, True, False, False, False], [True, True, True, True, True]]
    assert linear_regions(nn.Linear(1, 1), torch.tensor([[-1.0], [1.0]])) == 1  # affine: one piece
    with pytest.raises(NetfitError, match="span"):
        linear_regions(kinked_1d_net(), torch.tensor([[-1.0], [1.0]]), span=0.0)


def test_score_a_model_folder_a_run_and_a_builtin(tmp_path, digits):
    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_chans=1, width_mult=0.25)
    save_model(model, tmp_path / "run" / "a", input_shape=(1, 8, 8))
    result = {"candidates": [{"id": "a", "weights": "a", "accuracy": 0.5}]}
    (tmp_path / "run" / "result.json").write_text(json.dumps(result))
    (row,) = score_path(tmp_path / "run" / "a", digits, samples=4)
    assert set(row) == {"id", "ntk_cond", "linear_regions", "macs", "flops", "params"} and row["ntk_cond"] >= 1
    (run_row,) = score_path(tmp_path / "run", digits, samples=4)
    assert run_row["accuracy"] == 0.5 and run_row["linear_regions"] == row["linear_regions"]
    (fresh,) = score_path("cnn_small", digits, samples=4)
    assert fresh["id"] == "cnn_small" and fresh["linear_regions"] >= 2


def test_score_cli(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(create_model("cnn_small", num_classes=10, in_chans=1, width_mult=0.25), tmp_path, input_shape=(1, 8, 8))
    assert main(["score", str(tmp_path), "--data", "digits", "--samples", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == tmp_path.name
    assert main(["score", str(tmp_path / "missing"), "--data", "digits"]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main(["score", str(tmp_path), "--data", "digits", "--samples", "1"]) == 2
    assert main(["score", "cnn1d", "--data", "digits", "--samples", "4"]) == 2  # 1-D model, 2-D data
