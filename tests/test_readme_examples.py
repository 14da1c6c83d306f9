"""The README's worked examples, run verbatim on a tiny dataset (see :mod:`tests.readme_examples`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator as ea

import lit_mnist as lm
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
    assert {
        "library", "from-python", "regression", "multi-label", "autoencoder", "two-optimizers", "warm-up"
    } <= set(examples)
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


def test_library(example_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lm.train`` twice in one process, from a checkout whose ``../shared/data`` holds the data, as in the README."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(example_data_dir)  # the README's ../shared/data, seen from the checkout
    ns = run_example("library", example_data_dir, tmp_path / "checkout")
    first, second = ns["result"], ns["second"]
    assert isinstance(first, lm.RunResult) and isinstance(second, lm.RunResult)
    assert 0.5 < first.test_acc <= 1.0  # the tiny digits are easy: it learned
    assert first.run_dir != second.run_dir  # two runs, two folders
    for result in (first, second):
        run_dir = tmp_path / "checkout" / str(result.run_dir)
        assert (run_dir / "config.yaml").is_file() and (run_dir / "results.json").is_file()
        assert result.best_checkpoint and (tmp_path / "checkout" / result.best_checkpoint).is_file()
    assert first.config.lr == 0.01 and second.config.lr == 0.05 and ns["cfg"].lr == 0.01  # replace() copied
    assert str(first.test_acc) in capsys.readouterr().out
    # the README's sentence after the block
    with pytest.raises(lm.ConfigError, match=r"^lr must be > 0, got -1$") as raised:
        lm.RunConfig(lr=-1)
    assert raised.value.key == "lr"


def test_autoencoder(example_data_dir: Path, tmp_path: Path) -> None:
    ns = run_example("autoencoder", example_data_dir, tmp_path)
    [metrics] = ns["results"]
    assert set(metrics) == {"test/loss", "test/mae"}
    assert {"train/mae", "val/loss", "val/mae"} <= _scalar_tags(tmp_path)
    images, targets = ns["datamodule"].split("test")
    assert targets.shape == (200, 784) and float(targets.min()) >= 0 and float(targets.max()) <= 1  # no labels
    model = ns["model"].eval()
    untrained = ns["AutoEncoder"](code_size=16).eval()  # the same network, as built
    with torch.no_grad():
        error = float(torch.nn.functional.mse_loss(model(images), targets))
        error_before = float(torch.nn.functional.mse_loss(untrained(images), targets))
    assert error == pytest.approx(metrics["test/loss"], rel=1e-4)
    assert error < error_before / 2  # it learned to reconstruct: the reconstruction error fell
    # code_size, set before super().__init__(), is a hyperparameter: the checkpoint rebuilds the same network
    checkpoint = ns["trainer"].checkpoint_callback.best_model_path
    restored = ns["AutoEncoder"].load_from_checkpoint(checkpoint, weights_only=True).eval()
    assert restored.code_size == 16 and restored.net[0][-1].out_features == 16
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))


def test_two_optimizers(example_data_dir: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    ns = run_example("two-optimizers", example_data_dir, tmp_path)
    trainer, model = ns["trainer"], ns["model"]
    sgd, adam = trainer.optimizers
    assert isinstance(sgd, torch.optim.SGD) and isinstance(adam, torch.optim.Adam)
    batches = 3 * 10  # 600 training images at batch 64, 3 epochs
    assert trainer.global_step == 2 * batches  # manual optimization counts every optimizer's steps
    head = list(model.net.layers[-1].parameters())
    body = [p for group in sgd.param_groups for p in group["params"]]
    assert int(adam.state[head[0]]["step"]) == batches  # Adam stepped the output layer at every batch
    assert all("momentum_buffer" in sgd.state[p] for p in body)  # SGD stepped every layer below it
    assert len(body) + len(head) == len(list(model.parameters())) and all(p is not q for p in body for q in head)
    assert trainer.callback_metrics["val/acc"] > 0.5
