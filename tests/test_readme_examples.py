"""The README's worked examples, run verbatim on a tiny dataset (see :mod:`tests.readme_examples`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea

from tests.readme_examples import README, example_data, readme_examples, run_example


@pytest.fixture(scope="module")
def example_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_data(tmp_path_factory.mktemp("example_data"))


def _scalar_tags(workdir: Path) -> set[str]:
    """The scalars the example's Trainer wrote to TensorBoard (its default logger)."""
    accumulator = ea.EventAccumulator(str(workdir / "lightning_logs" / "version_0"))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_the_marker_finds_each_block_once(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# t\n\n```python\n# example: one\nx = 1\n```\n\ntext\n\n```python\nnot = 'marked'\n```\n"
        "```python\n# example: two-2\ny = 2\n```\n"
    )
    assert readme_examples(readme) == {"one": "# example: one\nx = 1\n", "two-2": "# example: two-2\ny = 2\n"}
    readme.write_text(readme.read_text() + "```python\n# example: one\nz = 3\n```\n")
    with pytest.raises(AssertionError, match="two examples are named 'one'"):
        readme_examples(readme)


def test_each_example_is_short() -> None:
    examples = readme_examples(README)
    assert {"from-python", "regression", "multi-label", "warm-up"} <= set(examples)
    for name, code in examples.items():
        assert len(code.strip().splitlines()) <= 40, name


def test_from_python(example_data_dir: Path, tmp_path: Path) -> None:
    ns = run_example("from-python", example_data_dir, tmp_path)
    trainer = ns["trainer"]
    assert trainer.current_epoch == 3 and Path(trainer.checkpoint_callback.best_model_path).is_file()
    assert not list(
        tmp_path.rglob("last.ckpt")
    )  # what the old snippet loaded, and a plain Trainer never writes
    probabilities = torch.cat(ns["probabilities"])
    assert probabilities.shape == (200, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(200))
    targets = ns["datamodule"].split("test")[1]
    assert (
        probabilities.argmax(dim=1) == targets
    ).float().mean() > 0.5  # the tiny digits are easy: it learned


def test_regression(example_data_dir: Path, tmp_path: Path) -> None:
    ns = run_example("regression", example_data_dir, tmp_path)
    [metrics] = ns["results"]
    assert set(metrics) == {"test/loss", "test/mae"}
    assert {"train/mae", "val/loss", "val/mae"} <= _scalar_tags(tmp_path)  # train/loss: every 50 steps
    assert not any("acc" in tag for tag in _scalar_tags(tmp_path))
    values = ns["values"]
    assert values.shape == (200, 1) and values.dtype == torch.float32
    targets = ns["datamodule"].split("test")[1]
    assert float(((values - targets) ** 2).mean()) == pytest.approx(metrics["test/loss"], rel=1e-4)
    assert float((values - targets).abs().mean()) == pytest.approx(metrics["test/mae"], rel=1e-4)
    assert metrics["test/mae"] < 2.5  # predicting the mean digit (4.5) scores 2.5


def test_multi_label(example_data_dir: Path, tmp_path: Path) -> None:
    ns = run_example("multi-label", example_data_dir, tmp_path)
    [metrics] = ns["results"]
    assert set(metrics) == {"test/loss", "test/acc"}
    assert {"train/acc", "val/acc", "val/acc_best", "val/loss"} <= _scalar_tags(tmp_path)
    probabilities = ns["probabilities"]
    assert probabilities.shape == (200, 3) and probabilities.min() >= 0 and probabilities.max() <= 1
    targets = ns["datamodule"].split("test")[1]
    agreement = ((probabilities > 0.5).float() == targets).float().mean()
    assert float(agreement) == pytest.approx(metrics["test/acc"], rel=1e-4)
    assert metrics["test/acc"] > 0.7


def test_warm_up(example_data_dir: Path, tmp_path: Path) -> None:
    ns = run_example("warm-up", example_data_dir, tmp_path)
    trainer, model = ns["trainer"], ns["model"]
    steps = trainer.global_step
    assert steps == 3 * 10  # 600 training images at batch 64, 3 epochs
    # the last step's rate, still warming up: (step + 1) / 500 of lr
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * steps / model.warmup_steps)
