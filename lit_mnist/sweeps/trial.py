"""One trial of a sweep: the config of its sampled values, trained with :func:`lit_mnist.run.train`.

Each trial is an ordinary run in its own ``LOG_DIR/version_N`` (TensorBoard with the HParams entry,
``config.yaml``, checkpoints, ``results.json``), reserved before the run starts so that the trial
names it whatever happens, with two callbacks more: one that reads the metric at each validation
epoch, and Optuna's Lightning pruning callback.

A trial ends in one of Optuna's states and, when not complete, a ``reason`` user attribute: pruned
(the pruner, on the validation metric of an epoch; a NaN loss is reported to the pruner as NaN, which
it prunes once it has the trials it needs), failed (values the run refuses, an error in the run: the
sweep goes on), or failed because its worker stopped (SIGTERM/Ctrl-C: the sweep stops too; a killed
worker: its heartbeat stops and the next start of any worker marks it failed).
"""

from __future__ import annotations

import os
import socket
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import yaml

from lit_mnist.config import RunConfig
from lit_mnist.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    RunError,
    UsageError,
)
from lit_mnist.runs import reserve_version
from lit_mnist.runtime import first_line
from lit_mnist.sweeps.space import Configure, Space, describe

if TYPE_CHECKING:
    import optuna

    from lit_mnist.run import RunResult


class TrialFailed(Exception):
    """A trial that could not finish (its ``reason`` user attribute says why); the sweep goes on."""


class EpochMetric(L.Callback):
    """The metric at the end of each validation epoch (not the sanity check), and the epoch in training."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: dict[int, float] = {}
        self.epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if not trainer.sanity_checking and value is not None:
            self.values[trainer.current_epoch] = float(value)

    def best(self, direction: str) -> float | None:
        """The best value over the epochs (the trial's value), or None when validation never ran."""
        if not self.values:
            return None
        return max(self.values.values()) if direction == "maximize" else min(self.values.values())


class FoldsMetric(EpochMetric):
    """The metric at each validation epoch of every run of a cross-validation, run by run."""

    def __init__(self, metric: str) -> None:
        super().__init__(metric)
        self.runs: list[dict[int, float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.values = {}
        self.runs.append(self.values)

    def best(self, direction: str) -> float | None:
        """The mean over the folds of each fold's best value (the final model validates on nothing)."""
        pick = max if direction == "maximize" else min
        bests = [pick(values.values()) for values in self.runs if values]
        return sum(bests) / len(bests) if bests else None


class Objective:
    """Optuna's objective: one :func:`lit_mnist.run.train` call per trial, in its own ``LOG_DIR/version_N``.

    A config with ``folds`` K is a cross-validation (:func:`lit_mnist.cross_validate`) in the trial's
    folder: its value is the mean over the folds of each fold's best, and it is not pruned (the
    pruner's epochs are those of one run).

    Args:
        space: The hyperparameters to sample.
        configure: A trial's config from its sampled values (the fixed flags and the defaults filled in).
        metric: ``val/acc`` or ``val/loss``; the trial's value is its best over the epochs.
        direction: ``maximize`` or ``minimize``.
    """

    def __init__(self, space: Space, configure: Configure, metric: str, direction: str) -> None:
        self.space, self.configure, self.metric, self.direction = space, configure, metric, direction

    def __call__(self, trial: optuna.Trial) -> float:
        values = {param.name: param.suggest(trial) for param in self.space.params}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            cfg = self.configure(values)
        except (UsageError, ConfigError) as err:
            raise _failed(trial, f"the run refuses these values: {describe(err)}") from None
        # what --config takes to repeat the trial (the run's own config.yaml, written when training starts)
        trial.set_user_attr("config", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        # the folder first, so that a trial that fails before training still names it
        version = reserve_version(cfg.log_dir)
        run_dir = Path(cfg.log_dir) / f"version_{version}"
        trial.set_user_attr("run_dir", str(run_dir))
        print(flush=True)  # a blank line before each trial's output
        print(f"trial {trial.number}: {format_params(values)}  ->  {run_dir}", flush=True)
        recorder = FoldsMetric(self.metric) if cfg.folds and cfg.fold is None else EpochMetric(self.metric)
        result = self.run(trial, cfg, recorder, version)
        value = recorder.best(self.direction)
        if value is None:
            raise _failed(
                trial, f"no {self.metric} was logged: validation never ran (--limit-val-batches 0?)"
            )
        trial.set_user_attr("best_checkpoint", result.best_checkpoint if result is not None else None)
        trial.set_user_attr("test_acc", result.test_acc if result is not None else None)
        return value

    def run(
        self, trial: optuna.Trial, cfg: RunConfig, recorder: EpochMetric, version: int
    ) -> RunResult | None:
        """The trial's run (a cross-validation's final model, None without one); what ends it early
        becomes the trial's state and ``reason``."""
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        from lit_mnist.folds import cross_validate
        from lit_mnist.run import train

        # optuna-integration's callback reports the metric of each validation epoch to the trial and
        # raises optuna.TrialPruned when the study's pruner says so; the run ends there.
        pruning = PyTorchLightningPruningCallback(trial, monitor=self.metric)
        try:
            if cfg.folds and cfg.fold is None:
                folder = Path(cfg.log_dir) / f"version_{version}"
                return cross_validate(cfg, callbacks=[recorder], folder=folder).final
            return train(cfg, callbacks=[recorder, pruning], version=version)
        except optuna.TrialPruned:
            epoch = max(recorder.values, default=0)
            value = recorder.values.get(epoch)
            at = f"{self.metric} {value:.4g} at epoch {epoch}" if value is not None else f"epoch {epoch}"
            raise _pruned(trial, f"pruned: {at}") from None
        except NonFiniteLossError as err:
            raise _diverged(trial, err, recorder.epoch) from None
        except Interrupted as stop:  # SIGTERM / Ctrl-C: this trial fails, and the sweep stops
            trial.set_user_attr("reason", f"{stop.signal_name} stopped it in epoch {stop.epoch}")
            raise
        except DataError as err:  # every trial would fail the same way: the sweep stops
            trial.set_user_attr("reason", first_line(err))
            raise
        except (UsageError, ConfigError, CheckpointError, RunError) as err:
            raise _failed(trial, describe(err)) from None
        except Exception as err:  # a bug or an error of a library: this trial fails, the sweep goes on
            where = save_traceback(err, Path(cfg.log_dir) / f"version_{version}")
            raise _failed(trial, f"{type(err).__name__}: {first_line(err)}{where}") from None


def save_traceback(err: BaseException, run_dir: Path) -> str:
    """Write ``err``'s traceback to the run folder's ``error.txt``; the note that says where it is."""
    text = "".join(traceback.format_exception(err))
    log = run_dir / "error.txt"
    try:
        log.write_text(text)
    except OSError:  # a full disk: the trial's own error is what matters
        return ""
    return f" (traceback in {log})"


def _diverged(trial: optuna.Trial, err: NonFiniteLossError, epoch: int) -> Exception:
    """A NaN loss, reported to the pruner as NaN: pruned once the pruner may prune, else failed."""
    reason = f"diverged: {str(err).split(';')[0]}"
    trial.report(float("nan"), step=epoch)
    with warnings.catch_warnings():  # the median pruner's np.nanmax of the NaN, on purpose
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        prune = trial.should_prune()
    return _pruned(trial, reason) if prune else _failed(trial, reason)


def _failed(trial: optuna.Trial, reason: str) -> TrialFailed:
    trial.set_user_attr("reason", reason)
    return TrialFailed(reason)


def _pruned(trial: optuna.Trial, reason: str) -> Exception:
    import optuna

    trial.set_user_attr("reason", reason)
    return optuna.TrialPruned(reason)


def format_value(value: Any) -> str:
    """A parameter or metric value for a table: floats with 4 significant digits, lists as written."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(values: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={format_value(value)}" for name, value in values.items())
