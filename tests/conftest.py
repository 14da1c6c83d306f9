"""Shared fixtures: a tiny MNIST written in the real IDX format, and the flags of a shrunken run."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from lit_mnist.data import DATA_DIR_ENV

REAL_DATA = os.environ.get(DATA_DIR_ENV)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an uncompressed IDX file, the format of MNIST's raw files."""
    magic = 0x00000800 | array.ndim  # 0x08: unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(f">{1 + array.ndim}I", magic, *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` learnable 28x28 images: class k is a bright bar in rows 2k+4..2k+7 over noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        start = int(rng.integers(0, 8))
        images[i, 2 * k + 4 : 2 * k + 8, start : start + 20] = 255
    return images, labels.astype(np.uint8)


def write_tiny_mnist(root: Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST") -> Path:
    """Write a tiny dataset as ``root/<folder>/raw/*-ubyte``, the layout torchvision reads."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with a tiny MNIST (600 train, 200 test); read-only by convention: copy to modify."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_data"))


def shrunk_args(data_dir: Path, log_dir: Path, max_epochs: int = 2) -> list[str]:
    """Flags that shrink a run: CPU, a tiny dataset, 100 validation images, batch 32."""
    return [
        "--data-dir", str(data_dir),
        "--val-size", "100",
        "--batch-size", "32",
        "--accelerator", "cpu",
        "--devices", "1",
        "--max-epochs", str(max_epochs),
        "--no-progress-bar",
        "--log-every-n-steps", "5",
        "--log-dir", str(log_dir),
    ]  # fmt: skip


@pytest.fixture
def run_args(tiny_data: Path, tmp_path: Path) -> list[str]:
    """:func:`shrunk_args` on the tiny dataset, logs in tmp_path."""
    return shrunk_args(tiny_data, tmp_path / "logs")


@pytest.fixture
def real_data_dir() -> Path:
    """The real MNIST root from ``$LIT_MNIST_DATA_DIR``; skips the test when it is not set."""
    if not REAL_DATA or not (Path(REAL_DATA) / "MNIST" / "raw").is_dir():
        pytest.skip(f"set {DATA_DIR_ENV} to a folder holding MNIST/raw to run the real-data tests")
    return Path(REAL_DATA).resolve()  # absolute: some tests run train.py in another working folder
