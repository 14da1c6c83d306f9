"""A run knows its classes: a checkpoint records the class names and a fingerprint of the files; a resume on
other classes is refused in one line, on other files of the same classes it goes on and says so; evaluate on
other data says what differs; every report names a class beside its index, escaped; and a folder dataset
reads every file kind predict reads, or names what it skipped and why."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_mnist.checkpoints import check_resumable, load_checkpoint
from lit_mnist.cli import evaluate, predict
from lit_mnist.config import RunConfig
from lit_mnist.datachange import class_change, data_change
from lit_mnist.errors import CheckpointError
from lit_mnist.figures import class_labels, confusion_matrix_figure, grid_figure
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.module import MNISTClassifier
from lit_mnist.run import train
from lit_mnist.runtime import printable
from tests.conftest import shrunk_config, write_tiny_mnist

ROOT = Path(__file__).resolve().parents[1]
RED = "\x1b[31mred"  # a class folder whose name would colour a terminal red
CLASSES = ("7", "9", RED)  # sorted: RED (0), "7" (1), "9" (2)


def write_images(folder: Path, count: int, seed: int, start: int = 0) -> None:
    """``count`` small grayscale PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def folder_config(data: Path, logs: Path, **changes: object) -> RunConfig:
    config = RunConfig(
        dataset="folder", data_dir=str(data), image_size=8, batch_size=4, val_size=3, test_size=3, max_epochs=1,
        hidden_sizes=(16,), accelerator="cpu", devices=1, progress_bar=False, log_every_n_steps=1,
        log_dir=str(logs), logger=("csv",),
    )  # fmt: skip
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder dataset of three classes (one named with a terminal escape), trained for one epoch:
    ``data/`` and ``logs/version_0``. Read-only: a test copies it (:func:`copy_of`) to change it."""
    base = tmp_path_factory.mktemp("classes")
    for index, name in enumerate(CLASSES):
        write_images(base / "data" / name, 6, seed=index)
    train(folder_config(base / "data", base / "logs"))
    return base


def copy_of(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the trained run: its data folder and its ``last.ckpt``."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run" / "data", tmp_path / "run" / "logs" / "version_0" / "checkpoints" / "last.ckpt"


# --------------------------------------------------------------------------- what changed, in words
def test_class_changes_are_named_and_escaped() -> None:
    assert class_change(["7", "9"], ["7", "9"]) is None
    assert class_change(["7", "9"], ["00", "7"], folders=True) == 'class folder "9" is gone and "00" is new'
    assert class_change(["a", "b", "c"], ["a"]) == 'classes "b", "c" are gone'
    assert class_change(["a"], ["a", "b"], folders=True) == 'class folder "b" is new'
    assert (
        class_change(["a", "b"], ["b", "a"])
        == 'the same classes in another order: "b", "a" (it was "a", "b")'
    )
    assert (
        class_change([RED], ["red"], folders=True) == r'class folder "\x1b[31mred" is gone and "red" is new'
    )
    assert printable("cat") == "cat" and printable(RED) == r"\x1b[31mred" and printable("a\nb") == r"a\nb"


def test_file_changes_are_counted() -> None:
    def part(files: int, digest: str, **per_class: int) -> dict[str, object]:
        return {"digest": digest, "files": files, "bytes": files * 100, "per_class": per_class}

    before = {"digest": "x", "parts": {"training images": part(48, "a", cat=16, dog=32)}}
    added = {"digest": "y", "parts": {"training images": part(49, "b", cat=17, dog=32)}}
    renamed = {"digest": "z", "parts": {"training images": part(48, "c", cat=16, dog=32)}}
    assert data_change(before, before) is None and data_change(None, added) is None
    assert data_change(before, added) == 'training images: 49 files, 48 before ("cat" 17, 16 before)'
    assert data_change(before, renamed) == "training images: the same 48 files, other names or sizes"


# --------------------------------------------------------------------------- resume
def test_the_checkpoint_records_classes_and_a_fingerprint_of_the_files(trained: Path) -> None:
    record = torch.load(next((trained / "logs").rglob("last.ckpt")), weights_only=True)["lit_mnist_data"]
    assert record["classes"] == sorted(CLASSES)
    part = record["fingerprint"]["parts"]["training images"]
    assert part["files"] == 18 and part["per_class"] == dict.fromkeys(sorted(CLASSES), 6)
    lines = sorted(
        f"{path.relative_to(trained / 'data').as_posix()}\t{path.stat().st_size}\n"
        for path in (trained / "data").rglob("*.png")
    )
    assert part["digest"] == hashlib.sha256("".join(lines).encode()).hexdigest()  # paths and sizes, no reads


def test_resume_after_a_class_folder_was_renamed_is_one_line_exit_2(trained: Path, tmp_path: Path) -> None:
    data, last = copy_of(trained, tmp_path)
    (data / "9").rename(data / "00")  # same number of classes: every label after it would shift
    before = sorted(p.name for p in last.parent.iterdir())
    args = [
        "--dataset", "folder", "--data-dir", str(data), "--image-size", "8", "--batch-size", "4", "--val-size", "3",
        "--test-size", "3", "--hidden-sizes", "16", "--max-epochs", "2", "--accelerator", "cpu", "--devices", "1",
        "--no-progress-bar", "--logger", "csv", "--log-dir", str(last.parents[2]), "--ckpt-path", str(last),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        f"train.py: error: --ckpt-path {last} was trained on other classes than --data-dir {data} holds: "
        'class folder "9" is gone and "00" is new; resumed, images would train under another class\'s label '
        "(a class is its place among the sorted class folder names): name the folders as they were, or start "
        "a new run without --ckpt-path"
    )
    assert "\x1b" not in done.stderr + done.stdout
    assert sorted(p.name for p in last.parent.iterdir()) == before  # nothing written


def test_a_renamed_escape_named_class_is_refused_escaped(trained: Path, tmp_path: Path) -> None:
    data, last = copy_of(trained, tmp_path)
    (data / RED).rename(data / "red")
    with pytest.raises(
        CheckpointError, match=re.escape(r'class folder "\x1b[31mred" is gone and "red" is new')
    ):
        train(folder_config(data, last.parents[2], ckpt_path=str(last), max_epochs=2))


def test_a_changed_number_of_classes_names_no_flag_that_does_not_exist(trained: Path, tmp_path: Path) -> None:
    data, last = copy_of(trained, tmp_path)
    write_images(data / "8", 6, seed=9)
    with pytest.raises(CheckpointError, match='class folder "8" is new; '):
        train(folder_config(data, last.parents[2], ckpt_path=str(last), max_epochs=2))
    saved = load_checkpoint(last).model.hparams  # without the data: the model's hyperparameters say it
    model = MNISTClassifier(**{**saved, "num_classes": 4})
    with pytest.raises(CheckpointError) as refused:
        check_resumable(last, model)
    assert "holds a model of 3 classes and this run's data has 4" in str(refused.value)
    assert "--num-classes" not in str(refused.value)


def test_same_classes_with_an_added_image_resume_with_a_warning(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, last = copy_of(trained, tmp_path)
    write_images(data / "7", 1, seed=5, start=6)
    capsys.readouterr()
    result = train(folder_config(data, last.parents[2], ckpt_path=str(last), max_epochs=2))
    assert result.epochs == 2
    (warning,) = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: --data-dir")
    ]
    assert warning == (
        f"warning: --data-dir {data} holds other files than {last} was trained on (training images: 19 files, "
        '18 before ("7" 7, 6 before)); training resumes on them, with the validation split drawn from them anew'
    )
    record = torch.load(last, weights_only=True)["lit_mnist_data"]  # the resumed run's: the files it has now
    assert record["fingerprint"]["parts"]["training images"]["files"] == 19


# --------------------------------------------------------------------------- evaluate and predict
def test_evaluate_on_renamed_classes_is_refused_then_runs_when_asked(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, last = copy_of(trained, tmp_path)
    (data / "9").rename(data / "00")
    args = ["--ckpt-path", str(last), "--data-dir", str(data), "--accelerator", "cpu"]
    with pytest.raises(SystemExit) as refused:
        evaluate.main(args)
    assert refused.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f'evaluate.py: error: --data-dir {data} holds other classes than {last} was trained on: class folder "9" '
        'is gone and "00" is new; '
    ) and line.endswith("or pass --allow-other-data to evaluate anyway")
    assert evaluate.main([*args, "--allow-other-data", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert (
        f'Data differs:  from what {last} was trained on: class folder "9" is gone and "00" is new (the model\'s '
        "class i is compared with the data's class i); training images: the same 18 files, other names or sizes"
    ) in out.splitlines()
    assert "\x1b" not in out and re.search(r"^\s+0\s+\\x1b\[31mred\s", out, re.M)  # the table, escaped
    assert json.loads((tmp_path / "e.json").read_text())["class_names"] == [RED, "00", "7"]


def test_evaluate_on_other_files_of_the_same_classes_notes_it_and_runs(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, last = copy_of(trained, tmp_path)
    (data / "9" / "000.png").unlink()
    capsys.readouterr()
    assert evaluate.main(["--ckpt-path", str(last), "--data-dir", str(data), "--accelerator", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (
        f'Data differs:  from what {last} was trained on: training images: 17 files, 18 before ("9" 5, 6 before)'
    ) in out.splitlines()
    assert (
        evaluate.main(["--ckpt-path", str(last), "--data-dir", str(trained / "data"), "--accelerator", "cpu"])
        == 0
    )
    assert "Data differs" not in capsys.readouterr().out  # the data it was trained on


def test_predict_names_each_class_beside_its_index_escaped_in_the_csv(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = next((trained / "logs").rglob("last.ckpt"))
    files = sorted(str(p) for p in (trained / "data").rglob("00[01].png"))
    names = sorted(CLASSES)
    capsys.readouterr()
    assert predict.main(["--ckpt-path", str(last), "--accelerator", "cpu", *files]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["file"] for row in rows] == [printable(f) for f in files] and "\x1b" not in out
    assert all(row["class_name"] == printable(names[int(row["label"])]) for row in rows)
    output = tmp_path / "p.json"
    assert (
        predict.main(["--ckpt-path", str(last), "--accelerator", "cpu", "--output", str(output), *files]) == 0
    )
    records = json.loads(output.read_text())
    assert [(r["class_name"], r["label"]) for r in records] == [
        (names[int(r["label"])], int(r["label"])) for r in rows
    ]


def test_figures_name_the_classes_beside_their_indices() -> None:
    assert class_labels(["cat", RED], 2) == ["0 cat", r"1 \x1b[31mred"]
    assert (
        class_labels(["0 - zero", "1 - one"], 2) is None and class_labels(["0", "1"], 2) is None
    )  # the index says it
    matrix = np.array([[3, 1], [0, 4]])
    assert not np.array_equal(
        confusion_matrix_figure(matrix, "t", ["cat", "dog"]), confusion_matrix_figure(matrix, "t")
    )
    images = np.zeros((2, 8, 8), dtype=np.float32)
    named, plain = (
        grid_figure(images, [0, 1], [0, 0], "t", class_names=["cat", "dog"]),
        grid_figure(images, [0, 1], [0, 0], "t"),
    )
    assert named.shape == plain.shape and not np.array_equal(named, plain)


# --------------------------------------------------------------------------- the MNIST family
def test_mnist_fingerprint_is_the_raw_files_md5s_and_other_files_are_a_note(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fingerprint = MNISTDataModule(str(tiny_data)).fingerprint()
    assert fingerprint is not None
    raw = tiny_data / "MNIST" / "raw"
    assert {name: part["digest"] for name, part in fingerprint["parts"].items()} == {
        path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in raw.iterdir()
    }
    assert fingerprint["parts"]["train-images-idx3-ubyte"]["items"] == 600
    result = train(
        dataclasses.replace(shrunk_config(tiny_data, tmp_path / "logs", max_epochs=1), logger=("csv",))
    )
    assert result.best_checkpoint is not None
    other = write_tiny_mnist(tmp_path / "other", n_train=500)
    capsys.readouterr()
    assert (
        evaluate.main(
            ["--ckpt-path", result.best_checkpoint, "--data-dir", str(other), "--accelerator", "cpu"]
        )
        == 0
    )
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Data differs:")]
    assert line.endswith(
        "was trained on: train-images-idx3-ubyte: 500 items, 600 before; train-labels-idx1-ubyte: 500 items, 600 before"
    )
    datamodule = MNISTDataModule(str(other), val_size=100)
    model = load_checkpoint(result.best_checkpoint).model
    note = check_resumable(str(result.last_checkpoint), MNISTClassifier(**model.hparams), datamodule)
    assert note == (
        f"--data-dir {other} holds other files than {result.last_checkpoint} was trained on "
        "(train-images-idx3-ubyte: 500 items, 600 before; train-labels-idx1-ubyte: 500 items, 600 before); "
        "training resumes on them, with the validation split drawn from them anew"
    )


# --------------------------------------------------------------------------- say it or do it
def test_a_folder_reads_every_kind_predict_reads_and_names_what_it_skips(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for name in ("cat", "dog"):
        write_images(root / name, 4, seed=len(name))
    pixels = np.full((10, 10), 128, dtype=np.uint8)
    for suffix in (".gif", ".jpeg", ".webp", ".tif", ".bmp"):  # formats predict opens, all read
        Image.fromarray(pixels).save(root / "cat" / f"extra{suffix}")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "readme.txt").write_text("not an image")
    (root / "dog" / "LICENSE").write_text("no extension")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")
    (root / "labels.csv").write_text("outside the class folders")
    dm = ImageFolderDataModule(str(root), val_size=2, test_size=2, image_size=8)
    with pytest.warns(UserWarning) as warned:
        files = dm.files()
    assert sum(len(f) for f in files.values()) == 13
    assert sorted(str(w.message) for w in warned) == sorted([
        f"skipped 2 files in {root}: .txt is not an image format predict reads (cat/notes.txt, dog/readme.txt)",
        f"skipped 1 file in {root}: a file without an extension is not an image format predict reads (dog/LICENSE)",
        f"skipped 1 file in {root}: hidden (its name starts with a dot) (dog/.DS_Store)",
        f"skipped 1 file in {root}: outside the class folders (labels.csv)",
    ])  # fmt: skip
