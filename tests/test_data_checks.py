"""Data checked before training: labels out of range, image and label counts that differ and an
empty test set stop ``scripts/train.py`` at setup with one line naming the file and the fix, exit status 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_digits, shrunk_args, write_idx, write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]


def _train(data: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = [*shrunk_args(data, tmp_path / "logs", max_epochs=1), "--no-download"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (
            "label 10",
            "train-labels-idx1-ubyte",
            r"holds label 10 \(image 3, 1 such labels\) outside \[0, 10\)",
        ),
        (
            "label 255",
            "t10k-labels-idx1-ubyte",
            r"holds label 255 \(image 3, 1 such labels\) outside \[0, 10\)",
        ),
        (
            "one label less",
            "train-images-idx3-ubyte",
            r"holds 600 images and \S+train-labels-idx1-ubyte 599 labels",
        ),
        (
            "empty test set",
            "t10k-images-idx3-ubyte",
            r"the test set is empty: \S+t10k-images-idx3-ubyte holds no",
        ),
    ],
)
def test_bad_data_stops_the_run_at_setup_in_one_line(
    damage: str, file: str, message: str, tmp_path: Path
) -> None:
    data = write_tiny_mnist(tmp_path / "data")
    raw = data / "MNIST" / "raw"
    if damage.startswith("label"):
        name = "train" if "10" in damage and "255" not in damage else "t10k"
        _, labels = make_digits(600 if name == "train" else 200, 0 if name == "train" else 1)
        labels[3] = int(damage.split()[1])
        write_idx(raw / f"{name}-labels-idx1-ubyte", labels)
    elif damage == "one label less":
        _, labels = make_digits(600, 0)
        write_idx(raw / "train-labels-idx1-ubyte", labels[:-1])
    else:
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    result = _train(data, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr[-2000:]
    assert str(raw / file) in lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not list((tmp_path / "logs").glob("version_*/checkpoints/*.ckpt"))  # stopped before training
