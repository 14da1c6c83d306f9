"""The LightningModule: network, loss, metrics, optimizer and LR scheduler from plain hyperparameters.

Every hyperparameter is a plain number, string or list, saved with ``save_hyperparameters``, so
``MNISTClassifier.load_from_checkpoint(path, weights_only=True)`` rebuilds the trained model with no
other argument. The module knows nothing of files, flags or the datamodule.

With the default ``steps_per_batch=1`` it is an ordinary LightningModule: one optimizer step per
training batch, Lightning's automatic optimization, every hook, scheduler and Trainer flag as
Lightning's documentation describes. ``steps_per_batch=K > 1`` is the fast path, kept in
:mod:`lit_mnist.groups`: each training batch is a *step group* of ``K`` batches and
:meth:`MNISTClassifier.training_group` takes their ``K`` optimizer steps with Lightning's manual
optimization (:func:`lit_mnist.groups.take_group_steps`), so Lightning's per-batch work is paid once
per ``K`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lit_mnist.errors import ConfigError
from lit_mnist.groups import (
    CHECKPOINT_KEY,
    check_batch,
    check_fit,
    check_module_hooks,
    check_steps_per_batch,
    group_total_steps,
    resume_mismatch,
    take_group_steps,
)
from lit_mnist.networks import CNN, MLP
from lit_mnist.ranges import check_optimizer_settings

__all__ = [
    "MODELS", "OPTIMIZERS", "SCHEDULERS", "Batch", "CnnPadding", "MNISTClassifier", "Model", "Optimizer", "Scheduler",
]  # fmt: skip

Model = Literal["mlp", "cnn"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Scheduler = Literal["none", "step", "cosine", "onecycle"]
CnnPadding = Literal["same", "valid"]
MODELS: tuple[str, ...] = get_args(Model)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)

Batch = Sequence[Tensor]  # (images, targets)


class MNISTClassifier(L.LightningModule):
    """Image classifier for the MNIST family, trained with cross-entropy.

    To change the network, override :meth:`build_network`; to change the optimizer or schedule,
    override :meth:`configure_optimizers`. Number of classes and input shape come from the
    hyperparameters (the command line takes them from the datamodule).

    The task is apart from the loop: :attr:`num_outputs`, :meth:`build_loss`, :meth:`build_metrics`,
    :meth:`output_activation` (what ``predict_step`` returns) and :meth:`predicted_classes` (what the
    monitoring callbacks see). Overriding them makes another head (a regression, a multi-label
    classifier) with the same training, validation, test and predict steps, step groups included.

    Order in a subclass: ``__init__`` ends by calling :meth:`build_network`, :meth:`build_loss` and
    :meth:`build_metrics`, so a new module has its network and parameters at once (a forward pass,
    ``configure_optimizers`` and ``state_dict`` work without a Trainer, and a seeded run draws the
    same initial weights on every device). What an override reads must exist by then: a setting of
    the subclass's own is best an argument of its ``__init__``, read as ``self.hparams.<name>``
    (``save_hyperparameters`` records it with the others, so ``load_from_checkpoint`` restores it);
    a plain attribute must be set *before* ``super().__init__(...)``. An attribute set after it is
    missing when the network is built, and the ``AttributeError`` says so::

        class WideMLP(MNISTClassifier):
            def __init__(self, width: int = 256, **kwargs):
                super().__init__(**kwargs)  # records width in self.hparams, then builds the network

            def build_network(self):
                return nn.Sequential(nn.Flatten(), nn.Linear(784, self.hparams.width), nn.ReLU(),
                                     nn.Linear(self.hparams.width, self.hparams.num_classes))

    Args:
        model: ``"mlp"`` (the classic 784-128-64-10 network) or ``"cnn"``.
        hidden_sizes: Hidden layer widths of the MLP.
        cnn_channels: Output channels of the CNN's convolutions, one per conv block.
        cnn_kernel_sizes: Kernel size of each of the CNN's convolutions (odd); one size: every convolution's.
        cnn_padding: ``"same"`` (the CNN's blocks halve the image) or ``"valid"`` (no padding: less
            computation).
        cnn_hidden_size: Width of the CNN's hidden fully connected layer.
        channels_last: Keep the built-in CNN's convolution weights in the channels-last memory format
            (faster convolutions on the CPU: ``scripts/benchmark.py --channels-last``). The values and the
            state_dict are the same either way. A network of :meth:`build_network`'s override is left
            as it is built.
        dropout: Dropout probability (0 reproduces the classic network).
        num_classes: Number of classes.
        input_shape: ``(channels, height, width)`` of one image.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` or ``"rmsprop"``.
        lr: Learning rate (the peak rate for ``onecycle``).
        momentum: Momentum of SGD and RMSprop.
        betas: Adam's and AdamW's ``(beta1, beta2)``: decay rates of the gradient's running mean and of its square's.
        nesterov: Nesterov momentum for SGD.
        weight_decay: Weight decay (L2 for SGD/Adam/RMSprop, decoupled for AdamW).
        scheduler: ``"none"``, ``"step"`` (per epoch), ``"cosine"`` or ``"onecycle"`` (per step).
        cycle_momentum: With ``onecycle``, cycle the momentum (SGD, RMSprop) or Adam's beta1 inversely to
            the learning rate, between 0.85 and 0.95 (PyTorch's ``OneCycleLR`` default); ``False`` keeps
            ``momentum`` or ``betas`` as given.
        step_size: Epochs between decays of the ``step`` scheduler.
        gamma: Decay factor of the ``step`` scheduler.
        label_smoothing: Label smoothing of the cross-entropy loss, in [0, 1).
        steps_per_batch: Optimizer steps per training batch. 1 (the default): Lightning's automatic
            optimization, one step per batch. ``K > 1``: each training batch must be a step group, a
            list of ``K`` ``(images, targets)`` batches (``MNISTDataModule(steps_per_batch=K)``),
            and :meth:`training_group` takes their steps with manual optimization (see
            :mod:`lit_mnist.groups`; Lightning's Tuner needs 1). Not a hyperparameter: a checkpoint
            loads with 1, whatever the run used.
    """

    def __init__(
        self,
        model: Model = "mlp",
        hidden_sizes: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        optimizer: Optimizer = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        scheduler: Scheduler = "none",
        step_size: int = 5,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        steps_per_batch: int = 1,
        cnn_channels: Sequence[int] = (32, 64),
        cnn_kernel_sizes: Sequence[int] = (3,),
        cnn_padding: CnnPadding = "same",
        cnn_hidden_size: int = 128,
        channels_last: bool = True,
        betas: Sequence[float] = (0.9, 0.999),
        cycle_momentum: bool = True,
    ) -> None:
        super().__init__()
        _check_settings(
            model, optimizer, scheduler, lr, momentum, betas, nesterov, weight_decay, step_size, gamma,
            label_smoothing,
        )  # fmt: skip
        check_module_hooks(self, check_steps_per_batch(steps_per_batch), stepper=MNISTClassifier)
        # Plain lists, not tuples: hparams.yaml and weights_only loading stay simple.
        # save_hyperparameters reads the current values of the arguments from this frame.
        hidden_sizes = [int(h) for h in hidden_sizes]
        input_shape = [int(d) for d in input_shape]
        cnn_channels = [int(c) for c in cnn_channels]
        cnn_kernel_sizes = [int(k) for k in cnn_kernel_sizes]
        betas = [float(b) for b in betas]
        self.save_hyperparameters(ignore=["steps_per_batch"])
        self.steps_per_batch = steps_per_batch
        self.automatic_optimization = steps_per_batch == 1

        try:
            self._build(channels_last)
        except AttributeError as err:
            if getattr(err, "obj", None) is not self or not getattr(err, "name", None):
                raise
            raise AttributeError(
                f"{err}: {type(self).__name__} reads self.{err.name} while MNISTClassifier.__init__ builds the "
                f"network, before it is set. Make {err.name} an argument of {type(self).__name__}.__init__ and "
                f"read self.hparams.{err.name}, or set self.{err.name} before calling super().__init__()"
            ) from err
        self.example_input_array = torch.zeros(1, *input_shape)

    def _build(self, channels_last: bool) -> None:
        """The network, the loss and each stage's metrics, from the overridable ``build_*`` methods."""
        self.net = self.build_network()
        if channels_last and type(self.net) is CNN:
            # Only the 4-d weights change layout; Lightning's moves to a device keep it (preserve_format).
            # Not a network of an override: its forward may flatten with .view(), which needs NCHW.
            self.net.to(memory_format=torch.channels_last)
        self.criterion = self.build_loss()
        # Each stage's metrics, logged as "<stage>/<name>" (train/acc, val/acc, test/acc).
        self.train_metrics = self._metric_collection("train")
        self.val_metrics = self._metric_collection("val")
        self.test_metrics = self._metric_collection("test")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()  # logged as val/acc_best when the metrics hold an "acc"

    def _metric_collection(self, stage: str) -> MetricCollection:
        return MetricCollection(dict(self.build_metrics(stage)), prefix=f"{stage}/", compute_groups=False)

    # ------------------------------------------------------------------ the task
    #: Width of the network's output; ``None``: ``num_classes``. A regression sets 1.
    num_outputs: int | None = None

    def build_loss(self) -> nn.Module:
        """The loss between the network's outputs and a batch's targets: cross-entropy (``label_smoothing``).

        Override it for another task, e.g. ``nn.MSELoss()`` (a regression) or ``nn.BCEWithLogitsLoss()``
        (multi-label). It is ``self.criterion``, used by every step.
        """
        return nn.CrossEntropyLoss(label_smoothing=self.hparams["label_smoothing"])

    def build_metrics(self, stage: str) -> Mapping[str, Metric]:
        """The metrics of ``stage`` (``"train"``, ``"val"``, ``"test"``), by name: logged as ``<stage>/<name>``.

        Each is updated with ``(outputs, targets)`` and computed once per epoch. The default is the
        micro-averaged accuracy, ``acc``; a metric named ``acc`` also gives ``val/acc_best``.
        """
        # validate_args=False on the hot path: the checks read the labels on the host every step (a
        # device sync on a GPU); the loss already refuses labels outside [0, num_classes).
        num_classes = self.hparams["num_classes"]
        if num_classes < 2:
            raise ConfigError(
                "num_classes",
                f"must be >= 2 for a classifier (cross-entropy and accuracy); got {num_classes}. "
                "For one output (a regression), override num_outputs, build_loss and build_metrics",
            )
        return {
            "acc": MulticlassAccuracy(
                num_classes=num_classes, average="micro", validate_args=stage != "train"
            )
        }

    def output_activation(self, outputs: Tensor) -> Tensor:
        """What ``predict_step`` returns for the network's outputs: class probabilities (softmax)."""
        return outputs.softmax(dim=-1)

    def predicted_classes(self, outputs: Tensor) -> Tensor | None:
        """The predicted class indices that validation and test steps return as ``{"preds": ...}`` for the
        monitoring callbacks (images, confusion matrices); ``None`` where outputs are not class scores."""
        return outputs.argmax(dim=-1)

    def build_network(self) -> nn.Module:
        """Return the network that maps images ``(N, C, H, W)`` to outputs ``(N, num_outputs)`` (logits).

        Override this in a subclass to train another architecture with the same loop.
        """
        hp: Any = self.hparams
        outputs = self.num_outputs or hp.num_classes
        if hp.model == "cnn":
            return CNN(
                input_shape=hp.input_shape,
                num_classes=outputs,
                dropout=hp.dropout,
                channels=hp.cnn_channels,
                hidden_size=hp.cnn_hidden_size,
                kernel_sizes=hp.cnn_kernel_sizes,
                padding=hp.cnn_padding,
            )
        return MLP(
            input_shape=hp.input_shape,
            hidden_sizes=hp.hidden_sizes,
            num_classes=outputs,
            dropout=hp.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of normalised images (cast to the weights' dtype, e.g. bf16-true)."""
        return self.net(x.to(self.dtype))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Return the loss of one batch and log it as ``train/loss``; train accuracy is logged per epoch.

        With ``steps_per_batch > 1`` the batch is a step group: see :meth:`training_group`.
        """
        if self.steps_per_batch > 1:
            return self.training_group(batch, batch_idx)
        x, y = check_batch(batch, self.steps_per_batch)
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_metrics.update(logits.detach(), y)
        if self._written(self.trainer.global_step + 1):  # this step's batch, counted from 1
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _written(self, batches: int) -> bool:
        """Whether the logger writes what is logged during the training batch that makes ``batches`` batches.

        ``self.log`` costs a good part of a small step (Lightning moves the logged value's record to
        the device at every call), so ``train/loss`` is logged only when Lightning writes it: every
        ``log_every_n_steps`` training batches, and when the run is stopping. The points in the
        logger are the same; ``trainer.callback_metrics["train/loss"]`` is refreshed at those steps.
        """
        trainer = self.trainer
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # Trainer(log_every_n_steps=...)
        return (bool(every) and batches % every == 0) or trainer.should_stop

    def training_group(self, group: Sequence[Batch], batch_idx: int) -> Tensor:
        """Take the optimizer steps of a step group, one per batch, as automatic optimization would.

        :func:`lit_mnist.groups.take_group_steps` takes the steps, calling the hooks one step per
        batch calls. ``train/loss`` is the loss of the group's last step (what one step per batch
        logs at that step; see :meth:`_written`); train accuracy is updated once per group. Returns
        the mean loss over the group's samples, which callbacks see as this batch's loss.
        """
        steps = take_group_steps(self, group, batch_idx, self.steps_per_batch, self.criterion)
        self.train_metrics.update(steps.outputs, steps.targets)
        if self._written(self.trainer.global_step // self.steps_per_batch):  # groups done, this one included
            self.log("train/loss", steps.last_loss, on_step=True, on_epoch=False, prog_bar=True)
        return steps.loss

    def on_fit_start(self) -> None:
        if self.steps_per_batch > 1:
            check_fit(self.trainer, self.steps_per_batch)

    def on_train_start(self) -> None:
        # The sanity check ran validation before training: that accuracy is not a result.
        self.val_acc_best.reset()

    def on_train_epoch_end(self) -> None:
        # compute() reduces across DDP ranks; reset for the next epoch. An epoch may have no step in
        # this process: a run resumed from a checkpoint saved after the epoch's last batch.
        for name, metric in self.train_metrics.items():
            if metric.update_count > 0:
                # already reduced over the ranks: sync_dist only says so (no warning under DDP)
                self.log(name, metric.compute(), sync_dist=True)
        self.train_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"steps_per_batch": self.steps_per_batch}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume training with another ``steps_per_batch`` (see :func:`lit_mnist.groups.resume_mismatch`).

        Loading weights (testing, ``load_from_checkpoint``) is always fine.
        """
        if self._fitting() and (why := resume_mismatch(checkpoint, self.steps_per_batch)):
            raise ConfigError("steps_per_batch", f"is {self.steps_per_batch}, but the checkpoint {why}")

    def _fitting(self) -> bool:
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer: load_from_checkpoint
            return False
        return trainer is not None and trainer.state.fn == TrainerFn.FITTING

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        # Fresh metric states in this stage's grad mode: after a trainer.validate() (inference mode),
        # states left from it could not be updated in place during fit.
        self.val_loss.reset()
        self.val_metrics.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Update the validation metrics; return ``{"preds": class indices}`` for callbacks (images, confusion)."""
        return self._evaluate(batch, self.val_loss, self.val_metrics)

    def _evaluate(self, batch: Batch, loss: MeanMetric, metrics: MetricCollection) -> dict[str, Tensor]:
        x, y = batch
        outputs = self(x)
        loss.update(self.criterion(outputs, y), weight=len(y))
        metrics.update(outputs, y)
        preds = self.predicted_classes(outputs.detach())
        return {} if preds is None else {"preds": preds}

    def on_validation_epoch_end(self) -> None:
        # The metric objects are logged once per epoch, here, not in every validation_step: Lightning
        # computes (synced across DDP ranks) and resets them after this hook, with the same values as
        # when they are logged per step with on_epoch=True, and without a move of the metric to the
        # device at every self.log call.
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True)
        if "val/acc" in self.val_metrics.keys():  # noqa: SIM118  (keys() holds the prefixed names)
            self.val_acc_best(self.val_metrics["val/acc"].compute())
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_loss.reset()
        self.test_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Update the test metrics; return ``{"preds": class indices}`` for callbacks."""
        return self._evaluate(batch, self.test_loss, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)  # once, as in validation
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)

    def predict_step(self, batch: Tensor | Batch, batch_idx: int) -> Tensor:
        """Return :meth:`output_activation` of a batch of images (labels ignored): class probabilities ``(N, num_classes)``."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.output_activation(self(x))

    # ------------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        params = self.parameters()
        optimizer: torch.optim.Optimizer
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(
                params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(
                params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
            )
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
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.total_steps())
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=self.total_steps(), cycle_momentum=hp.cycle_momentum
            )
        config: OptimizerLRSchedulerConfig = {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }
        return config

    def total_steps(self) -> int:
        """Optimizer steps of the whole fit: the length of the cosine and one-cycle schedules.

        Lightning's ``estimated_stepping_batches`` counts training batches; a step group holds
        ``steps_per_batch`` steps.
        """
        trainer = self.trainer
        total = trainer.estimated_stepping_batches  # sets up the training data, so the counts below exist
        if self.steps_per_batch > 1:
            total = group_total_steps(trainer, self.steps_per_batch)
        if not math.isfinite(total):
            raise ConfigError(
                "scheduler",
                f"{self.hparams['scheduler']} needs the length of the run: set max_epochs or max_steps",
            )
        return max(int(total), 1)


def _check_settings(
    model: str,
    optimizer: str,
    scheduler: str,
    lr: float,
    momentum: float,
    betas: Sequence[float],
    nesterov: bool,
    weight_decay: float,
    step_size: int,
    gamma: float,
    label_smoothing: float,
) -> None:
    """Raise a :class:`ConfigError` naming the first invalid setting of :class:`MNISTClassifier`."""
    _check_choice("model", model, MODELS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("scheduler", scheduler, SCHEDULERS)
    check_optimizer_settings(
        optimizer, lr, momentum, betas, nesterov, weight_decay, step_size, gamma, label_smoothing
    )


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}; got {value!r}")
