"""Step groups: the fast path, several optimizer steps per training batch that Lightning sees.

Lightning does a fixed amount of work per training batch (hooks, progress tracking, logging
checks), comparable to a whole optimizer step of a small network at a small batch size. With
step groups the datamodule hands Lightning a list of ``K`` batches at once and the module takes
their ``K`` optimizer steps in one ``training_step`` (Lightning's manual optimization), so that
work is paid once per ``K`` steps. The samples, their order, the steps and the weights are those
of one step per batch.

It is a choice made once, before the Trainer exists, by the code that knows every setting
(:mod:`lit_mnist.plan` for a run; see :func:`group_size`), and everything it sets must agree:

* ``MNISTDataModule(steps_per_batch=K)`` yields the groups and ``MNISTClassifier(steps_per_batch=K)``
  steps through them with :func:`take_group_steps`; :func:`check_steps_per_batch` is the one check
  of the size that the module, the datamodule, the loader and :class:`StepGroups` all call;
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

The module's side lives here too, so that the module's plain path stays plain: the steps of a
group (:func:`take_group_steps`), the shape of a training batch (:func:`check_batch`), what a
group cannot do (:func:`check_module_hooks` when the module is built, :func:`check_fit` when fit
starts), the length of a grouped run (:func:`group_total_steps`) and the refusal to resume with
another size (:func:`resume_mismatch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import Tensor

from lit_mnist.errors import ConfigError

__all__ = [
    "CHECKPOINT_KEY",
    "NOT_IN_STEP_GROUPS",
    "GroupSteps",
    "OptimizerStepAxis",
    "StepGroupPlan",
    "StepGroups",
    "StepProgressBar",
    "check_batch",
    "check_fit",
    "check_module_hooks",
    "check_steps_per_batch",
    "group_size",
    "group_total_steps",
    "resume_mismatch",
    "take_group_steps",
]

#: Module hooks that Lightning calls only with automatic optimization and a step group cannot call
#: in their place (the others, ``optimizer_step``, ``optimizer_zero_grad``, ``on_before_zero_grad``
#: and ``lr_scheduler_step``, are called by :func:`take_group_steps` at every step).
NOT_IN_STEP_GROUPS = ("training_step", "configure_gradient_clipping")

#: The key of the checkpoint entry that records how the run took its optimizer steps.
CHECKPOINT_KEY = "lit_mnist"


def group_size(requested: int, steps_per_epoch: int, *step_counts: int | None) -> int:
    """The largest divisor of ``requested`` that divides the steps per epoch and every given step count.

    Lightning checks step-counted settings (``log_every_n_steps``, ``max_steps``, a checkpoint's
    ``every_n_train_steps``) after each training batch, so with groups of ``K`` steps they fall
    where they would with one step per batch only if ``K`` divides them. ``None`` and values below
    1 (a setting that is off) are ignored.
    """
    return math.gcd(requested, steps_per_epoch, *(count for count in step_counts if count and count > 0))


def check_steps_per_batch(value: int, loader: str | None = None, batches_per_epoch: int | None = None) -> int:
    """Return ``value`` if it is a valid group size; the one check of ``steps_per_batch`` everywhere.

    Args:
        value: The group size (optimizer steps per training batch).
        loader: The datamodule's loader, when it is known: step groups come from the in-memory loader.
        batches_per_epoch: The training batches of an epoch in this process, when they are known:
            the group size must divide them, so that every group holds as many steps and the steps
            Lightning counts stay those of one step per batch.

    Raises:
        ConfigError: naming ``steps_per_batch``, what is wrong and what fits.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("steps_per_batch", f"must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ConfigError("steps_per_batch", f"must be >= 1, got {value}")
    if value > 1 and loader is not None and loader != "memory":
        raise ConfigError(
            "steps_per_batch",
            f"must be 1 with --loader {loader} (step groups come from the in-memory loader); got {value}",
        )
    if value > 1 and batches_per_epoch is not None and batches_per_epoch % value:
        raise ConfigError(
            "steps_per_batch",
            f"must divide the {batches_per_epoch} training batches per epoch (per process), so that every "
            f"group holds as many steps and the steps Lightning counts stay those of one step per batch; "
            f"got {value} (lit_mnist.groups.group_size picks one)",
        )
    return value


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
        self.steps_per_batch = check_steps_per_batch(steps_per_batch)

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


# --------------------------------------------------------------------------- the module's side
def check_batch(batch: Any, steps_per_batch: int) -> Any:
    """Return the training batch if its shape is the one ``steps_per_batch`` promises.

    With 1 a batch is an ``(images, targets)`` pair; with more it is a step group, a non-empty list
    of such pairs. A mismatch means the module and the datamodule were given different sizes.

    Raises:
        ConfigError: naming ``steps_per_batch`` and the fix.
    """
    pair = isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor)
    if steps_per_batch == 1 and not pair:
        raise ConfigError(
            "steps_per_batch",
            "is 1 but the training batch is not an (images, targets) pair: a step group comes from a "
            "datamodule with steps_per_batch > 1; give the module and the datamodule the same steps_per_batch",
        )
    if steps_per_batch > 1 and (not batch or isinstance(batch[0], Tensor)):
        raise ConfigError(
            "steps_per_batch",
            f"is {steps_per_batch} but the training batch is not a step group (a list of (images, targets) "
            "batches): give the datamodule the same steps_per_batch as the module",
        )
    return batch


def check_module_hooks(module: L.LightningModule, steps_per_batch: int, stepper: type) -> None:
    """Refuse step groups for a module that overrides a hook of :data:`NOT_IN_STEP_GROUPS`.

    ``stepper`` is the class whose ``training_step`` takes the groups' steps: an override of it
    would not.
    """
    if steps_per_batch == 1:
        return
    for hook in NOT_IN_STEP_GROUPS:
        if is_overridden(hook, module, stepper if hook == "training_step" else L.LightningModule):
            why = (
                f"step groups take their steps in {stepper.__name__}.training_group instead"
                if hook == "training_step"
                else "Lightning calls it only with automatic optimization (one step per batch)"
            )
            raise ConfigError(
                "steps_per_batch",
                f"must be 1 for {type(module).__name__}, which overrides {hook}: {why}; got {steps_per_batch}",
            )


def check_fit(trainer: L.Trainer, steps_per_batch: int) -> None:
    """At the start of ``fit``: refuse what a step group cannot do (several optimizers, a scheduler that
    monitors a metric, a callback's ``on_before_zero_grad``)."""
    if len(trainer.optimizers) != 1:
        raise ConfigError(
            "steps_per_batch",
            f"must be 1 when configure_optimizers returns {len(trainer.optimizers)} optimizers "
            f"(a step group steps one); got {steps_per_batch}",
        )
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError(
                "steps_per_batch",
                "must be 1 with a ReduceLROnPlateau scheduler: step groups use manual optimization, in which "
                f"Lightning drops the scheduler's monitor; got {steps_per_batch}",
            )
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if is_overridden("on_before_zero_grad", callback, L.Callback):
            raise ConfigError(
                "steps_per_batch",
                f"must be 1 with the callback {type(callback).__name__}: it has on_before_zero_grad, which "
                f"Lightning calls on callbacks only with one step per batch; got {steps_per_batch}",
            )


class GroupSteps(NamedTuple):
    """What :func:`take_group_steps` returns: the group's losses, outputs and targets (detached)."""

    #: The mean loss over the group's samples: what callbacks see as the training batch's loss.
    loss: Tensor
    #: The loss of the group's last step: what one step per batch logs at that step.
    last_loss: Tensor
    #: The outputs and targets of every step, concatenated (for the training metrics).
    outputs: Tensor
    targets: Tensor


def take_group_steps(
    module: L.LightningModule,
    group: Sequence[Sequence[Tensor]],
    batch_idx: int,
    steps_per_batch: int,
    criterion: Callable[[Tensor, Tensor], Tensor],
) -> GroupSteps:
    """Take the optimizer steps of a step group, one per batch, as automatic optimization would.

    For each batch, in order: a closure runs the forward pass and ``criterion``, then
    ``on_before_zero_grad`` and ``optimizer_zero_grad`` (which clears the gradients) and
    ``manual_backward``; the ``optimizer_step`` hook takes the step with that closure (so an
    override, e.g. a learning-rate warm-up, works as with one step per batch); schedulers with
    ``interval="step"`` are stepped through ``lr_scheduler_step`` after each step, those with
    ``interval="epoch"`` after the epoch's last step, each at its ``frequency``. The hooks get the
    step's index within the epoch as ``batch_idx``, as they would with one step per batch, and
    ``trainer.global_step`` counts every optimizer step.
    """
    check_batch(group, steps_per_batch)
    trainer = module.trainer
    optimizer: Any = module.optimizers()
    epoch = trainer.current_epoch
    configs = trainer.lr_scheduler_configs
    first = batch_idx * steps_per_batch  # the index of the group's first step in the epoch
    losses, outputs, sizes = [], [], []
    for offset, (x, y) in enumerate(group):
        step = first + offset
        closure = _StepClosure(module, criterion, x, y, optimizer, epoch, step)
        module.optimizer_step(epoch, step, optimizer, closure)
        losses.append(closure.loss)
        outputs.append(closure.outputs)
        sizes.append(len(y))
        _step_schedulers(module, configs, "step", step + 1)
    if batch_idx + 1 == trainer.num_training_batches:  # the epoch's last group
        _step_schedulers(module, configs, "epoch", epoch + 1)
    stacked = torch.stack(losses)
    if len(set(sizes)) == 1:
        mean = stacked.mean()
    else:
        weights = torch.tensor(sizes, dtype=stacked.dtype).to(stacked.device, non_blocking=True)
        mean = (stacked * weights).sum() / sum(sizes)
    return GroupSteps(mean, losses[-1], torch.cat(outputs), torch.cat([y for _, y in group]))


def _step_schedulers(
    module: L.LightningModule, configs: Sequence[LRSchedulerConfig], interval: str, count: int
) -> None:
    """Step the schedulers of ``interval`` whose frequency divides ``count``, as Lightning's loop does.

    ``count`` is the step's number within the epoch (from 1) or the number of epochs done.
    """
    for config in configs:
        if config.interval == interval and count % config.frequency == 0:
            module.lr_scheduler_step(config.scheduler, None)


class _StepClosure:
    """One step of a group as an optimizer closure: forward, loss, the zero-grad hooks, backward.

    After it has run, ``loss`` and ``outputs`` hold the step's loss and outputs (detached).
    """

    def __init__(
        self,
        module: L.LightningModule,
        criterion: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        optimizer: Any,
        epoch: int,
        step: int,
    ) -> None:
        self.module, self.criterion, self.x, self.y = module, criterion, x, y
        self.optimizer, self.epoch, self.step = optimizer, epoch, step
        self.loss = self.outputs = torch.empty(0)

    def __call__(self) -> Tensor:
        module = self.module
        outputs = module(self.x)
        loss = self.criterion(outputs, self.y)
        self.loss, self.outputs = loss.detach(), outputs.detach()
        module.on_before_zero_grad(self.optimizer)
        module.optimizer_zero_grad(self.epoch, self.step, self.optimizer)
        module.manual_backward(loss)
        return loss


def group_total_steps(trainer: L.Trainer, steps_per_batch: int) -> float:
    """Optimizer steps of the whole fit with groups of ``steps_per_batch`` (``inf`` without an end).

    Lightning's ``estimated_stepping_batches`` counts training batches, and a step group holds
    ``steps_per_batch`` steps. Call it after ``estimated_stepping_batches``, which sets up the
    training data.
    """
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    total = trainer.num_training_batches * steps_per_batch * epochs
    if trainer.max_steps != -1:
        total = min(total, trainer.max_steps)
    return total


def resume_mismatch(checkpoint: Mapping[str, Any], steps_per_batch: int) -> str | None:
    """Why a run with ``steps_per_batch`` cannot resume from ``checkpoint``, or ``None`` if it can.

    Lightning counts the optimizer steps of automatic and manual optimization apart, and its
    logging step in training batches: a run resumed with another group size would restart its
    step count, or log at other steps. A checkpoint that does not say was written with 1.
    """
    saved = checkpoint.get(CHECKPOINT_KEY, {}).get("steps_per_batch", 1)
    if saved == steps_per_batch:
        return None
    return (
        f"was written by a run with {saved} optimizer step(s) per training batch and this run takes "
        f"{steps_per_batch}: Lightning would restart or shift its step count. Resume with the settings "
        "the run was started with"
    )
