"""``--dataset folder``: a user's own images (one sub-folder per class) trained from scripts/train.py, and
its checkpoints evaluated, used for predict and exported with the folder's class names."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_mnist.cli import evaluate, export, predict
from lit_mnist.config import RunConfig
from lit_mnist.errors import DataError
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.run import train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("circle", "cross", "stripes")


def _picture(kind: str, rng: np.random.Generator) -> Image.Image:
    """An RGB picture of 20x24 whose class is plain to see, in a colour of its own."""
    image = rng.integers(0, 40, (20, 24, 3), dtype=np.uint8)
    ys, xs = np.mgrid[:20, :24]
    if kind == "circle":
        image[(ys - 10) ** 2 + (xs - 12) ** 2 < 36] = (250, 40, 40)
    elif kind == "cross":
        image[8:12, :] = image[:, 10:14] = (40, 250, 40)
    else:
        image[::4] = (40, 40, 250)
    return Image.fromarray(image)


def write_folder(root: Path, per_class: int = 16, test_folder: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test") if test_folder else ("",):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(per_class if split != "test" else 4):
                _picture(kind, rng).save(folder / f"{i:03d}.png")
    return root


def test_layout_classes_and_held_out_test_set(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pics")
    (root / "circle" / "notes.txt").write_text("not an image")  # other files are not images
    dm = ImageFolderDataModule(str(root), val_size=6, test_size=0.25, image_size=8, color="rgb")
    assert dm.class_names == list(CLASSES) and dm.num_classes == 3 and dm.image_shape == (3, 8, 8)
    skipped = r"skipped 1 file in .*: \.txt is not an image format predict reads \(circle/notes\.txt\)"
    with pytest.warns(UserWarning, match=skipped):
        dm.setup("fit")
    assert [len(dm.split(s)[1]) for s in ("train", "val", "test")] == [30, 6, 12]
    again = ImageFolderDataModule(str(root), val_size=6, test_size=0.25, image_size=8, color="rgb", seed=5)
    assert again.files() == dm.files()  # the held-out test set is seeded by split_seed only (said once)
    assert not set(dm.files()[True]) & set(dm.files()[False])
    with_test = write_folder(tmp_path / "split", test_folder=True)
    dm = ImageFolderDataModule(str(with_test), val_size=0.25)
    dm.setup("fit")
    assert [len(dm.split(s)[1]) for s in ("train", "val", "test")] == [36, 12, 12]
    assert dm.image_shape == (1, 28, 28) and dm.class_names == list(CLASSES)


def test_a_bad_image_is_named_and_skipped_only_when_asked(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pics")
    bad = root / "cross" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(bad))} \(.*\) cannot be read as images; .*--skip-bad-images"
    ):
        ImageFolderDataModule(str(root), val_size=4, test_size=4).setup("fit")
    dm = ImageFolderDataModule(str(root), val_size=4, test_size=4, skip_bad_images=True)
    with pytest.warns(
        UserWarning, match=rf"skipped 1 image files that cannot be read: {re.escape(str(bad))}"
    ):
        dm.setup("fit")
    assert sum(len(dm.split(s)[1]) for s in ("train", "val", "test")) == 48


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "holds no class folders"),
        (lambda root: (root / "empty").mkdir(parents=True), r"empty holds no images"),
    ],
)
def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path: Path, make: object, message: str) -> None:
    root = tmp_path / "pics"
    make(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        ImageFolderDataModule(str(root)).setup("fit")


def test_folder_trains_from_train_py_then_evaluate_predict_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_folder(tmp_path / "pics")
    bad = root / "stripes" / "truncated.png"
    bad.write_bytes((root / "stripes" / "000.png").read_bytes()[:50])
    args = [
        "--dataset", "folder", "--data-dir", str(root), "--image-size", "12", "--color", "rgb",
        "--batch-size", "8", "--max-epochs", "6", "--lr", "0.05", "--accelerator", "cpu", "--devices", "1",
        "--no-progress-bar", "--log-every-n-steps", "1", "--log-dir", str(tmp_path / "logs"), "--logger", "csv",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    run = [sys.executable, str(ROOT / "scripts" / "train.py")]
    refused = subprocess.run(
        [*run, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"train.py: error: {bad} (") and line.endswith(
        "or pass --skip-bad-images to train without them"
    )
    done = subprocess.run(
        [*run, *args, "--skip-bad-images"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "logs" / "version_0" / "results.json").read_text())
    assert results["test_acc"] >= 0.9  # three plain-to-see classes
    ckpt = results["best_checkpoint"]
    record = torch.load(ckpt, weights_only=True)["lit_mnist_data"]
    assert record["dataset"] == "folder" and record["classes"] == list(CLASSES)
    assert record["image_shape"] == [3, 12, 12] and len(record["mean"]) == 3

    capsys.readouterr()
    assert (
        evaluate.main(["--ckpt-path", ckpt, "--accelerator", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    )
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["class_names"] == list(CLASSES) and evaluated["test_acc"] == pytest.approx(
        results["test_acc"]
    )

    probe = tmp_path / "probe.png"
    _picture("cross", np.random.default_rng(7)).resize((48, 40)).save(
        probe
    )  # another size: resized as in training
    out = tmp_path / "p.json"
    assert predict.main(["--ckpt-path", ckpt, "--accelerator", "cpu", "--output", str(out), str(probe)]) == 0
    (prediction,) = json.loads(out.read_text())
    assert prediction["class_name"] == "cross"

    exported = tmp_path / "model.pt2"
    assert export.main(["--ckpt-path", ckpt, "--format", "torch-export", "--output", str(exported)]) == 0
    meta = json.loads(exported.with_name("model.pt2.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["mean"] == record["mean"]
    assert meta["input_shape"] == [3, 12, 12]


def test_predict_csv_names_the_class_beside_its_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Class folders named 1, 2, 3 have the indices 0, 1, 2: the CSV says both, as the JSON does."""
    root = write_folder(tmp_path / "pics")
    for number, kind in enumerate(CLASSES, start=1):
        (root / kind).rename(root / str(number))
    config = RunConfig(
        dataset="folder", data_dir=str(root), image_size=12, color="rgb", batch_size=8, max_epochs=6, lr=0.05,
        accelerator="cpu", devices=1, progress_bar=False, log_every_n_steps=1, log_dir=str(tmp_path / "logs"),
        logger=("csv",),
    )  # fmt: skip
    ckpt = str(train(config).best_checkpoint)
    probe = tmp_path / "cross.png"
    _picture("cross", np.random.default_rng(7)).save(probe)
    files = [str(probe), str(root / "1" / "000.png")]
    capsys.readouterr()
    assert predict.main(["--ckpt-path", ckpt, "--accelerator", "cpu", *files]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["file"], row["class_name"], row["label"]) for row in rows] == [
        (files[0], "2", "1"),  # a cross, the second class folder
        (files[1], "1", "0"),
    ]
    out = tmp_path / "p.json"
    assert predict.main(["--ckpt-path", ckpt, "--accelerator", "cpu", "--output", str(out), *files]) == 0
    records = json.loads(out.read_text())
    assert [(r["file"], r["class_name"], str(r["label"])) for r in records] == [
        (row["file"], row["class_name"], row["label"]) for row in rows
    ]


def test_folder_flags_belong_to_the_folder_dataset(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lit_mnist.cli.train import train_main

    with pytest.raises(SystemExit) as info:
        train_main(["--data-dir", str(tiny_data), "--image-size", "32", "--log-dir", str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "train.py: error: --image-size is a flag of --dataset folder; leave it out with --dataset mnist\n"
    )
