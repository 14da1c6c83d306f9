"""Heads beyond one label: the task's members of ``MNISTClassifier`` drive every step.

The README's regression and multi-label examples run in ``tests/test_readme_examples.py``; here the same
kind of heads meet the rest of the framework: step groups, the monitoring callbacks, a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, Metric

from lit_mnist import MNISTClassifier, MNISTDataModule, PredictionImages, StepGroups
from lit_mnist.errors import ConfigError


class DigitValueData(MNISTDataModule):
    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, digits = super().load(train)
        return images, digits.float().unsqueeze(1)


class Regressor(MNISTClassifier):
    num_outputs = 1

    def build_loss(self) -> nn.Module:
        return nn.MSELoss()

    def build_metrics(self, stage: str) -> dict[str, Metric]:
        return {"mae": MeanAbsoluteError()}

    def output_activation(self, outputs: Tensor) -> Tensor:
        return outputs

    def predicted_classes(self, outputs: Tensor) -> None:
        return None


def _trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    settings: dict[str, object] = dict(
        accelerator="cpu", devices=1, max_epochs=2, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
    )  # fmt: skip
    settings.update(kwargs)
    return L.Trainer(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps_per_batch", [1, 5])
def test_a_regression_head_trains_validates_tests_and_predicts(
    tiny_data: Path, tmp_path: Path, steps_per_batch: int
) -> None:
    torch.manual_seed(0)
    dm = DigitValueData(
        str(tiny_data), val_size=100, batch_size=50, download=False, steps_per_batch=steps_per_batch
    )
    model = Regressor(optimizer="adam", lr=1e-3, steps_per_batch=steps_per_batch)
    callbacks = [StepGroups(steps_per_batch)] if steps_per_batch > 1 else []
    trainer = _trainer(tmp_path, callbacks=callbacks)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 * 10  # 500 images at batch 50, 2 epochs: every step taken
    assert {"train/mae", "val/mae", "val/loss"} <= set(trainer.callback_metrics)
    [tested] = trainer.test(model, datamodule=dm)  # the inherited test_step, on a head without class indices
    assert set(tested) == {"test/loss", "test/mae"}
    values = torch.cat(trainer.predict(model, datamodule=dm))  # type: ignore[arg-type]
    targets = dm.split("test")[1]
    assert values.shape == (200, 1)
    assert float((values - targets).abs().mean()) == pytest.approx(tested["test/mae"], rel=1e-4)


def test_the_monitoring_callbacks_skip_a_head_without_classes(tiny_data: Path, tmp_path: Path) -> None:
    from lit_mnist.loggers import MonitoringTensorBoardLogger

    dm = DigitValueData(str(tiny_data), val_size=100, batch_size=50, download=False)
    logger = MonitoringTensorBoardLogger(str(tmp_path), name="", default_hp_metric=False)
    trainer = _trainer(
        tmp_path, max_epochs=1, logger=logger, callbacks=[PredictionImages()], log_every_n_steps=2
    )
    trainer.fit(Regressor(), datamodule=dm)
    trainer.test(Regressor(), datamodule=dm)
    assert trainer.state.finished


def test_a_regression_checkpoint_loads_with_weights_only(tiny_data: Path, tmp_path: Path) -> None:
    dm = DigitValueData(str(tiny_data), val_size=100, batch_size=50, download=False)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=True)
    model = Regressor(optimizer="adam", lr=1e-3)
    trainer.fit(model, datamodule=dm)
    loaded = Regressor.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, weights_only=True)  # type: ignore[union-attr]
    x = dm.split("val")[0][:8]
    assert torch.equal(loaded.eval()(x), model.eval()(x)) and loaded(x).shape == (8, 1)


def test_a_classifier_with_one_class_says_what_to_override() -> None:
    with pytest.raises(
        ConfigError, match=r"num_classes must be >= 2 for a classifier .* override num_outputs"
    ):
        MNISTClassifier(num_classes=1)
