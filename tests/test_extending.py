"""The README's "New data" example, verbatim, trained with fast_dev_run on a tiny IDX dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from lit_mnist.data import DATA_DIR_ENV
from lit_mnist.module import MNISTClassifier
from tests.conftest import write_tiny_mnist

README = Path(__file__).resolve().parents[1] / "README.md"

# Exactly the code block under "### New data" in README.md (the first test checks it still is).
EXAMPLE = '''\
import lightning as L
from torch import Tensor, nn
from lit_mnist import MNISTClassifier, MNISTDataModule

class EvenOddDataModule(MNISTDataModule):
    num_classes = 2  # the digit is even (class 0) or odd (class 1)
    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, digits = super().load(train)
        return images, digits % 2

class ConvClassifier(MNISTClassifier):  # the same loss, metrics, optimizers and logging, another network
    def build_network(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 14 * 14, self.hparams.num_classes),
        )

datamodule = EvenOddDataModule(batch_size=128)  # data from $LIT_MNIST_DATA_DIR, else ./data
model = ConvClassifier(num_classes=EvenOddDataModule.num_classes, optimizer="adam", lr=1e-3)
trainer = L.Trainer(max_epochs=2)
trainer.fit(model, datamodule=datamodule)
trainer.test(model, datamodule=datamodule)
'''


def test_example_is_the_readme_block() -> None:
    assert f"```python\n{EXAMPLE}```" in README.read_text(), (
        "README's New data example changed: copy it here"
    )


def test_example_trains_with_fast_dev_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_tiny_mnist(tmp_path / "data", n_train=5_600, n_test=200)  # > the 5,000 validation images
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    monkeypatch.setenv("PL_TRAINER_FAST_DEV_RUN", "1")  # Lightning's env defaults for Trainer arguments
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(EXAMPLE, "README.md", "exec"), namespace)

    trainer, model, datamodule = namespace["trainer"], namespace["model"], namespace["datamodule"]
    assert trainer.fast_dev_run and trainer.state.finished  # type: ignore[attr-defined]
    # the new task: two classes, labels are the digits' parity
    _, train_labels = datamodule.split("train")  # type: ignore[attr-defined]
    assert set(train_labels.unique().tolist()) == {0, 1}
    # the overridden network is the one trained and tested
    assert isinstance(model.net, torch.nn.Sequential)  # type: ignore[attr-defined]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 2)  # type: ignore[operator]
    metrics = trainer.callback_metrics  # type: ignore[attr-defined]
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert torch.isfinite(metrics["test/loss"])
    assert not (tmp_path / "lightning_logs").exists()  # fast_dev_run writes no logs or checkpoints


class _WidthBeforeSuper(MNISTClassifier):
    """A plain attribute set before ``super().__init__()``, which builds the network."""

    def __init__(self, width: int = 8, **kwargs: Any) -> None:
        self.width = width
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, self.width), nn.ReLU(), nn.Linear(self.width, 10))


class _WidthInHparams(MNISTClassifier):
    """The subclass's own setting as an argument, read from ``self.hparams`` (saved in checkpoints)."""

    def __init__(self, width: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        width = self.hparams["width"]
        return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))


class _WidthAfterSuper(MNISTClassifier):
    def __init__(self, width: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width

    def build_network(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(784, self.width))


@pytest.mark.parametrize("cls", [_WidthBeforeSuper, _WidthInHparams])
def test_a_subclass_setting_read_by_build_network_in_the_documented_order(
    cls: type[MNISTClassifier], tmp_path: Path
) -> None:
    model = cls(width=5, lr=0.1)  # type: ignore[call-arg]
    assert model.net[1].out_features == 5  # type: ignore[index]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.configure_optimizers().param_groups[0]["lr"] == 0.1
    if cls is _WidthInHparams:  # recorded with the base's hyperparameters: a checkpoint rebuilds it
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(tmp_path / "model.ckpt")
        loaded = cls.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
        assert loaded.hparams["width"] == 5 and loaded.net[1].out_features == 5  # type: ignore[index]


def test_a_subclass_attribute_set_after_super_init_is_named_with_the_fix() -> None:
    with pytest.raises(AttributeError) as info:
        _WidthAfterSuper(width=5)
    message = str(info.value)
    assert "'_WidthAfterSuper' object has no attribute 'width'" in message
    assert "reads self.width while MNISTClassifier.__init__ builds the network" in message
    assert "read self.hparams.width, or set self.width before calling super().__init__()" in message
