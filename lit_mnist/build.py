"""The build stage of a run: its datamodule, module and Trainer, from a :class:`~lit_mnist.config.RunConfig`.

The datamodule and module receive the step-group size the plan chose; the Trainer gets the
callbacks, loggers and checkpoints every run has (see :func:`build_trainer`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch

from lit_mnist.checkpoints import AtomicCheckpointIO, DatasetRecord
from lit_mnist.config import RunConfig, parse_devices
from lit_mnist.data import TensorDataModule
from lit_mnist.datasets import DATASETS
from lit_mnist.environment import EnvironmentRecord
from lit_mnist.groups import StepGroupPlan, StepGroups, StepProgressBar
from lit_mnist.module import MNISTClassifier
from lit_mnist.plan import groups_ruled_out, plan_step_groups
from lit_mnist.runtime import PRECISION_ALIASES
from lit_mnist.stopping import GracefulInterrupt, LastCheckpoint, NonFiniteLossGuard

__all__ = [
    "DATA_SETTINGS",
    "MODEL_SETTINGS",
    "build_callbacks",
    "build_data_and_model",
    "build_datamodule",
    "build_model",
    "build_profiler",
    "build_trainer",
]

if TYPE_CHECKING:
    from lightning.pytorch.profilers import Profiler

#: Settings that go to the datamodule's constructor (those it accepts) and to the module's.
DATA_SETTINGS = (
    "data_dir", "batch_size", "num_workers", "val_size", "loader", "download",
    "augment_degrees", "augment_translate", "augment_scale", "image_size", "color", "test_size", "skip_bad_images",
    "folds", "fold",
)  # fmt: skip
MODEL_SETTINGS = (
    "model", "hidden_sizes", "dropout", "cnn_channels", "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size",
    "channels_last", "optimizer", "lr", "momentum", "nesterov", "betas", "weight_decay", "scheduler",
    "cycle_momentum", "step_size", "gamma", "label_smoothing",
)  # fmt: skip


def build_datamodule(cfg: RunConfig, steps_per_batch: int = 1) -> TensorDataModule:
    """The datamodule named by ``dataset``, with the data settings and the run's group size."""
    cls = DATASETS[cfg.dataset]
    accepted = inspect.signature(cls.__init__).parameters
    settings = {n: getattr(cfg, n) for n in DATA_SETTINGS if n in accepted and getattr(cfg, n) is not None}
    return cls(**settings, seed=cfg.seed, steps_per_batch=steps_per_batch)


def build_model(cfg: RunConfig, datamodule: TensorDataModule, steps_per_batch: int = 1) -> MNISTClassifier:
    """The LightningModule; the number of classes and the input shape come from the datamodule."""
    return MNISTClassifier(
        **{name: getattr(cfg, name) for name in MODEL_SETTINGS},
        num_classes=datamodule.num_classes,
        input_shape=list(datamodule.image_shape),
        steps_per_batch=steps_per_batch,
    )


def build_data_and_model(cfg: RunConfig) -> tuple[TensorDataModule, MNISTClassifier, StepGroupPlan]:
    """The datamodule and the module of a run, with the step-group plan they share."""
    candidate = 1 if groups_ruled_out(cfg) else cfg.steps_per_batch
    datamodule = build_datamodule(cfg, candidate)
    build_model(
        cfg, datamodule, candidate
    )  # the network's checks (e.g. pixels left) before the data are read
    plan = plan_step_groups(cfg, datamodule)
    if plan.size != candidate:  # lowered: the data are checked and parsed again
        datamodule = build_datamodule(cfg, plan.size)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same weights whatever was built before
    model = build_model(cfg, datamodule, plan.size)
    if cfg.compile:
        model.net.compile()  # the nn.Module, in place: the state_dict keys stay those of the network
    return datamodule, model, plan


def build_callbacks(cfg: RunConfig, run_dir: Path, plan: StepGroupPlan) -> list[L.Callback]:
    """Every run's callbacks: checkpoints (best by ``val/acc`` and last), signals, NaN guard, monitoring."""
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        EMAWeightAveraging,
        LearningRateMonitor,
        ModelCheckpoint,
        StochasticWeightAveraging,
    )

    from lit_mnist.callbacks import EpochSpeed, ParameterHistograms, PredictionImages, TrainingCurves

    checkpoints = run_dir / "checkpoints"
    validates = cfg.val_size != 0  # --val-size 0: no validation images, and the best is the newest epoch's
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=checkpoints, filename="epoch{epoch:02d}" + ("-val_acc{val/acc:.4f}" if validates else ""),
            monitor="val/acc" if validates else None, mode="max",
            save_top_k=cfg.save_top_k if validates else min(cfg.save_top_k, 1), auto_insert_metric_name=False,
        ),
        LastCheckpoint(checkpoints),
        DatasetRecord(cfg.dataset),  # the datamodule's dataset_record(): classes, normalisation, shape
        EnvironmentRecord(),  # versions, machine, commit, command: environment.json and every checkpoint
        GracefulInterrupt(),
        NonFiniteLossGuard(),
    ]  # fmt: skip
    if plan.size > 1:
        callbacks.append(StepGroups(plan.size))
    if cfg.ckpt_every_n_steps:
        callbacks.append(LastCheckpoint(checkpoints, every_n_train_steps=cfg.ckpt_every_n_steps))
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=cfg.early_stopping_patience))
    if cfg.progress_bar:  # a terminal write per step would be most of a small step's time
        callbacks.append(StepProgressBar(plan.size, refresh_rate=20))
    if not cfg.fast_dev_run:  # fast_dev_run disables the loggers: nothing to monitor into
        callbacks += [LearningRateMonitor(logging_interval="step"), EpochSpeed(), TrainingCurves(run_dir),
                      PredictionImages(dirpath=run_dir)]  # fmt: skip
        if cfg.log_histograms:
            callbacks.append(ParameterHistograms())
    if cfg.ema is not None:  # validated, checkpointed (state_dict) and, after fit, left in the model
        callbacks.append(EMAWeightAveraging(decay=cfg.ema))
    if cfg.swa_lr is not None:
        callbacks.append(StochasticWeightAveraging(swa_lrs=cfg.swa_lr, swa_epoch_start=cfg.swa_epoch_start))
    return callbacks


def build_trainer(cfg: RunConfig, run_dir: Path, version: int | None, plan: StepGroupPlan) -> L.Trainer:
    """The Trainer: loggers in ``run_dir``, the run's callbacks, atomic checkpoint writes.

    With step groups (``plan``), Lightning counts its logging interval in groups, the loggers write
    at optimizer steps and the progress bar counts optimizer steps (see :mod:`lit_mnist.groups`).
    """
    from lit_mnist.loggers import build_loggers

    loggers = [] if cfg.fast_dev_run else build_loggers(
        list(cfg.logger), cfg.log_dir, version, cfg.mlflow_tracking_uri, cfg.mlflow_experiment, log_graph=not cfg.compile
    )  # fmt: skip
    limits = {
        f"limit_{stage}_batches": getattr(cfg, f"limit_{stage}_batches")
        for stage in ("train", "val", "test")
        if getattr(cfg, f"limit_{stage}_batches") is not None
    }
    if cfg.val_size == 0:  # no validation images: Lightning skips validation and its sanity check
        limits["limit_val_batches"] = 0
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=PRECISION_ALIASES.get(cfg.precision, cfg.precision),  # type: ignore[arg-type]
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        deterministic=cfg.deterministic,
        gradient_clip_val=cfg.gradient_clip_val,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        fast_dev_run=cfg.fast_dev_run,
        log_every_n_steps=cfg.log_every_n_steps // plan.size,  # Lightning counts its batches: groups
        enable_progress_bar=cfg.progress_bar,
        logger=loggers,
        callbacks=build_callbacks(cfg, run_dir, plan),
        profiler=build_profiler(cfg.profiler, run_dir),
        plugins=[AtomicCheckpointIO()],  # every checkpoint written beside its target, synced, renamed
        **limits,
    )


def build_profiler(name: str | None, run_dir: Path) -> Profiler | None:
    """Lightning's profiler ``name``, reporting into the run folder (``profile*.txt``; a trace for ``pytorch``)."""
    from lightning.pytorch.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler

    if name is None:
        return None
    if name == "simple":
        return SimpleProfiler(dirpath=run_dir, filename="profile")
    if name == "advanced":
        return AdvancedProfiler(dirpath=run_dir, filename="profile")
    # TensorBoard's profiler plugin (pip install torch-tb-profiler) reads the trace from the run folder
    trace = torch.profiler.tensorboard_trace_handler(str(run_dir / "profiler"))
    # acc_events: the report sums every profiled cycle (Lightning's schedule repeats), not the last one only
    return PyTorchProfiler(dirpath=run_dir, filename="profile", on_trace_ready=trace, acc_events=True)
