"""Monitoring: what a tiny run writes for TensorBoard (scalars, images, hparams, graph, histograms) and PNGs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_mnist import MNISTClassifier, MNISTDataModule
from lit_mnist.build import build_trainer
from lit_mnist.callbacks import (
    EpochSpeed,
    ParameterHistograms,
    PredictionImages,
    TrainingCurves,
    _confusion_matrix_metric,
)
from lit_mnist.cli.flags import parse_run
from lit_mnist.cli.train import train_main
from lit_mnist.figures import CONFUSION_MATRIX_IN, CURVES_IN, DPI
from lit_mnist.groups import StepGroupPlan

SCALARS = (
    "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc",
    "lr-SGD", "perf/epoch_time_s", "perf/val_time_s", "perf/train_samples_per_s",
)  # fmt: skip
ACCURACIES = ("train/acc", "val/acc", "val/acc_best", "test/acc")
PARAMS = [name for name, _ in MNISTClassifier().named_parameters()]
CM_SIZE = (round(CONFUSION_MATRIX_IN[0] * DPI), round(CONFUSION_MATRIX_IN[1] * DPI))


class Events:
    """Everything in a run folder's event files (fit, test and the final hparams each write one)."""

    def __init__(self, run: Path) -> None:
        guidance = dict.fromkeys(
            (ea.SCALARS, ea.IMAGES, ea.HISTOGRAMS, ea.COMPRESSED_HISTOGRAMS, ea.TENSORS, ea.GRAPH, ea.AUDIO),
            0,
        )
        self.files = []
        for path in sorted(run.glob("events.out.tfevents.*")):
            acc = ea.EventAccumulator(str(path), size_guidance=guidance)
            acc.Reload()
            self.files.append(acc)

    def tags(self, kind: str) -> set[str]:
        return {tag for acc in self.files for tag in acc.Tags()[kind]}

    def scalars(self, tag: str) -> list[float]:
        return [e.value for acc in self.files if tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]

    def images(self, tag: str) -> list[ea.ImageEvent]:
        return [e for acc in self.files if tag in acc.Tags()["images"] for e in acc.Images(tag)]

    def hparams(self) -> dict[str, plugin_data_pb2.HParamsPluginData]:
        found = {}
        for acc in self.files:
            try:
                content = acc.PluginTagToContent("hparams")
            except KeyError:  # this file holds no hparams
                continue
            for tag, data in content.items():
                found[tag] = plugin_data_pb2.HParamsPluginData.FromString(data)
        return found

    def has_graph(self) -> bool:
        return any(acc.Tags()["graph"] and len(acc.Graph().node) > 0 for acc in self.files)


def _run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "logs").glob("version_*")
    return run


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> tuple[Path, str]:
    """One 2-epoch run through the CLI with conftest's ``run_args`` flags (shared by the tests that only
    read it), and its printed summary."""
    tmp_path = tmp_path_factory.mktemp("monitoring")
    out = io.StringIO()
    args = [
        "--data-dir", str(tiny_data), "--val-size", "100", "--batch-size", "32", "--accelerator", "cpu",
        "--devices", "1", "--no-progress-bar", "--log-every-n-steps", "5", "--log-dir", str(tmp_path / "logs"),
        "--max-epochs", "2",
    ]  # fmt: skip
    with contextlib.redirect_stdout(out):
        assert train_main(args) == 0
    return _run_dir(tmp_path), out.getvalue()


def test_scalars_of_a_run(tiny_run: tuple[Path, str]) -> None:
    events = Events(tiny_run[0])
    assert set(SCALARS) <= events.tags("scalars")
    for tag in ACCURACIES:
        assert all(0.0 <= v <= 1.0 for v in events.scalars(tag)), tag
    # once per epoch, the sanity check's validation not counted (val/acc_best comes again with the hparams)
    for tag in ("train/acc", "val/loss", "val/acc", "perf/epoch_time_s", "perf/train_samples_per_s"):
        assert len(events.scalars(tag)) == 2, tag
    assert events.scalars("lr-SGD") and all(v == pytest.approx(0.01) for v in events.scalars("lr-SGD"))
    assert all(v > 0 for v in events.scalars("perf/train_samples_per_s"))
    epoch_times, val_times = events.scalars("perf/epoch_time_s"), events.scalars("perf/val_time_s")
    assert all(0 <= v < e for v, e in zip(val_times, epoch_times, strict=True))


def test_images_of_a_run(tiny_run: tuple[Path, str]) -> None:
    events = Events(tiny_run[0])
    grid = (8 * 32 * 3, 4 * 40 * 3 + 36)  # 32 images of 28x28 in 4 rows of 8, 3x, and the title
    expected = {
        "val/predictions": (grid, 2),
        "val/misclassified": (grid, 2),
        "val/confusion_matrix": (CM_SIZE, 2),
        "test/confusion_matrix": (CM_SIZE, 1),
    }
    assert events.tags("images") == set(expected)
    for tag, (size, count) in expected.items():
        images = events.images(tag)
        assert len(images) == count, tag
        for image in images:
            assert (image.width, image.height) == size, tag
            assert _png_size(image.encoded_image_string) == size, tag


def test_hparams_graph_and_no_histograms_by_default(tiny_run: tuple[Path, str]) -> None:
    events = Events(tiny_run[0])
    plugin = events.hparams()
    experiment = plugin["_hparams_/experiment"].experiment
    # under their own tags: the curves val/acc_best and test/acc keep their points (see test_tensorboard_server)
    assert {m.name.tag for m in experiment.metric_infos} == {"hp/val_acc_best", "hp/test_acc"}
    # the module's and the datamodule's hyperparameters
    assert {"lr", "optimizer", "hidden_sizes", "batch_size", "val_size"} <= {
        h.name for h in experiment.hparam_infos
    }
    assert plugin["_hparams_/session_start_info"].session_start_info.hparams["lr"].number_value == 0.01
    assert events.has_graph()
    assert not events.tags("histograms")


def test_png_figures_in_the_run_folder(tiny_run: tuple[Path, str]) -> None:
    run, printed = tiny_run
    results = json.loads((run / "results.json").read_text())
    curves, confusion = run / "curves.png", run / "confusion_matrix.png"
    assert results["figures"] == {"curves": str(curves), "confusion_matrix": str(confusion)}
    for path, size in (
        (curves, (round(CURVES_IN[0] * DPI), round(CURVES_IN[1] * DPI))),
        (confusion, CM_SIZE),
    ):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10  # something is drawn
        assert str(path) in printed
    # the curves' history travels in the checkpoint: both epochs, train and val
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (history,) = (v["history"] for k, v in last["callbacks"].items() if "TrainingCurves" in k)
    assert sorted(history) == [0, 1]
    assert {"train/loss", "val/loss", "val/acc"} <= set(history[1])


def test_histograms_only_with_the_flag(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--max-epochs", "1", "--log-histograms"]) == 0
    events = Events(_run_dir(tmp_path))
    expected = {f"weights/{name}" for name in PARAMS} | {f"gradients/{name}" for name in PARAMS}
    assert events.tags("histograms") == expected


def test_resumed_run_draws_every_epoch(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--max-epochs", "1"]) == 0
    assert train_main([*run_args, "--max-epochs", "2", "--ckpt-path", "last"]) == 0
    run = _run_dir(tmp_path)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (history,) = (v["history"] for k, v in last["callbacks"].items() if "TrainingCurves" in k)
    assert sorted(history) == [0, 1] and all("val/acc" in history[e] for e in (0, 1))
    assert (run / "curves.png").is_file()


def test_fast_dev_run_has_no_monitoring(run_args: list[str]) -> None:
    cfg = parse_run([*run_args, "--fast-dev-run"])
    trainer = build_trainer(cfg, Path(cfg.log_dir) / "version_0", None, StepGroupPlan(1, 1))
    monitoring = (EpochSpeed, PredictionImages, TrainingCurves, ParameterHistograms)
    assert not [cb for cb in trainer.callbacks if isinstance(cb, monitoring)]  # type: ignore[attr-defined]


def test_callbacks_are_no_ops_without_tensorboard(tiny_data: Path, tmp_path: Path) -> None:
    callbacks = [EpochSpeed(), PredictionImages(), TrainingCurves(), ParameterHistograms()]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    datamodule = MNISTDataModule(str(tiny_data), val_size=100, batch_size=32)
    trainer.fit(MNISTClassifier(), datamodule=datamodule)
    trainer.test(MNISTClassifier(), datamodule=datamodule, verbose=False)
    assert list(tmp_path.iterdir()) == []
    assert callbacks[1].figures == {} and callbacks[2].figures == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("host_reads", [True, False], ids=["cpu-path", "accelerator-path"])
def test_misclassified_buffer_keeps_the_first_wrong_in_order(host_reads: bool) -> None:
    callback = PredictionImages(num_misclassified=3)
    x = torch.arange(12.0).reshape(12, 1, 1, 1)
    y = torch.zeros(12, dtype=torch.long)
    callback._keep_wrong(x[:4], torch.tensor([0, 1, 0, 0]), y[:4], host_reads)  # one wrong: image 1
    callback._keep_wrong(x[4:8], torch.tensor([2, 0, 3, 4]), y[4:8], host_reads)  # wrong: images 4, 6, 7
    callback._keep_wrong(x[8:], torch.tensor([5, 5, 5, 5]), y[8:], host_reads)  # too late: the buffer is full
    assert callback._wrong is not None
    images, preds, _, wrong = callback._wrong
    assert images.flatten().tolist() == [1.0, 4.0, 6.0]
    assert preds.tolist() == [1, 2, 3] and wrong.all()


def test_sync_free_confusion_matrix_matches_torchmetrics() -> None:
    generator = torch.Generator().manual_seed(0)
    ours, reference = _confusion_matrix_metric(10), MulticlassConfusionMatrix(num_classes=10)
    for _ in range(3):
        preds = torch.randint(0, 10, (50,), generator=generator)
        target = torch.randint(0, 10, (50,), generator=generator)
        ours.update(preds, target)
        reference.update(preds, target)
    assert torch.equal(ours.compute(), reference.compute())
