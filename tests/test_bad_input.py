"""Bad input, table-driven: every malformed input gives exit code 2 and one clear line naming the problem,
never a traceback, and leaves no half-written file behind."""

import errno
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from netfit import fileio
from netfit.api import train_model
from netfit.cli import main
from netfit.errors import NetfitError


def adapt(*extra, out=None):
    def setup(tmp, trained):
        args = ["adapt", "--model", "cnn_small", "--data", "digits", "--epochs", "1", "--seed-epochs", "1", "-q"]
        return [*args, "--out", str(out(tmp) if out else tmp / "run"), *extra]

    return setup


def corrupt(change):
    """Export a copy of the trained model folder after ``change(folder)`` damaged it."""

    def setup(tmp, trained):
        folder = tmp / "model"
        shutil.copytree(trained, folder)
        change(folder)
        return ["export", str(folder), "--out", str(tmp / "exported")]

    return setup


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def idx(magic: int, dims: list[int], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def idx_data(images: bytes, labels: bytes):
    def setup(tmp, trained):
        write(tmp / "idx" / "train-images-idx3-ubyte", images)
        write(tmp / "idx" / "train-labels-idx1-ubyte", labels)
        return adapt("--data", str(tmp / "idx"))(tmp, trained)

    return setup


class _RunsCode:
    """Unpickling this would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint(content):
    def setup(tmp, trained):
        write(tmp / "run" / "ckpt" / "seed.pt", content(tmp))
        return adapt("--resume")(tmp, trained)

    return setup


def npz_data(tmp, trained):
    np.savez(tmp / "d.npz", a=np.zeros(3))
    return adapt("--data", str(tmp / "d.npz"))(tmp, trained)


def escape_run(tmp, trained):
    shutil.copytree(trained, tmp / "outside")
    summary = {"selected": "a", "candidates": [{"id": "a", "weights": "../outside"}]}
    write(tmp / "run" / "result.json", json.dumps(summary).encode())
    return ["export", str(tmp / "run"), "--out", str(tmp / "exported")]


def edit_arch(change):
    def apply(folder: Path) -> None:
        spec = json.loads((folder / "arch.json").read_text())
        change(spec["arch"])
        (folder / "arch.json").write_text(json.dumps(spec))

    return apply


def truncate(name: str, keep: int):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])


CASES = [
    ("unknown model", lambda tmp, t: ["cost", "resnet19"], "unknown model 'resnet19'"),
    ("input shape not numbers", lambda tmp, t: ["cost", "cnn_small", "--input-shape", "1,x"], "--input-shape"),
    ("input shape with a zero", lambda tmp, t: ["cost", "cnn_small", "--input-shape", "0,8,8"], "positive integers"),
    ("input shape wrong for model", lambda tmp, t: ["cost", "resnet18_1d", "--input-shape", "3,8,8"], "cannot run"),
    ("unknown method", adapt("--method", "dnaa"), "unknown method 'dnaa'"),
    ("budget metric unknown", adapt("--budget", "5 bananas"), "unknown budget metric"),
    ("budget zero", adapt("--budget", "0%"), "must be positive"),
    ("budget negative", adapt("--budget", "-5%"), "cannot read budget '-5%'"),
    ("budget empty", adapt("--budget", ""), "no budget given"),
    ("budget repeated", adapt("--budget", "50%,50%"), "repeat a budget"),
    ("budget not a number", adapt("--budget", "abc%"), "cannot read budget 'abc%'"),
    ("budget mixes metrics", adapt("--budget", "50%,1M params"), "mix metrics"),
    ("budget impossible", adapt("--budget", "1 macs"), "below the smallest network"),
    ("data path missing", adapt("--data", "/no/such/dir"), "/no/such/dir does not exist"),
    ("method option without value", adapt("-x", "novalue"), "KEY=VALUE"),
    ("method option unknown", adapt("-x", "bogus=1"), "unknown option(s) bogus"),
    ("dna option out of range", adapt("--method", "dna", "-x", "grow_width=0.5"), "grow_width >= 1"),
    ("dna option of the wrong type", adapt("--method", "dna", "-x", "finetune_clip=none"), "must be float | None"),
    ("dna growth init unknown", adapt("--method", "dna", "-x", "grow_copies=half"), "grow_copies must be"),
    ("learning rate gives NaN", adapt("--lr", "1e12", "--seed-weights", "TRAINED"), "loss became nan"),
    ("output under a file", adapt(out=lambda tmp: write(tmp / "file", b"x") / "run"), "cannot write"),
    ("seed weights missing", adapt("--seed-weights", "/no/such/seed"), "arch.json not found"),
    (
        "teacher missing",
        lambda tmp, t: ["train", "--model", "cnn_small", "--teacher", "/no/such/teacher", "--out", str(tmp / "t")],
        "arch.json not found",
    ),
    ("device without CUDA", adapt("--device", "cuda"), "CUDA is not available"),
    ("eval of a missing run", lambda tmp, t: ["eval", "/no/such/run"], "not found"),
    (
        "eval of a corrupt result",
        lambda tmp, t: ["eval", str(write(tmp / "r" / "result.json", b"{x").parent)],
        "unreadable",
    ),
    ("weights truncated", corrupt(truncate("model.safetensors", 100)), "is corrupt"),
    ("weights missing", corrupt(lambda d: (d / "model.safetensors").unlink()), "model.safetensors not found"),
    ("arch not JSON", corrupt(lambda d: (d / "arch.json").write_text("{oops")), "not valid JSON"),
    ("arch of unknown family", corrupt(edit_arch(lambda a: a.update(family="nope"))), "unknown model family 'nope'"),
    ("arch does not match weights", corrupt(edit_arch(lambda a: a["stem"].update(width=33))), "does not match"),
    ("checkpoint holding code", checkpoint(lambda tmp: pickle.dumps(_RunsCode(tmp / "PWNED"))), "checkpoint"),
    ("checkpoint truncated", checkpoint(lambda tmp: b"PK\x03\x04 cut"), "is corrupt or not a netfit checkpoint"),
    ("IDX wrong magic", idx_data(idx(1234, [2, 8, 8], bytes(128)), idx(2049, [2], bytes(2))), "magic number 1234"),
    ("IDX counts differ", idx_data(idx(2051, [3, 8, 8], bytes(192)), idx(2049, [2], bytes(2))), "3 images but"),
    ("IDX body truncated", idx_data(idx(2051, [3, 8, 8], bytes(100)), idx(2049, [3], bytes(3))), "header promises"),
    ("npz without x and y", npz_data, "must contain arrays 'x' and 'y'"),
    ("run file pointing outside the run", escape_run, "points outside the run directory"),
    ("list of unknown things", lambda tmp, t: ["list", "things"], "cannot list 'things'"),
    ("train an unknown model", lambda tmp, t: ["train", "--model", "nope", "--out", str(tmp / "t")], "unknown model"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--model", "cnn_small", "--epochs", "1", "--out", str(out), "-q"]) == 0
    return out


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("setup", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(tmp_path, capsys, trained, setup, message):
    argv = [str(trained) if a == "TRAINED" else a for a in setup(tmp_path, trained)]
    before = _files(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    written = _files(tmp_path) - before
    assert not [p for p in written if p.name.endswith(".tmp")]  # no half-written file
    assert not [p for p in written if p.name == "result.json" or "exported" in p.parts]  # nothing half-done
    assert not (tmp_path / "PWNED").exists()  # the planted pickle never ran


def test_there_are_at_least_30_bad_inputs():
    assert len(CASES) >= 30


def test_full_disk_leaves_no_partial_file(tmp_path, digits, monkeypatch):
    """A disk that fills up while a file is written (ENOSPC at fsync) gives one clear error and leaves neither
    the file nor its temporary copy."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(NetfitError, match="No space left on device"):
        train_model("cnn_small", digits, out=tmp_path / "t", epochs=1, progress=False)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".tmp", ".safetensors", ".pt")]
