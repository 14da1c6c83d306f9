"""Lightning's documented contract, held by ``MNISTDataModule`` and ``MNISTClassifier`` with their defaults.

A Lightning user who takes the two classes as they come and a plain ``lightning.Trainer`` gets what
Lightning's documentation promises: callbacks see every batch, schedulers (plateau and per step),
gradient clipping and accumulation, manual optimization with several optimizers, the Tuner and
``LightningCLI``. Every test checks an effect (batches, steps, rates, gradient norms, weights), never
a flag or a private counter. The step-group variants (``steps_per_batch=10`` on both objects) check
the behaviours that must not change on the fast path.

The tiny dataset has 600 training images; ``val_size=100`` leaves 500 to train on.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from tensorboard.backend.event_processing import event_accumulator as ea
from torch import Tensor

from lit_mnist import MNISTClassifier, MNISTDataModule
from lit_mnist.errors import ConfigError

TRAIN_SIZE = 500  # 600 training images less val_size=100
VAL_SIZE = 100


def _datamodule(data: Path, **kwargs: Any) -> MNISTDataModule:
    """The datamodule with its defaults, on the tiny dataset (no download, 100 validation images)."""
    return MNISTDataModule(str(data), val_size=VAL_SIZE, download=False, **kwargs)


def _trainer(**kwargs: Any) -> L.Trainer:
    """A plain Trainer on the CPU, quiet: no logger, checkpoints, progress bar or summary unless asked."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    settings.update(kwargs)
    return L.Trainer(**settings)


def _lr(trainer: L.Trainer) -> float:
    """The learning rate of the trainer's (first) optimizer now."""
    return float(trainer.optimizers[0].param_groups[0]["lr"])


def _total_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads)))


# ---------------------------------------------------------------------------------- 1. every batch


class _BatchRecorder(L.Callback):
    """Records what a callback sees: every training batch, its index, every backward pass."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, Any]] = []  # (epoch, batch_idx, batch)
        self.backwards = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, batch))

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.backwards += 1


def _sizes(batch: Any) -> list[int]:
    """The sizes of the (images, targets) batches in one training batch (a pair, or a step group of pairs)."""
    if isinstance(batch[0], Tensor):
        images, targets = batch
        assert len(images) == len(targets)
        return [len(targets)]
    return [size for pair in batch for size in _sizes(pair)]


@pytest.mark.parametrize(
    ("steps_per_batch", "batch_size"),
    [
        (1, 32),  # 16 batches: 15 of 32 and a last one of 20
        (10, 25),  # 20 batches of 25, in 2 step groups of 10
        (4, 32),  # 16 batches in 4 step groups of 4, the last with a batch of 20
    ],
)
def test_a_callback_sees_every_batch(tiny_data: Path, steps_per_batch: int, batch_size: int) -> None:
    epochs = 2
    batches = math.ceil(TRAIN_SIZE / batch_size)
    L.seed_everything(0, verbose=False)
    if steps_per_batch == 1:  # the defaults, as a Lightning user takes them
        model, dm = MNISTClassifier(), _datamodule(tiny_data, batch_size=batch_size)
    else:
        model = MNISTClassifier(steps_per_batch=steps_per_batch)
        dm = _datamodule(tiny_data, batch_size=batch_size, steps_per_batch=steps_per_batch)
    recorder = _BatchRecorder()
    trainer = _trainer(max_epochs=epochs, callbacks=[recorder])
    trainer.fit(model, datamodule=dm)

    items = math.ceil(batches / steps_per_batch)  # what Lightning calls a training batch
    assert trainer.num_training_batches == items
    assert len(recorder.batches) == items * epochs
    for epoch in range(epochs):
        seen = [(idx, batch) for e, idx, batch in recorder.batches if e == epoch]
        assert [idx for idx, _ in seen] == list(range(items))
        sizes = []
        for _, batch in seen:
            if steps_per_batch == 1:
                assert isinstance(batch[0], Tensor) and len(batch) == 2  # an (images, targets) pair
            else:  # a step group: a list of steps_per_batch (images, targets) pairs
                assert isinstance(batch, list)
                assert all(len(pair) == 2 and isinstance(pair[0], Tensor) for pair in batch)
            sizes.append(_sizes(batch))
        assert [len(group) for group in sizes] == [steps_per_batch] * items
        flat = [size for group in sizes for size in group]
        assert flat[:-1] == [batch_size] * (batches - 1)
        assert flat[-1] == TRAIN_SIZE - batch_size * (batches - 1)  # the epoch's last batch may be smaller
    # One backward pass and one optimizer step per batch of batch_size, whatever the grouping.
    if steps_per_batch > 1:
        assert batches % steps_per_batch == 0
    assert recorder.backwards == batches * epochs
    assert trainer.global_step == batches * epochs


# ---------------------------------------------------------------------------------- 2. plateau


class _PlateauClassifier(MNISTClassifier):
    """Lightning's documented ReduceLROnPlateau configuration, on ``val/loss``."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
        # mode="min", threshold_mode="rel": a value improves on the best only if it is below
        # best * (1 - threshold). With threshold=1e9 that is below best * -999999999: never, for the best
        # starts at +inf (-inf after the product) and a cross-entropy stays positive. So every epoch is a
        # bad one and, with patience=0, every step of the scheduler halves the rate.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=0, factor=0.5, threshold=1e9
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}


class _EpochRates(L.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rates.append(_lr(trainer))


def test_a_plateau_scheduler_on_val_loss_lowers_the_rate_every_epoch(tiny_data: Path) -> None:
    epochs, lr = 2, 0.01
    L.seed_everything(0, verbose=False)
    model, dm = _PlateauClassifier(lr=lr), _datamodule(tiny_data, batch_size=25)
    rates = _EpochRates()
    trainer = _trainer(max_epochs=epochs, callbacks=[rates])
    trainer.fit(model, datamodule=dm)

    assert "val/loss" in trainer.callback_metrics
    assert trainer.global_step == 20 * epochs
    # Stepped once per epoch (Lightning's default interval), after validation: halved each time.
    assert rates.rates == pytest.approx([lr * 0.5**e for e in range(epochs)], rel=1e-12)
    assert _lr(trainer) == pytest.approx(lr * 0.5**epochs, rel=1e-12)
    assert _lr(trainer) < lr


# Lightning drops a scheduler's monitor in manual optimization and says so; step groups then refuse it.
@pytest.mark.filterwarnings(
    "ignore:The lr scheduler dict contains the key\\(s\\) \\['monitor'\\]:RuntimeWarning"
)
def test_step_groups_refuse_a_plateau_scheduler_when_fit_starts(tiny_data: Path) -> None:
    model = _PlateauClassifier(lr=0.01, steps_per_batch=10)
    dm = _datamodule(tiny_data, batch_size=25, steps_per_batch=10)
    with pytest.raises(ConfigError, match="steps_per_batch must be 1 with a ReduceLROnPlateau scheduler"):
        _trainer(max_epochs=1).fit(model, datamodule=dm)


# ---------------------------------------------------------------------------------- 3. clipping


class _NormAfterClipping(MNISTClassifier):
    """Records the total gradient norm after Lightning's own clipping, through the public hook."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clipped_norms: list[float] = []

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.clipped_norms.append(_total_norm(self))


class _NormBeforeClipping(L.Callback):
    """``on_before_optimizer_step`` runs before Lightning clips: it sees the raw gradients."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        self.norms.append(_total_norm(pl_module))


def test_gradient_clipping_by_norm_bounds_every_step(tiny_data: Path) -> None:
    clip = 0.01  # far below the norms of this network's gradients: clipping really happens
    runs = {}
    for clip_val in (None, clip):
        L.seed_everything(0, verbose=False)
        model, raw = _NormAfterClipping(), _NormBeforeClipping()
        trainer = _trainer(max_epochs=1, gradient_clip_val=clip_val, callbacks=[raw])
        trainer.fit(model, datamodule=_datamodule(tiny_data, batch_size=50))
        assert trainer.global_step == len(raw.norms) == len(model.clipped_norms) == 10
        runs[clip_val] = (raw.norms, model.clipped_norms)

    unclipped_raw, unclipped_after = runs[None]
    assert unclipped_after == unclipped_raw  # no clip value: the gradients are left alone
    assert max(unclipped_raw) > clip  # so without clipping the norm does exceed it

    raw_norms, clipped = runs[clip]
    # clip_grad_norm_ scales by clip / (norm + 1e-6): the norm lands just below clip, never above.
    assert all(norm <= clip * (1 + 1e-6) for norm in clipped), clipped
    for before, after in zip(raw_norms, clipped, strict=True):
        expected = before if before <= clip else clip * before / (before + 1e-6)
        assert after == pytest.approx(expected, rel=1e-5)
    # The first step's gradients come from the same weights and batch in both runs.
    assert raw_norms[0] == pytest.approx(unclipped_raw[0], rel=1e-6)


# ---------------------------------------------------------------------------------- 4. accumulation


def test_accumulating_two_batches_takes_one_step_per_pair(tiny_data: Path) -> None:
    # 500 / 40: 13 batches (12 of 40, one of 20); Lightning steps after every second batch and after
    # the epoch's last one: ceil(13 / 2) = 7 optimizer steps per epoch.
    epochs = 2
    L.seed_everything(0, verbose=False)
    model, dm = MNISTClassifier(), _datamodule(tiny_data, batch_size=40)
    # The untrained weights' accuracy, on a copy (validating the module itself before fit is another test).
    before = _trainer().validate(copy.deepcopy(model), datamodule=dm, verbose=False)[0]["val/acc"]
    backwards = _BatchRecorder()
    trainer = _trainer(max_epochs=epochs, accumulate_grad_batches=2, callbacks=[backwards])
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]

    assert trainer.num_training_batches == 13
    assert len(backwards.batches) == backwards.backwards == 13 * epochs  # every batch still seen
    assert trainer.global_step == math.ceil(13 / 2) * epochs
    assert before < 0.3 and after > before + 0.4, (before, after)  # it learns


def test_accumulating_two_batches_of_b_equals_batches_of_2b(tiny_data: Path) -> None:
    # 500 / 25 = 20 full batches, paired into the 10 full batches of 50: the datamodule's shuffle is a
    # function of (seed, epoch) only, so batch k of 50 holds batches 2k and 2k+1 of 25. Lightning divides
    # the loss by 2 when it accumulates 2, so the summed gradient is the mean over the 50 samples: the
    # same steps up to float32 rounding, as the sums run in another order. The weights are O(0.1), float32's
    # spacing there ~1e-8, and the runs differ by ~1e-8 after 10 steps; atol=1e-6 leaves a wide margin, while
    # a loss that was not divided by 2 (twice the step) would differ by ~1e-3.
    models, trainers = {}, {}
    for batch_size, accumulate in ((25, 2), (50, 1)):
        L.seed_everything(0, verbose=False)
        model = MNISTClassifier()
        trainer = _trainer(max_epochs=1, accumulate_grad_batches=accumulate)
        trainer.fit(model, datamodule=_datamodule(tiny_data, batch_size=batch_size))
        models[batch_size], trainers[batch_size] = model, trainer
    assert trainers[25].num_training_batches == 20 and trainers[50].num_training_batches == 10
    assert trainers[25].global_step == trainers[50].global_step == 10
    for (name, a), (_, b) in zip(models[25].named_parameters(), models[50].named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------- validate, then fit


def test_validating_before_fitting_the_same_module(tiny_data: Path) -> None:
    """``trainer.validate(model)`` for a baseline, then ``trainer.fit(model)``: both on one module and trainer."""
    L.seed_everything(0, verbose=False)
    model, dm = MNISTClassifier(), _datamodule(tiny_data, batch_size=50)
    trainer = _trainer(max_epochs=1)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    assert trainer.global_step == 10
    assert after > before, (before, after)


# ---------------------------------------------------------------------------------- 5. manual, two optimizers


class _TwoOptimizers(MNISTClassifier):
    """Lightning's documented manual optimization: the first layer and the rest, each with its optimizer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def first_layer(self) -> torch.nn.Module:
        return next(m for m in self.net.modules() if isinstance(m, torch.nn.Linear))

    def configure_optimizers(self) -> Any:
        first = list(self.first_layer().parameters())
        rest = [p for p in self.parameters() if all(p is not q for q in first)]
        return [torch.optim.SGD(first, lr=0.05), torch.optim.Adam(rest, lr=1e-3)]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        assert isinstance(optimizers, list)  # several optimizers: Lightning hands them back as a list
        first, rest = optimizers
        images, targets = batch
        loss = self.criterion(self(images), targets)
        first.zero_grad()
        rest.zero_grad()
        self.manual_backward(loss)
        first.step()
        rest.step()
        self.log("train/loss", loss)
        return loss


def test_manual_optimization_with_two_optimizers(tiny_data: Path) -> None:
    epochs, batches = 2, 20  # 500 / 25
    L.seed_everything(0, verbose=False)
    model = _TwoOptimizers()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    first_names = {
        name for name, p in model.named_parameters() if any(p is q for q in model.first_layer().parameters())
    }
    assert len(first_names) == 2  # weight and bias
    recorder = _BatchRecorder()
    trainer = _trainer(max_epochs=epochs, callbacks=[recorder])
    trainer.fit(model, datamodule=_datamodule(tiny_data, batch_size=25))

    assert len(trainer.optimizers) == 2
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), initial[name]), f"{name} was not trained"
    # Manual optimization: global_step counts every optimizer.step() of every optimizer.
    assert trainer.global_step == 2 * batches * epochs
    assert len(recorder.batches) == recorder.backwards == batches * epochs
    assert trainer.callback_metrics["val/acc"] > 0.5


# ---------------------------------------------------------------------------------- 6-7. the Tuner


def test_the_learning_rate_finder(tiny_data: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    model, dm = MNISTClassifier(), _datamodule(tiny_data, batch_size=16)  # 32 batches: enough for 30 rates
    trainer = _trainer(max_epochs=1, default_root_dir=str(tmp_path))
    finder = Tuner(trainer).lr_find(
        model, datamodule=dm, min_lr=1e-4, max_lr=1.0, num_training=30, early_stop_threshold=None
    )
    assert finder is not None
    assert len(finder.results["lr"]) == len(finder.results["loss"]) == 30
    suggestion = finder.suggestion()
    assert suggestion is not None and 1e-4 <= suggestion <= 1.0
    assert model.hparams["lr"] == suggestion  # update_attr=True: the module's lr is the suggestion
    assert not list(tmp_path.glob("*.ckpt"))  # its temporary checkpoint is gone


def test_the_batch_size_finder_changes_the_datamodules_batch_size(tiny_data: Path, tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    model, dm = MNISTClassifier(), _datamodule(tiny_data)
    original = dm.batch_size
    trainer = _trainer(max_epochs=1, default_root_dir=str(tmp_path))
    found = Tuner(trainer).scale_batch_size(model, datamodule=dm, mode="power", max_trials=3)
    assert found is not None and found != original
    assert dm.batch_size == found

    # The next fit trains with the size found.
    recorder = _BatchRecorder()
    _trainer(max_steps=2, limit_val_batches=0, callbacks=[recorder]).fit(model, datamodule=dm)
    assert [_sizes(batch) for _, _, batch in recorder.batches] == [[found], [found]]


# ---------------------------------------------------------------------------------- 8. LightningCLI


# Lightning 2.6.6's LightningCLI calls jsonargparse APIs deprecated in jsonargparse 4.49 (add_instantiator,
# instantiate_classes, skip_none); jsonargparse announces each once per process, after a one-line preamble.
# Not our code; whichever CLI test runs first gets them.
_JSONARGPARSE_DEPRECATIONS = (
    r"ignore:\s*By default only one JsonargparseDeprecationWarning:DeprecationWarning",
    r"ignore:\s*``ArgumentParser.add_instantiator`` was deprecated:DeprecationWarning",
    r"ignore:\s*``instantiate_classes`` was deprecated:DeprecationWarning",
    r"ignore:\s*skip_none parameter was deprecated:DeprecationWarning",
)


def _lightning_cli_deprecations(test: Any) -> Any:
    for spec in _JSONARGPARSE_DEPRECATIONS:
        test = pytest.mark.filterwarnings(spec)(test)
    return test


def _cli_args(data: Path, root: Path, *extra: str) -> list[str]:
    return [
        "--seed_everything", "0",
        "--model.lr", "0.05",
        "--data.batch_size", "32",
        "--data.data_dir", str(data),
        "--data.val_size", str(VAL_SIZE),
        "--data.download", "false",
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root),
        *extra,
    ]  # fmt: skip


@_lightning_cli_deprecations
def test_lightning_cli_builds_and_trains_both(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LightningCLI warns when it is given args= while sys.argv holds arguments too (pytest's own here).
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    cli = LightningCLI(MNISTClassifier, MNISTDataModule, run=False, args=_cli_args(tiny_data, tmp_path))
    assert isinstance(cli.model, MNISTClassifier) and isinstance(cli.datamodule, MNISTDataModule)
    assert cli.model.hparams["lr"] == 0.05
    assert cli.datamodule.batch_size == 32 and cli.datamodule.val_size == VAL_SIZE
    assert cli.trainer.max_epochs == 1
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == math.ceil(TRAIN_SIZE / 32)
    assert _lr(cli.trainer) == 0.05
    assert (tmp_path / "config.yaml").is_file()  # LightningCLI's SaveConfigCallback wrote the run's config


@_lightning_cli_deprecations
def test_lightning_cli_rejects_an_unknown_optimizer(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # see test_lightning_cli_builds_and_trains_both
    with pytest.raises(SystemExit) as exit_info:
        LightningCLI(
            MNISTClassifier,
            MNISTDataModule,
            run=False,
            args=_cli_args(tiny_data, tmp_path, "--model.optimizer", "foo"),
        )
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert "foo" in message
    for choice in ("sgd", "adam", "adamw", "rmsprop"):
        assert f"'{choice}'" in message, message


# ---------------------------------------------------------------------------------- 9. one-cycle per step


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_a_per_step_one_cycle_schedule_is_logged_and_ends_where_it_should(
    tiny_data: Path, tmp_path: Path
) -> None:
    epochs, steps, lr = 2, 40, 0.05  # 500 / 25 = 20 steps per epoch
    L.seed_everything(0, verbose=False)
    model = MNISTClassifier(scheduler="onecycle", lr=lr)
    logger = TensorBoardLogger(str(tmp_path), name="", version=0, default_hp_metric=False)
    trainer = _trainer(
        max_epochs=epochs,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(model, datamodule=_datamodule(tiny_data, batch_size=25))
    assert trainer.global_step == steps

    # The same schedule replayed by hand: the rate each step used, and the rate after the last step.
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert _lr(trainer) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)

    logged = _scalars(tmp_path / "version_0", "lr-SGD")
    assert [step for step, _ in logged] == list(range(steps))
    assert [value for _, value in logged] == pytest.approx(used, rel=1e-6)  # float32 in the event file
    assert max(used) == pytest.approx(lr) and used[0] == pytest.approx(lr / 25)  # the cycle's peak and start
    # The last step ran at one-cycle's final rate: initial_lr / final_div_factor = (lr / 25) / 1e4.
    assert logged[-1][1] == pytest.approx(lr / 25 / 1e4, rel=1e-6)
