"""Data: built-ins, every path format, stratified seeded splits, augmentation, and clear errors."""

import gzip
import struct

import numpy as np
import pytest
import torch

from netfit.data import load_data, mnist10k_dir
from netfit.errors import DataError, UnknownNameError


def class_counts(dataset, k=10):
    return np.bincount(dataset.tensors[1].numpy(), minlength=k)


def test_digits():
    d = load_data("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    total = class_counts(d.train) + class_counts(d.val) + class_counts(d.test)
    expected = total * len(d.test) / total.sum()
    assert np.all(np.abs(class_counts(d.test) - expected) <= 1)  # stratified to within one sample


def test_mnist1d_keeps_its_test_set():
    d = load_data("mnist1d")
    assert d.input_shape == (1, 40) and len(d.test) == 1000 and len(d.train) + len(d.val) == 4000
    assert d.augment is None


def test_mnist1d_hard_is_mnist1d_with_more_noise():
    plain, hard = load_data("mnist1d"), load_data("mnist1d_hard")
    assert hard.input_shape == plain.input_shape and len(hard.test) == len(plain.test)
    assert torch.equal(hard.test.tensors[1], plain.test.tensors[1])  # same signals and labels, noisier samples
    assert not torch.allclose(hard.test.tensors[0], plain.test.tensors[0])
    assert "iid_noise_scale 0.05" in hard.source


def test_split_is_seeded_and_disjoint():
    a, b, c = load_data("digits"), load_data("digits"), load_data("digits", split_seed=1)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    rows = {tuple(x.flatten().tolist()) for part in (a.train, a.val, a.test) for x in part.tensors[0]}
    assert len(rows) >= 1797 - 20  # digits has a few duplicate images; otherwise splits share nothing


@pytest.mark.skipif(mnist10k_dir() is None, reason="MNIST-10k (../shared/data/mnist-10k) not present")
def test_real_mnist10k():
    d = load_data("mnist10k")
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert (len(d.train) + len(d.val), len(d.test)) == (8000, 2000)
    assert d.train.tensors[0].dtype == torch.uint8


def test_prepare_normalises_and_augments_reproducibly():
    d = load_data("digits")
    x = d.train.tensors[0]
    plain = d.prepare(x, train=False)
    assert abs(float(plain.mean())) < 0.01 and abs(float(plain.std()) - 1) < 0.05
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    aug1, aug2 = d.prepare(x[:64], train=True, generator=g1), d.prepare(x[:64], train=True, generator=g2)
    assert torch.equal(aug1, aug2) and not torch.equal(aug1, plain[:64])


@pytest.mark.parametrize("kind", ["crop", "crop_flip"])
def test_each_drawn_version_is_one_fixed_augmentation_of_the_sample(kind):
    """``augment`` says which version each sample got: one version, one image; every version occurs; and the
    images are those ``prepare`` makes from the same generator."""
    from netfit.data.augment import augment, augmentations

    x = torch.randn(1, 1, 8, 8).expand(2000, 1, 8, 8)  # one asymmetric image, many draws
    out, version = augment(x, kind, torch.Generator().manual_seed(0))
    count = augmentations(kind, (1, 8, 8))
    assert count == (18 if kind == "crop_flip" else 9) and set(version.tolist()) == set(range(count))
    images = {}
    for image, v in zip(out, version.tolist()):
        assert torch.equal(images.setdefault(v, image), image)
    assert len({tuple(image.flatten().tolist()) for image in images.values()}) == count
    d = load_data("digits")
    raw = d.train.tensors[0][:64]
    drawn, versions = d.prepare_drawn(raw, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, d.prepare(raw, train=True, generator=torch.Generator().manual_seed(3)))
    assert versions.shape == (64,) and d.augmentations == 9
    assert augmentations(None, (1, 8, 8)) == augmentations("crop", (1, 40)) == 1


def write_idx(path, array, magic, compress):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_pair_is_split(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 255, (200, 6, 6)), 2051, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(200) % 4, 2049, compress)
    d = load_data(str(tmp_path))
    assert d.input_shape == (1, 6, 6) and d.num_classes == 4 and len(d.test) == 40


def test_idx_train_and_test(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((50, 4, 4)), 2051, False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(50) % 2, 2049, False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 4, 4)), 2051, False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10) % 2, 2049, False)
    d = load_data(str(tmp_path))
    assert len(d.test) == 10 and len(d.train) + len(d.val) == 50


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}.bin", 20) for i in range(1, 6)] + [("test_batch.bin", 10)]:
        labels = (np.arange(n) % 10).astype(np.uint8)[:, None]
        (tmp_path / name).write_bytes(np.hstack([labels, rng.integers(0, 255, (n, 3072), dtype=np.uint8)]).tobytes())
    d = load_data(str(tmp_path))
    assert d.input_shape == (3, 32, 32) and len(d.test) == 10 and d.augment == "crop_flip"


def test_image_folder(tmp_path):
    import matplotlib.pyplot as plt

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            plt.imsave(tmp_path / cls / f"{i}.png", np.random.default_rng(i).random((6, 6)), cmap="gray")
    d = load_data(str(tmp_path))
    assert d.num_classes == 2 and d.input_shape[1:] == (6, 6)


def test_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((60, 12)).astype(np.float32), y=np.arange(60) % 3)
    d = load_data(str(tmp_path / "d.npz"))
    assert d.input_shape == (1, 12) and d.num_classes == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (
            lambda p: (
                write_idx(p / "t10k-images-idx3-ubyte", np.zeros((5, 2, 2)), 2049, False),
                write_idx(p / "t10k-labels-idx1-ubyte", np.zeros(5), 2049, False),
                p,
            )[-1],
            "magic number 2049",
        ),
        (
            lambda p: (
                write_idx(p / "t10k-images-idx3-ubyte", np.zeros((5, 2, 2)), 2051, False),
                write_idx(p / "t10k-labels-idx1-ubyte", np.zeros(6), 2049, False),
                p,
            )[-1],
            "5 images but",
        ),
        (
            lambda p: (
                (p / "data_batch_1.bin").write_bytes(b"\0" * 3000),
                (p / "test_batch.bin").write_bytes(b"\0"),
                p,
            )[-1],
            "not a multiple",
        ),
        (
            lambda p: (np.savez(p / "o.npz", x=np.array([{"a": 1}] * 3, dtype=object), y=np.zeros(3)), p / "o.npz")[-1],
            "pickled objects",
        ),
        (lambda p: (np.savez(p / "m.npz", x=np.zeros((4, 3)), y=np.zeros(5)), p / "m.npz")[-1], "different lengths"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no data found"),
    ],
)
def test_errors_name_the_problem(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_data(str(make(tmp_path)))


def test_image_folder_mixed_sizes(tmp_path):
    import matplotlib.pyplot as plt

    (tmp_path / "a").mkdir()
    plt.imsave(tmp_path / "a" / "1.png", np.zeros((4, 4)), cmap="gray")
    plt.imsave(tmp_path / "a" / "2.png", np.zeros((5, 5)), cmap="gray")
    with pytest.raises(DataError, match=r"2\.png"):
        load_data(str(tmp_path))


def test_unknown_name_suggests():
    with pytest.raises(UnknownNameError, match="digits"):
        load_data("digit")
