"""Monitoring callbacks: what a run shows in TensorBoard and leaves as PNG files in its folder.

* :class:`EpochSpeed` -- ``perf/epoch_time_s``, ``perf/val_time_s`` and ``perf/train_samples_per_s``
  once per training epoch (any logger).
* :class:`PredictionImages` -- each validation epoch: ``val/predictions`` (the first validation images
  captioned with predicted and true class: the index, and the name beside it where the names say more),
  ``val/misclassified`` and ``val/confusion_matrix`` (its axes named the same way); after
  testing: ``test/confusion_matrix`` and ``confusion_matrix.png`` in the run's folder.
* :class:`TrainingCurves` -- ``curves.png`` (loss and accuracy per epoch, train and validation) in the
  run's folder at the end of ``fit``; its history travels in checkpoints, so a resumed run draws all epochs.
* :class:`ParameterHistograms` -- ``weights/<name>`` and ``gradients/<name>`` once per epoch (opt-in).

None of them adds work to the hot loop beyond a few small device ops: nothing per step is read on
the host (batch sizes come from tensor shapes, which are host metadata), predictions and wrong
examples stay on the device until one transfer at the end of the epoch, and every figure is drawn
once per epoch. The images go to TensorBoard only when a :class:`TensorBoardLogger` is among the
loggers; the PNG files go to the run folder whatever the loggers (none under ``fast_dev_run``, which
disables loggers). They need the LightningModule's ``validation_step`` / ``test_step`` to return
``{"preds": class indices}``.

The figures themselves are drawn by :mod:`lit_mnist.figures` (matplotlib is imported when the
first one is drawn).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_mnist.figures import (
    add_png,
    confusion_matrix_figure,
    curves_figure,
    display_images,
    grid_figure,
    save_png,
)

__all__ = [
    "CONFUSION_MATRIX_NAME", "CURVES_NAME", "EpochSpeed", "ParameterHistograms", "PredictionImages",
    "TrainingCurves", "epoch_end_step", "tensorboard_logger", "written_figures",
]  # fmt: skip

CURVES_NAME = "curves.png"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"


# --------------------------------------------------------------------------- small helpers
def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's TensorBoard logger, or None (no logger, ``fast_dev_run``'s dummy, another kind)."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def epoch_end_step(trainer: L.Trainer) -> int:
    """The step at which Lightning writes what ``self.log`` logged at an epoch's end, for our images to match.

    During ``fit``, validation and the training epoch's end come after the epoch's last optimizer step
    and before Lightning counts it, so their values sit at ``global_step - 1`` (epoch 0 of 16 steps:
    15); ``test`` and ``validate`` after a fit write at ``global_step`` itself.
    """
    fitting = trainer.state.fn == TrainerFn.FITTING
    return trainer.global_step - 1 if fitting and trainer.global_step > 0 else trainer.global_step


def _run_folder(trainer: L.Trainer, dirpath: str | Path | None) -> Path | None:
    """Where a callback writes its files: ``dirpath``, else the first logger's folder, else nowhere."""
    if dirpath is not None:
        return Path(dirpath)
    log_dir = trainer.loggers[0].log_dir if trainer.loggers else None
    return Path(log_dir) if log_dir else None


def written_figures(trainer: L.Trainer) -> dict[str, str]:
    """Paths of the PNG files the monitoring callbacks wrote into the run folder, by name."""
    figures: dict[str, str] = {}
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        figures.update(getattr(callback, "figures", {}))
    return figures


def _batch_size(batch: Any) -> int:
    """The number of samples in a batch, read from the first tensor's shape (no device access).

    A step group (a list of ``(images, targets)`` batches, see :mod:`lit_mnist.groups`) counts the
    samples of all its batches.
    """
    if isinstance(batch, list) and batch and isinstance(batch[0], (tuple, list)):
        return sum(_batch_size(part) for part in batch)
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values()), None))
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch):
        return _batch_size(batch[0])
    return 0


def _preds(outputs: Any) -> Tensor | None:
    """The predicted class indices a ``validation_step`` / ``test_step`` returned, if any."""
    if isinstance(outputs, Mapping) and isinstance(preds := outputs.get("preds"), Tensor):
        return preds.detach()
    return None


def _grid(
    kept: Sequence[Tensor], count: int | None, datamodule: Any, title: str, cells: int | None = None
) -> np.ndarray:
    """The grid figure of the first ``count`` (all: ``None``) of kept ``(images, preds, targets, ...)``,
    captioned with the datamodule's class names beside the indices."""
    x, p, y = (t[:count].cpu() for t in kept[:3])
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    names = _class_names(datamodule)
    return grid_figure(display_images(x, mean, std), p.tolist(), y.tolist(), title, cells, names)


def _class_names(datamodule: Any) -> list[str] | None:
    """The datamodule's class names (:attr:`~lit_mnist.data.TensorDataModule.class_names`), if it has them."""
    names = getattr(datamodule, "class_names", None)
    return [str(n) for n in names] if isinstance(names, list | tuple) else None


def _now(trainer: L.Trainer) -> float:
    """Wall-clock seconds after the device's queued work is done (one sync; call once per epoch, not per step)."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    # validate_args=False: the argument checks read values on the host (a device sync per step).
    return _SyncFreeConfusionMatrix(num_classes=num_classes, validate_args=False)


class _SyncFreeConfusionMatrix(MulticlassConfusionMatrix):
    """``MulticlassConfusionMatrix`` whose ``update`` never waits for the device.

    torchmetrics counts with ``torch.bincount``, which on CUDA reads the largest value on the host;
    ``scatter_add_`` into the same state gives the same counts without it. Reduction across
    processes, ``compute`` and ``reset`` are the parent's.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        num_classes = self.num_classes
        index = target.reshape(-1).long() * num_classes + preds.reshape(-1).long()
        self.confmat.view(-1).scatter_add_(0, index, torch.ones_like(index, dtype=self.confmat.dtype))


# --------------------------------------------------------------------------- logger and callbacks
class EpochSpeed(L.Callback):
    """Log the epoch's wall time and the training throughput once per training epoch.

    ``perf/epoch_time_s``: from the epoch's start to its end, validation included;
    ``perf/val_time_s``: the validation passes within it; ``perf/train_samples_per_s``: training
    samples (all processes) per second of the rest. Samples are counted from the batch tensor's
    shape, which lives on the host: no device sync per step. The clock is read four times per epoch,
    each after one ``torch.cuda.synchronize`` on a GPU, so queued work is counted where it belongs.
    The values are logged with ``pl_module.log``, so they share the step of the epoch's other metrics.

    Lightning's ``ThroughputMonitor`` measures something else: a windowed rate at every logging step,
    counting Lightning's batches (step groups, with the fast path), synchronising a GPU after every
    batch, and logging validation at the validation loop's own batch count; it has no epoch or
    validation wall time.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._val_start: float | None = None
        self._val_time = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._val_start, self._val_time, self._samples = _now(trainer), None, 0.0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += _batch_size(batch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._start is not None:
            self._val_start = _now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None:
            self._val_time += _now(trainer) - self._val_start
            self._val_start = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None or not trainer.loggers:
            return
        epoch_time = _now(trainer) - self._start
        train_time = max(epoch_time - self._val_time, 1e-9)
        metrics = {
            "perf/epoch_time_s": epoch_time,
            "perf/val_time_s": self._val_time,
            "perf/train_samples_per_s": self._samples * trainer.world_size / train_time,
        }
        for name, value in metrics.items():
            # each rank timed its own epoch: the mean over the ranks (one small all-reduce an epoch)
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True)
        self._start = None


class PredictionImages(L.Callback):
    """Validation images with their predictions, misclassified examples and confusion matrices.

    Each validation epoch (not the sanity check) logs ``val/predictions`` (the first
    ``num_images`` validation images, captioned ``pred P / true T``), ``val/misclassified`` (the
    first ``num_misclassified`` wrong ones of the epoch) and ``val/confusion_matrix``; each test logs
    ``test/confusion_matrix`` and writes ``confusion_matrix.png`` into the run folder (``dirpath``, else
    the first logger's folder).

    Per batch the work stays on the device and is never read on the host: the confusion matrix is
    a torchmetrics state updated with ``scatter_add_``, and the wrong examples are kept by a stable
    sort of the "is wrong" flags of the kept buffer plus the batch (wrong first, in order), cut to
    ``num_misclassified`` (on the CPU, where reading costs nothing, only the wrong images are copied
    until the buffer is full). At the end of the epoch the buffers come to the CPU once and the
    figures are drawn on rank 0. The confusion matrix is summed over all processes.
    """

    def __init__(
        self, num_images: int = 32, num_misclassified: int = 32, dirpath: str | Path | None = None
    ) -> None:
        self.dirpath = dirpath
        self.num_images = num_images
        self.num_misclassified = num_misclassified
        self.figures: dict[str, str] = {}
        self._matrix: MulticlassConfusionMatrix | None = None
        self._first: tuple[Tensor, Tensor, Tensor] | None = None
        self._wrong: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return self._matrix is not None and not trainer.sanity_checking

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first = self._wrong = None
        testing_to_file = trainer.testing and _run_folder(trainer, self.dirpath) is not None
        if tensorboard_logger(trainer) is None and not testing_to_file:
            self._matrix = None
            return
        num_classes = getattr(
            getattr(trainer, "datamodule", None), "num_classes", None
        ) or pl_module.hparams.get("num_classes")
        if not num_classes:
            self._matrix = None
            return
        if self._matrix is None or self._matrix.num_classes != num_classes:
            self._matrix = _confusion_matrix_metric(int(num_classes))
        self._matrix = self._matrix.to(pl_module.device)
        self._matrix.reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer) or dataloader_idx != 0 or (preds := _preds(outputs)) is None:
            return
        x, y = batch[0], batch[1]
        assert self._matrix is not None
        self._matrix.update(preds, y)
        if self._first is None and self.num_images > 0:
            n = self.num_images
            self._first = (x[:n].detach().clone(), preds[:n].clone(), y[:n].clone())
        if self.num_misclassified > 0:
            self._keep_wrong(x.detach(), preds, y)

    def _keep_wrong(self, x: Tensor, preds: Tensor, y: Tensor, host_reads: bool | None = None) -> None:
        """Keep the first ``num_misclassified`` wrong examples seen, in order.

        On an accelerator nothing is read on the host: the kept buffer and the batch are joined and
        stably sorted by their "is wrong" flags, then cut. On the CPU (``host_reads``, the default
        there) reading the flags costs no sync, so only the wrong images are copied, and nothing at
        all once the buffer is full -- fewer and smaller tensor ops, which matters on a busy CPU.
        """
        wrong = preds != y
        if x.device.type == "cpu" if host_reads is None else host_reads:
            kept = 0 if self._wrong is None else len(self._wrong[0])
            if kept >= self.num_misclassified:
                return
            index = wrong.nonzero().squeeze(1)[: self.num_misclassified - kept]
            parts = [x[index], preds[index], y[index], wrong[index]]
            if self._wrong is not None:
                parts = [torch.cat(pair) for pair in zip(self._wrong, parts, strict=True)]
            self._wrong = (parts[0], parts[1], parts[2], parts[3])
            return
        candidates: tuple[Tensor, ...] = (x, preds, y, wrong)
        if self._wrong is not None:
            candidates = tuple(torch.cat(pair) for pair in zip(self._wrong, candidates, strict=True))
        # stable: the wrong ones first, each group in the order seen
        order = torch.argsort((~candidates[3]).to(torch.int32), stable=True)[: self.num_misclassified]
        images, kept_preds, targets, flags = (t[order] for t in candidates)
        self._wrong = (images, kept_preds, targets, flags)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer) and dataloader_idx == 0 and (preds := _preds(outputs)) is not None:
            assert self._matrix is not None
            self._matrix.update(preds, batch[1])

    def _matrix_counts(self) -> np.ndarray | None:
        """The epoch's confusion matrix summed over processes (every rank must call this), then reset."""
        if self._matrix is None or self._matrix.update_count == 0:
            return None
        counts = self._matrix.compute().cpu().numpy()
        self._matrix.reset()
        return counts

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        counts = self._matrix_counts()
        logger = tensorboard_logger(trainer)
        if trainer.is_global_zero and logger is not None and counts is not None:
            epoch, datamodule = trainer.current_epoch, getattr(trainer, "datamodule", None)
            figures = {}
            if self._first is not None:
                figures["val/predictions"] = _grid(
                    self._first, None, datamodule, f"validation, epoch {epoch}"
                )
            if self._wrong is not None:
                count, total = int(self._wrong[3].sum()), int(counts.sum() - np.trace(counts))
                title = (
                    f"misclassified validation images, epoch {epoch}: {count} shown of {total}"
                    if total
                    else f"no misclassified validation images, epoch {epoch}"
                )
                figures["val/misclassified"] = _grid(
                    self._wrong, count, datamodule, title, self.num_misclassified
                )
            figures["val/confusion_matrix"] = confusion_matrix_figure(
                counts, f"validation, epoch {epoch}", _class_names(datamodule)
            )
            for tag, image in figures.items():
                add_png(logger.experiment, tag, image, epoch_end_step(trainer))
        self._first = self._wrong = None

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        counts = self._matrix_counts()
        if not trainer.is_global_zero or counts is None:
            return
        image = confusion_matrix_figure(counts, "test", _class_names(getattr(trainer, "datamodule", None)))
        if (logger := tensorboard_logger(trainer)) is not None:
            add_png(logger.experiment, "test/confusion_matrix", image, epoch_end_step(trainer))
        if (folder := _run_folder(trainer, self.dirpath)) is not None:
            path = folder / CONFUSION_MATRIX_NAME
            save_png(image, path)
            self.figures["confusion_matrix"] = str(path)


class TrainingCurves(L.Callback):
    """``curves.png`` in the run folder at the end of ``fit``: loss and accuracy per epoch, train and val.

    The folder is ``dirpath``, else the first logger's folder.

    Per epoch it keeps ``train/loss`` (the mean of the steps' losses, summed on the device and read
    once per epoch), ``train/acc``, ``val/loss`` and ``val/acc`` (as logged by the module). The
    history is plain numbers saved in checkpoints, so a resumed run draws every epoch.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = dirpath
        self.figures: dict[str, str] = {}
        self.history: dict[int, dict[str, float]] = {}
        self._loss_sum: Tensor | None = None
        self._loss_count = 0

    def _record(self, trainer: L.Trainer, epoch: int, keys: Sequence[str]) -> None:
        for key in keys:
            value = trainer.callback_metrics.get(key)
            if value is not None and epoch >= 0:
                self.history.setdefault(epoch, {})[key] = float(value)

    def _record_train_loss(self, trainer: L.Trainer) -> None:
        if self._loss_sum is not None and self._loss_count:
            loss = float(self._loss_sum) / self._loss_count
            self.history.setdefault(trainer.current_epoch, {})["train/loss"] = loss
        self._loss_sum, self._loss_count = None, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the epoch-level train/acc reaches callback_metrics only after on_train_epoch_end
        self._record(trainer, trainer.current_epoch - 1, ["train/acc"])
        self._loss_sum, self._loss_count = None, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor):
            return
        n = _batch_size(batch)
        # Lightning divides the loss by accumulate_grad_batches; undo it
        weighted = loss.detach().float() * (n * trainer.accumulate_grad_batches)
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += n

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before ModelCheckpoint (Lightning runs checkpoint callbacks last): the checkpoint holds this epoch
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._record_train_loss(trainer)
            self._record(trainer, trainer.current_epoch, ["val/loss", "val/acc"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train_loss(trainer)  # epochs without validation

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1, ["train/acc"])
        folder = _run_folder(trainer, self.dirpath)
        if folder is None or not trainer.is_global_zero or not self.history:
            return
        path = folder / CURVES_NAME
        save_png(curves_figure(self.history), path)
        self.figures["curves"] = str(path)

    def state_dict(self) -> dict[str, Any]:
        return {"history": {int(e): dict(v) for e, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(e): {k: float(v) for k, v in m.items()} for e, m in state_dict["history"].items()}


class ParameterHistograms(L.Callback):
    """``weights/<name>`` and ``gradients/<name>`` histograms once per training epoch.

    Gradients are those of the epoch's first optimizer step (before clipping, after AMP
    unscaling), cloned on the device then; weights are taken at the end of the epoch. Both come to
    the CPU once, at the end of the epoch, on rank 0.
    """

    def __init__(self) -> None:
        self._grads: dict[str, Tensor] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._grads = None

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._grads is None and tensorboard_logger(trainer) is not None:
            self._grads = {
                name: p.grad.detach().clone()
                for name, p in pl_module.named_parameters()
                if p.grad is not None
            }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            experiment, step = logger.experiment, epoch_end_step(trainer)
            for name, param in pl_module.named_parameters():
                experiment.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            for name, grad in (self._grads or {}).items():
                experiment.add_histogram(f"gradients/{name}", grad.float().cpu(), step)
        self._grads = None


#: Names that live elsewhere now and are still found here, for code and LightningCLI configs that name them so.
_MOVED = {"MonitoringTensorBoardLogger": "lit_mnist.loggers"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
