"""The README's data examples (an image folder, numpy arrays), run as they stand: each code block is found by the
``<!-- example: NAME -->`` marker on the line before it and executed verbatim on small data."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_folder import CLASSES, write_folder

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def example(name: str, language: str) -> str:
    """The code of the block right after ``<!-- example: name -->``; fails when there is not exactly one."""
    pattern = rf"^<!-- example: {re.escape(name)} -->\n```{language}\n(.*?)^```$"
    found = re.findall(pattern, README.read_text(), re.S | re.M)
    assert len(found) == 1, f"README must hold one ```{language} block after <!-- example: {name} -->"
    return str(found[0])


def test_examples_are_short() -> None:
    for name, language in (("image-folder", "bash"), ("numpy-arrays", "python")):
        assert len(example(name, language).splitlines()) <= 30, name


def test_image_folder_example_runs(tmp_path: Path) -> None:
    code = example("image-folder", "bash")
    pictures = write_folder(tmp_path / "pictures", per_class=12)
    # the block's own sample paths: pictures/cat/001.png
    (pictures / "circle").rename(pictures / "cat")
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # the block runs from a checkout's root
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "PL_TRAINER_ACCELERATOR": "cpu"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, whatever this machine has
    script = tmp_path / "example.sh"
    script.write_text("set -euo pipefail\n" + code)
    result = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "version_0"
    results = json.loads((run / "results.json").read_text())
    assert results["test_acc"] >= 0.8
    assert "Test accuracy:" in result.stdout and "cat" in result.stdout  # evaluate's report, by class name
    assert re.search(r"pictures/cat/001\.png,cat,0,", result.stdout)  # predict: cat, class 0
    meta = json.loads((run / "checkpoints" / "last.pt2.json").read_text())
    assert meta["class_names"] == sorted(["cat", *CLASSES[1:]]) and meta["input_shape"] == [3, 32, 32]


def test_numpy_arrays_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn")
    code = example("numpy-arrays", "python")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # Lightning's env defaults for Trainer arguments
    monkeypatch.setenv("PL_TRAINER_ENABLE_PROGRESS_BAR", "0")
    monkeypatch.setenv("PL_TRAINER_LOG_EVERY_N_STEPS", "10")  # 43 batches an epoch: no hint about logging
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer, datamodule = namespace["trainer"], namespace["datamodule"]
    assert trainer.state.finished  # type: ignore[attr-defined]
    assert [len(datamodule.split(s)[1]) for s in ("train", "val", "test")] == [1350, 150, 297]  # type: ignore[attr-defined]
    assert len(datamodule.mean) == 1 and 0 < datamodule.mean[0] < 1  # type: ignore[attr-defined]
    assert float(trainer.callback_metrics["test/acc"]) >= 0.85  # type: ignore[attr-defined]
