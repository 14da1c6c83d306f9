"""The README's "Extending" example, verbatim, trained with fast_dev_run on a tiny IDX dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_mnist.data import DATA_DIR_ENV
from tests.conftest import write_tiny_mnist

README = Path(__file__).resolve().parents[1] / "README.md"

# Exactly the code block under "## Extending" in README.md (the first test checks it still is).
EXAMPLE = '''\
import lightning as L
from torch import Tensor, nn

from lit_mnist import MNISTClassifier, MNISTDataModule


class EvenOddDataModule(MNISTDataModule):
    """A new task from the same files: is the digit even (class 0) or odd (class 1)?"""

    num_classes = 2

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, digits = super().load(train)
        return images, digits % 2


class ConvClassifier(MNISTClassifier):
    """The same loss, metrics, optimizers and logging around another network."""

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
        "README's Extending example changed: copy it here"
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
