"""Readers for standard on-disk formats: IDX (MNIST family), CIFAR binary, image folders and .npz arrays.

Each reader returns ``Arrays``: x (N, C, ...) uint8 or float32, y int64, and optionally a separate test set.
Every problem raises ``DataError`` naming the file.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclass
class Arrays:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    augment: str | None = None
    kind: str = ""


def _read_bytes(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """One IDX file (optionally .gz) as a uint8 array; magic 2051 = images, 2049 = labels."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has magic number {magic}, expected {expected_magic} (not an IDX "
            f"{'image' if expected_magic == 2051 else 'label'} file)"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path} holds {len(body)} bytes of data but its header promises {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_pair(directory: Path, tag: str) -> tuple[Path, Path] | None:
    images = sorted(directory.glob(f"*{tag}*images*idx3-ubyte*".replace("**", "*")))
    labels = sorted(directory.glob(f"*{tag}*labels*idx1-ubyte*".replace("**", "*")))
    return (images[0], labels[0]) if images and labels else None


def _load_idx_pair(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(pair[0], 2051), read_idx(pair[1], 2049)
    if len(images) != len(labels):
        raise DataError(f"{pair[0]} has {len(images)} images but {pair[1]} has {len(labels)} labels")
    return images[:, None], labels.astype(np.int64)


def read_idx_dir(directory: Path) -> Arrays | None:
    """MNIST/Fashion-MNIST/EMNIST: train-* and t10k-*/test-* pairs, or a single pair to be split."""
    train = _idx_pair(directory, "train")
    test = _idx_pair(directory, "t10k") or _idx_pair(directory, "test")
    any_pair = _idx_pair(directory, "")
    if train and test:
        x, y = _load_idx_pair(train)
        xt, yt = _load_idx_pair(test)
        return Arrays(x, y, xt, yt, augment="crop", kind="IDX train/test")
    if any_pair:
        x, y = _load_idx_pair(any_pair)
        return Arrays(x, y, augment="crop", kind=f"IDX {any_pair[0].name}")
    return None


def read_cifar_dir(directory: Path) -> Arrays | None:
    """CIFAR-10 (data_batch_1..5.bin + test_batch.bin) or CIFAR-100 (train.bin + test.bin) binary version."""
    nested = [d for d in ("cifar-10-batches-bin", "cifar-100-binary") if (directory / d).is_dir()]
    if nested:
        directory = directory / nested[0]
    batches = sorted(directory.glob("data_batch_*.bin"))
    if batches and (directory / "test_batch.bin").exists():
        label_bytes, files, test = 1, batches, directory / "test_batch.bin"
    elif (directory / "train.bin").exists() and (directory / "test.bin").exists():
        label_bytes, files, test = 2, [directory / "train.bin"], directory / "test.bin"
    else:
        return None

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
        record = label_bytes + 3072
        if raw.size == 0 or raw.size % record:
            raise DataError(
                f"{path} has {raw.size} bytes, not a multiple of the {record}-byte CIFAR record "
                "(truncated or not the binary version)"
            )
        rows = raw.reshape(-1, record)
        return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_bytes - 1].astype(np.int64)

    parts = [read(f) for f in files]
    xt, yt = read(test)
    return Arrays(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        xt,
        yt,
        augment="crop_flip",
        kind=f"CIFAR-{10 if label_bytes == 1 else 100} binary",
    )


def read_image_folder(directory: Path) -> Arrays | None:
    """root/<class>/<image>: classes are the sorted folder names; all images must share one size."""
    class_dirs = sorted(d for d in directory.iterdir() if d.is_dir())
    files = [
        (f, i) for i, d in enumerate(class_dirs) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        return None
    import matplotlib.image as mpimg

    images, labels, first_shape = [], [], None
    for path, label in files:
        try:
            img = np.asarray(mpimg.imread(path))
        except Exception as e:  # any decoder failure is a bad file
            raise DataError(f"cannot decode image {path}: {e}") from e
        if img.dtype != np.uint8:
            img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        img = img[..., None] if img.ndim == 2 else img[..., :3] if img.shape[-1] == 4 else img
        if first_shape is None:
            first_shape = img.shape
        if img.shape != first_shape:
            raise DataError(
                f"image {path} has shape {img.shape} but {files[0][0]} has {first_shape}; "
                "all images of a folder must share one size and channel count"
            )
        images.append(img.transpose(2, 0, 1))
        labels.append(label)
    return Arrays(np.stack(images), np.array(labels, dtype=np.int64), augment="crop", kind="image folder")


def read_npz(path: Path) -> Arrays:
    """Arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``), loaded without pickle."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise DataError(f"{path} holds pickled objects, which netfit refuses to load ({e})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as .npz: {e}") from e
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must contain arrays 'x' and 'y' (found: {', '.join(arrays) or 'none'})")

    def shape(x: np.ndarray) -> np.ndarray:
        if x.ndim == 2:  # (N, L) signals or... (N, H, W) images are 3-D
            return x[:, None]
        if x.ndim == 3 and x.dtype == np.uint8:
            return x[:, None]
        if x.ndim in (3, 4):
            return x
        raise DataError(f"{path}: x has shape {x.shape}; expected (N,L), (N,C,L), (N,H,W) or (N,C,H,W)")

    x = shape(arrays["x"])
    xt = shape(arrays["x_test"]) if "x_test" in arrays else None
    for xs, ys, name in ((x, arrays["y"], "x/y"), (xt, arrays.get("y_test"), "x_test/y_test")):
        if xs is not None and (ys is None or len(xs) != len(ys)):
            raise DataError(f"{path}: {name} have different lengths or labels are missing")
    x = x if x.dtype == np.uint8 else x.astype(np.float32)
    xt = None if xt is None else xt if xt.dtype == np.uint8 else xt.astype(np.float32)
    return Arrays(
        x,
        arrays["y"].astype(np.int64),
        xt,
        arrays.get("y_test", np.empty(0)).astype(np.int64) if xt is not None else None,
        augment="crop" if x.ndim == 4 else None,
        kind=".npz",
    )


def read_path(path: Path) -> Arrays:
    """Detect the format of ``path`` and read it."""
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; give a built-in name (digits, mnist1d, mnist10k) or a "
            "path to IDX files, CIFAR binary files, an image folder or an .npz file"
        )
    if path.is_file():
        if path.suffix == ".npz":
            return read_npz(path)
        raise DataError(
            f"{path} is a file netfit cannot read; files must be .npz (a directory for IDX, CIFAR or image folders)"
        )
    for reader in (read_idx_dir, read_cifar_dir, read_image_folder):
        arrays = reader(path)
        if arrays is not None:
            return arrays
    raise DataError(
        f"no data found in {path}; tried IDX (*images-idx3-ubyte[.gz] + *labels-idx1-ubyte[.gz]), "
        "CIFAR binary (data_batch_*.bin + test_batch.bin, or train.bin + test.bin) and an image folder "
        "(one subfolder of images per class)"
    )
