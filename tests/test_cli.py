"""The CLI: every command once, and user mistakes end with one line and exit code 2."""

import json

import pytest

from netfit.cli import main


def run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list(capsys):
    code, out, _ = run(capsys, "list", "models")
    assert code == 0 and "resnet18_cifar" in out and "mobilenetv2" in out
    code, out, _ = run(capsys, "list", "methods")
    assert code == 0 and "uniform" in out and "random" in out
    code, out, _ = run(capsys, "list", "data")
    assert code == 0 and "digits" in out


def test_cost_json(capsys):
    code, out, _ = run(capsys, "cost", "cnn_small", "--input-shape", "1,8,8", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["flops"] == 2 * stats["macs"] > 0 and stats["params"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cost", "resnet19"], "unknown model 'resnet19'"),
        (["cost", "cnn_small", "--input-shape", "1,x"], "--input-shape"),
        (["adapt", "--model", "cnn_small", "--budget", "5 bananas"], "unknown budget metric"),
        (["adapt", "--model", "cnn_small", "--method", "dnaa"], "unknown method 'dnaa'"),
        (["adapt", "--model", "cnn_small", "--data", "/no/such/dir"], "/no/such/dir"),
        (["adapt", "--model", "cnn_small", "-x", "novalue"], "KEY=VALUE"),
        (["eval", "/no/such/run"], "/no/such/run"),
        (["list", "things"], "cannot list 'things'"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *args, *(["--out", str(tmp_path / "o")] if args[0] == "adapt" else []))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_usage_error_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # typer draws the error in a box as wide as the terminal
    code, _, err = run(capsys, "adapt", "--epochs", "many")
    assert code == 2 and "Invalid value for '--epochs'" in err


@pytest.mark.slow
def test_adapt_eval_export_report(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "adapt",
        "--model",
        "cnn_small",
        "--data",
        "digits",
        "--budget",
        "50%",
        "--epochs",
        "1",
        "--seed-epochs",
        "1",
        "--out",
        str(out),
        "--quiet",
    )
    assert code == 0, err
    assert "seed" in stdout and "within budget" in stdout
    code, stdout, _ = run(capsys, "eval", str(out), "--data", "digits")
    assert code == 0 and "accuracy" in stdout
    code, stdout, err = run(capsys, "export", str(out), "--onnx", "--out", str(tmp_path / "plain"))
    assert code == 0, err
    assert (tmp_path / "plain" / "model.onnx").exists() and (tmp_path / "plain" / "arch.json").exists()
    code, _, _ = run(capsys, "report", str(out), str(out), "--out", str(tmp_path / "both.png"))
    assert code == 0 and (tmp_path / "both.png").exists()
    code, stdout, _ = run(capsys, "train", "--model", "cnn_small", "--epochs", "1", "--out", str(tmp_path / "t"), "-q")
    assert code == 0 and "test accuracy" in stdout
    code, stdout, err = run(
        capsys,
        "adapt",
        "--model",
        "cnn_small",
        "--seed-weights",
        str(tmp_path / "t"),
        "--budget",
        "60%",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "r2"),
        "-q",
    )
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize(("model", "data"), [("cnn1d", "mnist1d"), ("cnn_small", "mnist10k")])
def test_adapt_on_offline_data_sets(capsys, tmp_path, model, data):
    from netfit.data import mnist10k_dir

    if data == "mnist10k" and mnist10k_dir() is None:
        pytest.skip("MNIST-10k (../shared/data/mnist-10k) not present")
    code, _, err = run(
        capsys,
        "adapt",
        "--model",
        model,
        "--data",
        data,
        "--budget",
        "40%",
        "--epochs",
        "1",
        "--seed-epochs",
        "1",
        "--batch-size",
        "256",
        "--out",
        str(tmp_path / "r"),
        "-q",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "result.json").read_text())
    assert summary["data"] == data and all(r["within_budget"] for r in summary["candidates"])


@pytest.mark.parametrize(
    ("flag", "expected"), [([], None), (["--no-channels-last"], False), (["--channels-last"], True)]
)
def test_train_memory_layout_flag(capsys, tmp_path, flag, expected):
    """--channels-last/--no-channels-last reach the training settings; unset, the engine decides (None)."""
    from netfit.engine import load_checkpoint

    out = tmp_path / "seed"
    code, _, err = run(capsys, "train", "--model", "cnn_small", "--epochs", "1", "--quiet", "--out", str(out), *flag)
    assert code == 0, err
    assert load_checkpoint(out / "ckpt" / "train.pt")["config"]["channels_last"] is expected
