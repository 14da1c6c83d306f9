"""Step groups: the fast path, several optimizer steps per training batch that Lightning sees.

Lightning does a fixed amount of work per training batch (hooks, progress tracking, logging
checks), comparable to a whole optimizer step of a small network at a small batch size. With
step groups the datamodule hands Lightning a list of ``K`` batches at once and the module takes
their ``K`` optimizer steps in one ``training_step`` (Lightning's manual optimization), so that
work is paid once per ``K`` steps. The samples, their order, the steps and the weights are those
of one step per batch.

It is a choice made once, before the Trainer exists, by the code that knows every setting
(``scripts/train.py``; see :func:`group_size`), and everything it sets must agree:

* ``MNISTDataModule(steps_per_batch=K)`` yields the groups and ``MNISTClassifier(steps_per_batch=K)``
  steps through them;
* Lightning counts training batches: ``Trainer(log_every_n_steps=...)`` is given in groups
  (``log_every_n_steps // K``), and ``K`` must divide the optimizer steps per epoch,
  ``max_steps`` and every checkpoint's ``every_n_train_steps``, which Lightning checks after each
  batch (:func:`group_size` picks such a ``K``);
* :class:`StepGroups` (a callback) makes the loggers that mix in :class:`OptimizerStepAxis` write
  every value at the optimizer step it belongs to, and :class:`StepProgressBar` counts optimizer
  steps, so that what the user sees is what one step per batch shows.

To the rest of Lightning a group is one training batch: ``batch_idx`` and
``trainer.num_training_batches`` count groups, and a callback's ``on_train_batch_start``/``end``
runs once per group (it sees the list of batches and the group's mean loss). The per-step hooks
that manual optimization calls (``on_before_backward``, ``on_after_backward``,
``on_before_optimizer_step``) run at every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from lit_mnist.errors import ConfigError


def group_size(requested: int, steps_per_epoch: int, *step_counts: int | None) -> int:
    """The largest divisor of ``requested`` that divides the steps per epoch and every given step count.

    Lightning checks step-counted settings (``log_every_n_steps``, ``max_steps``, a checkpoint's
    ``every_n_train_steps``) after each training batch, so with groups of ``K`` steps they fall
    where they would with one step per batch only if ``K`` divides them. ``None`` and values below
    1 (a setting that is off) are ignored.
    """
    return math.gcd(requested, steps_per_epoch, *(count for count in step_counts if count and count > 0))


@dataclass(frozen=True)
class StepGroupPlan:
    """The group size a run uses and why, for the one line a run prints at its start.

    Attributes:
        size: Optimizer steps per training batch (1: step groups are off).
        requested: The size asked for (``--steps-per-batch``).
        reason: Why ``size`` is smaller than ``requested``: the flag that rules groups out, or the
            step counts that lowered the size (a size divides them all).
        ruled_out: ``reason`` names a flag that rules groups out, rather than step counts.
    """

    size: int
    requested: int
    reason: str = ""
    ruled_out: bool = False

    def notice(self) -> str:
        if self.size > 1:
            lowered = f" (lowered from {self.requested}: {self.reason})" if self.size < self.requested else ""
            return (
                f"Step groups: on, {self.size} optimizer steps per Lightning batch{lowered}: the same steps and "
                "weights as one step per batch, less overhead; --steps-per-batch 1 turns them off."
            )
        if self.requested == 1:
            return "Step groups: off (one optimizer step per Lightning batch)."
        why = self.reason if self.ruled_out else f"no group size above 1 divides {self.reason}"
        return f"Step groups: off, one optimizer step per Lightning batch ({why})."


class OptimizerStepAxis(Logger):
    """A logger base that writes values logged during a run with step groups at their optimizer step.

    Lightning passes its logging step, which counts training batches, to ``log_metrics``; with
    groups of ``K`` steps a batch stands for ``K`` optimizer steps. Every ``step`` given to a bound
    logger is read as such a count: code that logs straight to the logger during a run with step
    groups should use ``pl_module.log`` instead, or pass Lightning's count, not ``global_step``. Once a :class:`StepGroups`
    callback has bound the logger to the trainer, a value logged after a group's steps (the
    training step's values, validation, the epoch's metrics) is written at the group's last step,
    and one logged before them (a learning-rate monitor at the batch's start) at its first: where
    one step per batch writes them. Unbound, it changes nothing. Mix it in before a logger class::

        class StepTensorBoardLogger(OptimizerStepAxis, TensorBoardLogger): ...
    """

    _bound: tuple[L.Trainer, int] | None = None

    def bind(self, trainer: L.Trainer | None, steps_per_batch: int) -> None:
        """Map logging steps for ``trainer``'s run with groups of ``steps_per_batch`` (``None``: unbind)."""
        self._bound = (trainer, steps_per_batch) if trainer is not None and steps_per_batch > 1 else None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and self._bound is not None:
            trainer, size = self._bound
            first = step * size
            # During fit, the optimizer steps taken beyond `first` are the batch's own: logged after them.
            after = trainer.state.fn == TrainerFn.FITTING and trainer.global_step > first
            step = first + size - 1 if after else first
        super().log_metrics(metrics, step)  # type: ignore[safe-super,arg-type]


class StepGroups(L.Callback):
    """Binds the run's :class:`OptimizerStepAxis` loggers to optimizer steps; checks the module's group size.

    Args:
        steps_per_batch: The group size of the run (the datamodule's and the module's).
    """

    def __init__(self, steps_per_batch: int) -> None:
        if steps_per_batch < 1:
            raise ConfigError("steps_per_batch", f"must be >= 1, got {steps_per_batch}")
        self.steps_per_batch = steps_per_batch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        size = getattr(pl_module, "steps_per_batch", 1)
        if stage == "fit" and size != self.steps_per_batch:  # testing any module is fine
            raise ConfigError(
                "steps_per_batch",
                f"is {size} in {type(pl_module).__name__} and {self.steps_per_batch} in StepGroups: give the "
                "datamodule, the module and StepGroups the same steps_per_batch",
            )
        for logger in trainer.loggers:
            if isinstance(logger, OptimizerStepAxis):
                logger.bind(trainer, self.steps_per_batch)
            elif self.steps_per_batch > 1:
                rank_zero_warn(
                    f"{type(logger).__name__} writes values at Lightning's batch count, which step groups of "
                    f"{self.steps_per_batch} make {self.steps_per_batch}x smaller than the optimizer step; "
                    "mix OptimizerStepAxis into it to write them at the optimizer step"
                )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, OptimizerStepAxis):
                logger.bind(None, 1)


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, counting optimizer steps instead of training batches.

    With step groups of ``steps_per_batch``, a training batch is that many optimizer steps: the bar
    goes to the epoch's steps (860 at batch 64 on MNIST's 55,000 training images) and its rate is
    in steps per second. With ``steps_per_batch=1`` it is ``TQDMProgressBar``.

    Args:
        steps_per_batch: The group size of the run.
        refresh_rate: Redraw every this many optimizer steps (and at an epoch's end).
        **kwargs: The other arguments of ``TQDMProgressBar``.
    """

    def __init__(self, steps_per_batch: int = 1, refresh_rate: int = 1, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.steps_per_batch = steps_per_batch

    @property
    def total_train_batches(self) -> int | float:
        return super().total_train_batches * self.steps_per_batch

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        size = self.steps_per_batch
        total = bar.total if bar.total is not None else math.inf
        done = min((batch_idx + 1) * size, total)
        crossed = done // self.refresh_rate > (batch_idx * size) // self.refresh_rate
        if self.is_enabled and (crossed or done == total):
            if not bar.disable:
                bar.n = done
                bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
