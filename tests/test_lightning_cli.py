"""``python -m lit_mnist.lightning_cli``: LightningCLI's fit, validate, test and predict, run as a user runs them.

The subprocess test runs the four subcommands in turn with ``examples/lightning_cli.yaml`` (the README's
documented config) on the tiny dataset; the in-process tests check what the processes cannot show:
the linked arguments, what ``predict`` returns, and the one-line errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2

from lit_mnist import FashionMNISTDataModule, MNISTClassifier, MNISTDataModule
from lit_mnist.lightning_cli import LitMNISTCLI, main, one_line
from tests.test_lightning_contract import _lightning_cli_deprecations

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "lightning_cli.yaml"


def _tiny(data: Path) -> list[str]:
    return [
        "--data.data_dir", str(data),
        "--data.val_size", "100",
        "--data.download", "false",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "2",
    ]  # fmt: skip


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "lit_mnist.lightning_cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _hparams(run: Path) -> tuple[set[str], dict[str, Any]]:
    """The HParams tab of a run: the metric columns, and the hyperparameters of the last session."""
    accumulator = ea.EventAccumulator(str(run))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return {m.name.tag for m in experiment.metric_infos}, dict(session.session_start_info.hparams)


def test_fit_validate_test_predict_with_the_documented_config(tiny_data: Path, tmp_path: Path) -> None:
    fit = _cli(tmp_path, "fit", "--config", str(CONFIG), *_tiny(tiny_data), "--trainer.max_epochs", "2")
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "lightning_logs" / "version_0"
    best = list((run / "checkpoints").glob("epoch01-val_acc*.ckpt"))  # ModelCheckpoint on val/acc, 2 epochs
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "curves.png").is_file()  # TrainingCurves
    tags = ea.EventAccumulator(str(run), size_guidance={ea.IMAGES: 0})
    tags.Reload()
    assert {"val/predictions", "val/misclassified", "val/confusion_matrix"} <= set(tags.Tags()["images"])
    assert {"perf/epoch_time_s", "val/acc", "train/acc"} <= set(tags.Tags()["scalars"])
    metrics, hparams = _hparams(run)
    # the real metrics, and no hp_metric placeholder
    assert {"hp/val_acc", "hp/val_acc_best", "hp/val_loss"} == metrics
    assert hparams["lr"].number_value == 0.01 and hparams["val_size"].number_value == 100

    ckpt = str(best[0])
    for subcommand, printed in (("validate", "val/acc"), ("test", "test/acc"), ("predict", "")):
        done = _cli(tmp_path, subcommand, "--config", str(CONFIG), *_tiny(tiny_data), "--ckpt_path", ckpt)
        assert done.returncode == 0, f"{subcommand}: {done.stderr[-3000:]}"
        assert printed in done.stdout, subcommand
    tested = tmp_path / "lightning_logs" / "version_2"  # fit, validate, test, predict: a version each
    assert _hparams(tested)[0] == {"hp/test_acc", "hp/test_loss"}
    assert (tested / "confusion_matrix.png").is_file()


def test_an_unknown_optimizer_is_one_line_and_exit_status_2(tiny_data: Path, tmp_path: Path) -> None:
    done = _cli(tmp_path, "fit", *_tiny(tiny_data), "--model.optimizer", "foo")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "lightning_cli.py fit: error: --model.optimizer must be one of sgd, adam, adamw, rmsprop; got 'foo'"
    ]
    assert not (tmp_path / "lightning_logs").exists()


def test_help_lists_the_choices(tmp_path: Path) -> None:
    done = _cli(tmp_path, "fit", "--help")
    assert done.returncode == 0
    assert "--model.optimizer {sgd,adam,adamw,rmsprop}" in done.stdout
    assert "--model.scheduler {none,step,cosine,onecycle}" in done.stdout
    assert "--data.loader {memory,torchvision}" in done.stdout
    assert "--model.num_classes" not in done.stdout  # linked from the datamodule


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ('Parser key "model.lr":\n  Expected a <class \'float\'>. Got value: abc', "--model.lr: Expected a <class 'float'>. Got value: abc"),
        ('Linked "model.num_classes" must be given via "data.num_classes".', "--model.num_classes comes from the datamodule's num_classes: choose the data (--data) instead, not --model.num_classes"),
    ],
)  # fmt: skip
def test_one_line(message: str, line: str) -> None:
    assert one_line(message) == line


class _Predictions(L.Callback):
    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self.outputs.append(outputs)


@_lightning_cli_deprecations
def test_the_datamodule_is_linked_into_the_model_and_predict_returns_probabilities(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # LightningCLI warns about args= beside pytest's argv

    class ThreeClasses(MNISTDataModule):  # a datamodule with other class attributes
        num_classes = 3
        image_shape = (1, 28, 28)

        def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
            images, digits = super().load(train)
            return images, digits % 3

    recorder = _Predictions()
    args = [
        "predict",
        "--seed_everything",
        "0",
        *_tiny(tiny_data),
        "--trainer.logger",
        "false",
        "--data.batch_size",
        "64",
    ]
    cli = LitMNISTCLI(
        MNISTClassifier,
        ThreeClasses,
        args=args,
        trainer_defaults={"callbacks": [recorder]},
        save_config_callback=None,
    )
    assert cli.model.hparams["num_classes"] == 3 and list(cli.model.hparams["input_shape"]) == [1, 28, 28]
    probabilities = torch.cat(recorder.outputs)
    assert probabilities.shape == (200, 3)  # the 200 test images
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(200))


@_lightning_cli_deprecations
def test_a_refused_value_is_one_line_naming_its_group(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    for flag, value, line in (
        ("--model.lr", "-1", "--model.lr must be > 0, got -1.0"),
        ("--data.batch_size", "0", "--data.batch_size must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            LitMNISTCLI(
                MNISTClassifier,
                FashionMNISTDataModule,
                args=["fit", "--seed_everything", "0", *_tiny(tiny_data), flag, value],
            )
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f": error: {line}")


def test_trainer_predict_on_the_datamodule(tiny_data: Path) -> None:
    dm = MNISTDataModule(str(tiny_data), val_size=100, download=False, batch_size=64)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(MNISTClassifier(), datamodule=dm)
    assert batches is not None
    probabilities = torch.cat(batches)  # type: ignore[arg-type]
    assert probabilities.shape == (200, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(200))


@_lightning_cli_deprecations
def test_a_bad_checkpoint_is_one_line_naming_the_file(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    monkeypatch.chdir(tmp_path)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {}}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, crafted)  # a global weights_only refuses
    for path, why in (
        (truncated, "not a complete zip archive"),
        (text, "not a complete zip archive"),
        (crafted, "it was refused"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["validate", *_tiny(tiny_data), "--ckpt_path", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f": error: --ckpt_path {path} " in err and why in err, err
        assert "weights_only=False" not in err, err
