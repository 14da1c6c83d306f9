"""The public API as a user's code meets it: the names ``lit_mnist`` exports and the types its checker sees."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L

import lit_mnist


def test_every_exported_name_exists_and_the_callbacks_are_lightning_callbacks() -> None:
    for name in lit_mnist.__all__:
        assert hasattr(lit_mnist, name), name
    callbacks = ("EpochSpeed", "PredictionImages", "TrainingCurves", "ParameterHistograms", "StepGroups")
    for name in (*callbacks, "GracefulInterrupt", "NonFiniteLossGuard", "LastCheckpoint"):
        assert issubclass(getattr(lit_mnist, name), L.Callback), name


def test_the_wheel_ships_py_typed(tmp_path: Path) -> None:
    """``py.typed`` ships with the package (PEP 561), so a user's mypy checks calls into an installed
    lit_mnist instead of reading it as ``Any``."""
    assert (Path(lit_mnist.__file__).parent / "py.typed").is_file()
    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"
    # a copy, so that the build's own folders (build/, *.egg-info) are not written into the checkout
    shutil.copytree(root / "lit_mnist", source / "lit_mnist", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("lit_mnist-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lit_mnist/py.typed" in names, names
    assert "lit_mnist/loggers.py" in names and "lit_mnist/cli/train.py" in names
