"""The LightningModule: network, loss, metrics, optimizer and LR scheduler from plain hyperparameters.

Every constructor argument is a plain number, string or list, and all of them are saved with
``save_hyperparameters``, so ``MNISTClassifier.load_from_checkpoint(path, weights_only=True)``
rebuilds the trained model with no other argument. The module knows nothing of files or flags.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_mnist.errors import ConfigError
from lit_mnist.networks import CNN, MLP

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
MODELS = ("mlp", "cnn")


class MNISTClassifier(L.LightningModule):
    """Image classifier for the MNIST family, trained with cross-entropy.

    To change the network, override :meth:`build_network`; to change the optimizer or schedule,
    override :meth:`configure_optimizers`. Number of classes and input shape come from the
    hyperparameters (the CLI takes them from the datamodule).

    Args:
        model: ``"mlp"`` (the classic 784-128-64-10 network) or ``"cnn"``.
        hidden_sizes: Hidden layer widths of the MLP.
        dropout: Dropout probability (0 reproduces the classic network).
        num_classes: Number of classes.
        input_shape: ``(channels, height, width)`` of one image.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` or ``"rmsprop"``.
        lr: Learning rate (the peak rate for ``onecycle``).
        momentum: Momentum of SGD and RMSprop.
        nesterov: Nesterov momentum for SGD.
        weight_decay: Weight decay (L2 for SGD/Adam/RMSprop, decoupled for AdamW).
        scheduler: ``"none"``, ``"step"`` (per epoch), ``"cosine"`` or ``"onecycle"`` (per step).
        step_size: Epochs between decays of the ``step`` scheduler.
        gamma: Decay factor of the ``step`` scheduler.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
    """

    def __init__(
        self,
        model: str = "mlp",
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        step_size: int = 5,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_choice("model", model, MODELS)
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("scheduler", scheduler, SCHEDULERS)
        if not lr > 0:
            raise ConfigError("lr", f"must be > 0, got {lr}")
        if momentum < 0:
            raise ConfigError("momentum", f"must be >= 0, got {momentum}")
        if nesterov and (optimizer != "sgd" or momentum <= 0):
            raise ConfigError("nesterov", "needs --optimizer sgd and --momentum > 0")
        if weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
        if step_size < 1:
            raise ConfigError("step_size", f"must be >= 1, got {step_size}")
        if not 0 < gamma <= 1:
            raise ConfigError("gamma", f"must be in (0, 1], got {gamma}")
        if not 0 <= label_smoothing < 1:
            raise ConfigError("label_smoothing", f"must be in [0, 1), got {label_smoothing}")
        # Plain lists, not tuples: hparams.yaml and weights_only loading stay simple.
        # save_hyperparameters reads the current values of the arguments from this frame.
        hidden_sizes = [int(h) for h in hidden_sizes]
        input_shape = [int(d) for d in input_shape]
        self.save_hyperparameters()

        self.net = self.build_network()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.example_input_array = torch.zeros(1, *input_shape)

        # validate_args=False on the hot path: the checks read the labels on the host every step (a
        # device sync on a GPU); the loss already refuses labels outside [0, num_classes).
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()

    # Step groups (see `automatic_optimization`): the trainer the decision was made for, and the decision.
    _groups_for: Any = None
    _groups: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` around every hook it calls, about 50 times per training
        # step, and ``nn.Module.__setattr__`` first looks the name up among parameters, buffers and
        # submodules. The value is always a string or None, which nn.Module would store as a plain
        # attribute anyway: storing it directly saved ~0.09 s of a ~1.9 s epoch (A/B in one process,
        # 2-core CPU, batch 64).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ step groups
    @property
    def trains_step_groups(self) -> bool:
        """Whether this module can take several optimizer steps per training batch (step groups).

        True unless a subclass overrides :meth:`training_step` (its batches stay one step each), sets
        ``automatic_optimization = False`` itself, or overrides a hook that only Lightning's automatic
        optimization calls (``optimizer_step``, e.g. a learning-rate warm-up; ``optimizer_zero_grad``,
        ``on_before_zero_grad``, ``configure_gradient_clipping``, ``lr_scheduler_step``).
        """
        return (
            not is_overridden("training_step", self, MNISTClassifier)
            and self._automatic_optimization
            and not any(is_overridden(hook, self, L.LightningModule) for hook in AUTOMATIC_ONLY_HOOKS)
        )

    def __getstate__(self) -> dict[str, Any]:
        # Like Lightning's own `_trainer`: a pickled or deep-copied module holds no trainer.
        state = super().__getstate__()
        state.pop("_groups_for", None)
        state.pop("_groups", None)
        return state

    @property
    def automatic_optimization(self) -> bool:
        """False while fitting with step groups: the datamodule's training batches hold
        ``steps_per_batch`` batches of ``batch_size`` and :meth:`training_step` steps through them
        (see ``MNISTDataModule.steps_per_batch``). Lightning's automatic optimization otherwise.

        Lightning reads this several times per step, so the decision is made once per trainer.
        """
        trainer = self._trainer
        if trainer is not self._groups_for:
            datamodule = getattr(trainer, "datamodule", None)  # the decision is the datamodule's
            groups = getattr(datamodule, "groups_steps", None)
            object.__setattr__(self, "_groups", bool(callable(groups) and groups()))
            object.__setattr__(self, "_groups_for", trainer)
        return self._automatic_optimization and not self._groups

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Carry the optimizer step count across a change between step groups and one step per batch.

        Lightning keeps ``global_step`` in the progress of the optimization loop in use (automatic or
        manual), so a run resumed in the other mode (``--steps-per-batch 1``, clipping, ...) would
        restart its step count at 0. The count is copied to the loop this fit uses (in place: Lightning
        restores the loops from this dict afterwards).
        """
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        automatic = fit_loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
        manual = fit_loop.get("epoch_loop.manual_optimization.optim_step_progress")
        if not automatic.get("step") or not manual or self._trainer is None:
            return
        source, target = (
            (automatic["step"], manual) if not self.automatic_optimization else (manual, automatic["step"])
        )
        if target["total"]["completed"] == 0 and source["total"]["completed"] > 0:
            for part in ("total", "current"):
                target[part] = {"ready": source[part]["completed"], "completed": source[part]["completed"]}

    def _training_group(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The optimizer steps of a group of batches, in order: what one step per batch would do.

        The same forward, loss, ``zero_grad``, backward, optimizer and scheduler steps as Lightning's
        automatic optimization, with ``manual_backward`` (precision, DDP gradient averaging) and the
        LightningOptimizer (``global_step``), per batch of the datamodule's ``batch_size``.
        """
        trainer: Any = self.trainer
        size = int(trainer.datamodule.batch_size)
        images, targets = batch
        # normally done by MNISTDataModule.on_before_batch_transfer, before the callbacks see the batch
        count_step_group(trainer, math.ceil(targets.shape[0] / size))
        optimizer: Any = self.optimizers()
        per_step = [
            c for c in trainer.lr_scheduler_configs if c.interval == "step" and not c.reduce_on_plateau
        ]
        progress = _plain_step_progress(trainer, self)
        losses, outputs = [], []
        for x, y in zip(images.split(size), targets.split(size), strict=True):
            logits = self(x)
            loss = self.criterion(logits, y)
            outputs.append(logits.detach())
            losses.append(loss.detach())
            optimizer.zero_grad()
            if progress is None:
                self.manual_backward(loss)
                optimizer.step()
            else:  # what the two calls above come to when none of their hooks does anything
                loss.backward()
                progress.increment_ready()
                optimizer.optimizer.step()
                progress.increment_completed()
            if per_step:
                _step_schedulers(per_step, trainer.global_step)
        # One metric update per group, from the group's top-1 predictions: the same count as an update
        # per step, and torchmetrics' update costs ~0.15 ms on a CPU, a tenth of a step at batch 64.
        self.train_acc.update(torch.cat(outputs).argmax(dim=-1), targets)
        if self._logs_this_step():  # the last step's loss, as one step per batch logs it
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch or progress.current.ready == trainer.num_training_batches:
            per_epoch = [
                c for c in trainer.lr_scheduler_configs if c.interval == "epoch" and not c.reduce_on_plateau
            ]
            _step_schedulers(per_epoch, trainer.current_epoch + 1)
        # the mean loss over the group's samples: what callbacks (NaN guard, curves) read per batch
        # (every step has `size` samples but perhaps the last; no host-to-device copy for the weights)
        total = torch.stack(losses).sum() * size + losses[-1] * (len(outputs[-1]) - size)
        return total / targets.shape[0]

    def _total_steps(self) -> int:
        """Optimizer steps of the whole fit (the length of the cosine and one-cycle schedules)."""
        trainer: Any = self.trainer
        total = trainer.estimated_stepping_batches  # in training batches; sets up the training data
        if not self.automatic_optimization:  # step groups: each batch holds train_steps_per_batch steps
            if trainer.max_epochs not in (None, -1):
                total = (
                    trainer.num_training_batches
                    * trainer.datamodule.train_steps_per_batch
                    * trainer.max_epochs
                )
            if trainer.max_steps != -1:
                total = min(total, trainer.max_steps)
        return max(int(total), 1)

    def build_network(self) -> nn.Module:
        """Return the network that maps images ``(N, C, H, W)`` to logits ``(N, num_classes)``.

        Override this in a subclass to train another architecture with the same loop.
        """
        hp: Any = self.hparams
        if hp.model == "cnn":
            return CNN(input_shape=hp.input_shape, num_classes=hp.num_classes, dropout=hp.dropout)
        return MLP(
            input_shape=hp.input_shape,
            hidden_sizes=hp.hidden_sizes,
            num_classes=hp.num_classes,
            dropout=hp.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of normalised images (cast to the weights' dtype, e.g. bf16-true)."""
        return self.net(x.to(self.dtype))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Return the loss; ``train/loss`` is logged on the steps the logger writes (lean: see below).

        Lean on purpose (issue 3's profile): ``self.log`` costs about 0.8 ms per call on a CPU, as much
        as the whole forward and backward of a batch of 64, so ``train/loss`` is logged only on the
        steps the logger writes anyway (every ``log_every_n_steps``: the same points in TensorBoard)
        and train accuracy is only accumulated here (``update``, no per-batch ``compute``) and logged
        once per epoch in :meth:`on_train_epoch_end`.
        """
        if not self.automatic_optimization:
            return self._training_group(batch)
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_acc.update(logits.detach(), y)
        if self._logs_this_step():
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _logs_this_step(self) -> bool:
        """True on the training steps whose logged values reach the logger (and at the end of a run)."""
        trainer = self._trainer
        # Lightning's own test of whether this step's logged values are written (every log_every_n_steps)
        return trainer is not None and bool(trainer._logger_connector.should_update_logs)

    def on_train_epoch_end(self) -> None:
        # compute() reduces across DDP ranks; reset for the next epoch. An epoch may have no step in
        # this process: a run resumed from a checkpoint saved after the epoch's last batch.
        if self.train_acc.update_count > 0:
            self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def on_train_start(self) -> None:
        # The sanity check ran validation before training: that accuracy is not a result.
        self.val_acc_best.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Update the validation metrics; return ``{"preds": class indices}`` for callbacks (images, confusion)."""
        x, y = batch
        logits = self(x)
        self.val_loss.update(self.criterion(logits, y), weight=y.numel())
        self.val_acc.update(logits, y)
        return {"preds": logits.detach().argmax(dim=-1)}

    def on_validation_epoch_end(self) -> None:
        # The metric objects are logged once per epoch, here, not in every validation_step: Lightning
        # moves a logged Metric to the value's device at each self.log call (~0.3 ms on a CPU, as
        # much as the forward of a batch); it computes (synced across DDP ranks) and resets them
        # after this hook, as when they are logged per step with on_epoch=True.
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Update the test metrics; return ``{"preds": class indices}`` for callbacks."""
        x, y = batch
        logits = self(x)
        self.test_loss.update(self.criterion(logits, y), weight=y.numel())
        self.test_acc.update(logits, y)
        return {"preds": logits.detach().argmax(dim=-1)}

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)  # once, as in validation
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Return class probabilities ``(N, num_classes)`` for a batch of images (labels ignored)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        params = self.parameters()
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.RMSprop(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )

        if hp.scheduler == "none":
            return optimizer
        scheduler: torch.optim.lr_scheduler.LRScheduler
        interval = "step"
        if hp.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.step_size, gamma=hp.gamma)
            interval = "epoch"
        elif hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self._total_steps())
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=self._total_steps()
            )
        config: OptimizerLRSchedulerConfig = {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }
        return config


def _step_schedulers(configs: Sequence[Any], count: int) -> None:
    """What Lightning's loop does after a step (count: global_step) or an epoch (count: epochs done)."""
    for config in configs:
        if count % config.frequency == 0:
            config.scheduler.step()


#: LightningModule hooks that Lightning's automatic optimization calls at every step and manual
#: optimization (step groups) does not
AUTOMATIC_ONLY_HOOKS = (
    "optimizer_step",
    "optimizer_zero_grad",
    "on_before_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
)

#: the hooks ``manual_backward`` and ``LightningOptimizer.step`` call on callbacks and the module
_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def _plain_step_progress(trainer: Any, module: L.LightningModule) -> Any:
    """Lightning's optimizer-step progress if a step group may step without Lightning's per-step hooks, else None.

    With one device, full precision, no profiler and no callback or module code in the hooks that
    ``manual_backward`` and ``LightningOptimizer.step`` call (``on_before_backward``, ``on_after_backward``,
    ``on_before_optimizer_step``, ``backward``), those two calls come to ``loss.backward()``, the
    optimizer's ``step()`` and the step count (``global_step``); their ~20 hook dispatches cost about
    0.1 ms per step on a CPU, a tenth of a step at batch 64. Anything else (DDP's gradient averaging,
    a precision plugin's scaling, a callback reading gradients) takes Lightning's path.

    Called once per group, so the hooks are compared on the classes directly: Lightning's
    ``is_overridden`` costs ~4.5 us a call here, ~40 calls per group.
    """
    if (
        type(trainer.strategy) is not SingleDeviceStrategy
        or type(trainer.precision_plugin) is not Precision
        or type(trainer.profiler) is not PassThroughProfiler
        or type(module).backward is not L.LightningModule.backward
    ):
        return None
    for name in _STEP_HOOKS:
        if getattr(type(module), name) is not getattr(L.LightningModule, name):
            return None
        if any(getattr(type(cb), name) is not getattr(L.Callback, name) for cb in trainer.callbacks):
            return None
    loop = getattr(trainer.fit_loop.epoch_loop, "manual_optimization", None)
    return getattr(loop, "optim_step_progress", None)


def count_step_group(trainer: L.Trainer, steps: int) -> None:
    """Move Lightning's logging step to the last optimizer step of a training batch of ``steps`` steps.

    Lightning counts logging steps (``log_every_n_steps``, the x-axis of logged values) in training
    batches and adds 1 after each. For a batch that holds a group of ``steps`` optimizer steps this
    adds the other ``steps - 1`` before the batch, so that every value logged during it (by the
    module, a learning-rate monitor or any callback) gets the step and the cadence it has with one
    optimizer step per batch: the group's last step. Called once per batch; a second call changes
    nothing (the count runs ahead of ``global_step`` only within a group).
    """
    loop = trainer.fit_loop.epoch_loop
    if steps > 1 and loop._batches_that_stepped == trainer.global_step:
        loop._batches_that_stepped += steps - 1


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}; got {value!r}")
