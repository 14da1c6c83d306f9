"""``RunConfig``: every setting of a run, with its default, type, choices, range and a one-line reason.

One frozen dataclass is the whole run: train.py's flags, ``--help``, YAML config files,
``--print-config``, recipes, the sweep space and the run's saved ``config.yaml`` all derive from its
fields (a field's name is its flag's, with ``_`` for ``-``). An invalid value raises
:class:`~lit_mnist.errors.ConfigError` naming the field at construction; a changed copy is
``dataclasses.replace(config, lr=0.1)``, never an edit in place.

This module imports nothing heavy: building a config needs neither torch nor Lightning. What depends
on the machine (a CUDA GPU, a launcher, an installed logger) is checked when the run starts
(:func:`lit_mnist.plan.check_machine`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lit_mnist.errors import ConfigError
from lit_mnist.ranges import (
    check_augmentation,
    check_count_or_fraction,
    check_limits,
    check_optimizer_settings,
)

__all__ = [
    "BATCH_SIZE_AUTO_MAX",
    "GROUPS",
    "RunConfig",
    "parse_devices",
]

Dataset = Literal["mnist", "fashion-mnist", "kmnist", "folder"]
Loader = Literal["memory", "torchvision"]
Color = Literal["grayscale", "rgb"]
Model = Literal["mlp", "cnn"]
CnnPadding = Literal["same", "valid"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Scheduler = Literal["none", "step", "cosine", "onecycle"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Precision = Literal[
    "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64"
]
LoggerName = Literal["tensorboard", "csv", "mlflow", "wandb"]
ProfilerName = Literal["simple", "advanced", "pytorch"]

#: The flags' groups in ``--help``, in order; every field belongs to one.
GROUPS = (
    "Recipe",
    "Data",
    "Image folder (--dataset folder)",
    "Model",
    "Optimization",
    "Trainer",
    "Checkpoints and logs",
)
#: The largest batch size ``batch_size="auto"`` tries (Lightning's own default limit).
BATCH_SIZE_AUTO_MAX = 8192


def _setting(group: str, default: Any, help: str) -> Any:
    """A field with its default, its ``--help`` group and its one-line reason."""
    if isinstance(default, list):
        raise TypeError("use a tuple default: a config is frozen")
    return field(default=default, metadata={"group": group, "help": help})


_RECIPE, _DATA, _FOLDER, _MODEL, _OPTIM, _TRAINER, _OUT = GROUPS


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run; the defaults are the classic PyTorch MNIST lesson."""

    # fmt: off
    recipe: str | None = _setting(_RECIPE, None, "The named recipe this config starts from (see --recipe list); recorded in config.yaml.")
    # ------------------------------------------------------------------ data
    dataset: Dataset = _setting(_DATA, "mnist", "The MNIST family (mnist, fashion-mnist, kmnist), or folder: your images, one sub-folder per class.")
    data_dir: str | None = _setting(_DATA, None, "Folder holding <Dataset>/raw, or the image folder (default: $LIT_MNIST_DATA_DIR, else ./data).")
    batch_size: int | Literal["auto"] = _setting(_DATA, 64, "Samples per batch, per device; auto: the largest that fits a CUDA GPU (Lightning's batch-size finder).")
    num_workers: int = _setting(_DATA, 0, "DataLoader worker processes (only with --loader torchvision).")
    val_size: int | float | None = _setting(_DATA, None, "Training images held out for validation: a count or a fraction (default: 5000; folder: 0.1); 0: none, the test takes the last epoch's weights.")
    folds: int = _setting(_DATA, 0, "Cross-validate: K runs, each validating on another of K stratified folds of the training images, then a final model (0: one run, validating on the --val-size images).")
    fold: int | None = _setting(_DATA, None, "Train only this fold of --folds K (0 to K-1): one run validating on that fold.")
    folds_final: bool = _setting(_DATA, True, "After the folds, train a final model on all the training images with the same settings and test it.")
    loader: Loader = _setting(_DATA, "memory", "memory: each split once as a tensor on the device (fast); torchvision: per-sample DataLoader.")
    steps_per_batch: int = _setting(_DATA, 10, "Optimizer steps per batch Lightning sees (step groups): same steps and weights as 1, less overhead; lowered to divide the step counts, 1 where a setting rules groups out (the run says which).")
    download: bool = _setting(_DATA, True, "Download the raw files with torchvision when they are missing.")
    augment_degrees: float = _setting(_DATA, 0.0, "Augmentation: largest random rotation of a training image, in degrees.")
    augment_translate: float = _setting(_DATA, 0.0, "Augmentation: largest random shift, as a fraction of the image size.")
    augment_scale: float = _setting(_DATA, 0.0, "Augmentation: largest random zoom in or out (0.1: 90% to 110%).")
    image_size: int = _setting(_FOLDER, 28, "Height and width every image is resized to.")
    color: Color = _setting(_FOLDER, "grayscale", "grayscale (one channel) or rgb (three).")
    test_size: int | float = _setting(_FOLDER, 0.2, "Images held out for the test set when there is no test/ sub-folder: a count or a fraction.")
    skip_bad_images: bool = _setting(_FOLDER, False, "Leave out files that cannot be read (named in a warning) instead of stopping.")
    # ------------------------------------------------------------------ model
    model: Model = _setting(_MODEL, "mlp", "mlp: the classic 784-128-64-10 network; cnn: convolution blocks then a dense layer.")
    hidden_sizes: tuple[int, ...] = _setting(_MODEL, (128, 64), "Widths of the MLP's hidden layers.")
    dropout: float = _setting(_MODEL, 0.0, "Dropout probability after each hidden layer (0: the classic network).")
    cnn_channels: tuple[int, ...] = _setting(_MODEL, (32, 64), "Output channels of the CNN's convolutions, one per block.")
    cnn_kernel_sizes: tuple[int, ...] = _setting(_MODEL, (3,), "Kernel size of each convolution (odd); one value serves every block.")
    cnn_padding: CnnPadding = _setting(_MODEL, "same", "same: each block halves the image; valid: no padding, less computation.")
    cnn_hidden_size: int = _setting(_MODEL, 128, "Width of the CNN's hidden dense layer.")
    channels_last: bool = _setting(_MODEL, True, "Keep the CNN's convolution weights channels-last (faster on the CPU; same values).")
    # ------------------------------------------------------------------ optimization
    optimizer: Optimizer = _setting(_OPTIM, "sgd", "sgd, adam, adamw or rmsprop.")
    lr: float | Literal["auto"] = _setting(_OPTIM, 0.01, "Learning rate (onecycle's peak); auto: the rate Lightning's learning-rate finder suggests.")
    momentum: float = _setting(_OPTIM, 0.9, "Momentum of SGD and RMSprop.")
    nesterov: bool = _setting(_OPTIM, False, "Nesterov momentum (SGD only).")
    betas: tuple[float, ...] = _setting(_OPTIM, (0.9, 0.999), "Adam's and AdamW's two decay rates (gradient mean, its square).")
    weight_decay: float = _setting(_OPTIM, 0.0, "Weight decay (L2; decoupled for AdamW).")
    scheduler: Scheduler = _setting(_OPTIM, "none", "Learning-rate schedule: none, step (per epoch), cosine or onecycle (per step).")
    cycle_momentum: bool = _setting(_OPTIM, True, "With onecycle, cycle momentum or beta1 against the rate (PyTorch's default).")
    step_size: int = _setting(_OPTIM, 5, "Epochs between decays of the step schedule.")
    gamma: float = _setting(_OPTIM, 0.1, "Decay factor of the step schedule.")
    label_smoothing: float = _setting(_OPTIM, 0.0, "Label smoothing of the cross-entropy loss, in [0, 1).")
    lr_find: bool = _setting(_OPTIM, False, "Run Lightning's learning-rate finder first: print its suggestion, save lr_find.png.")
    ema: float | None = _setting(_OPTIM, None, "Keep an exponential moving average of the weights with this decay (e.g. 0.999); it is tested.")
    swa_lr: float | None = _setting(_OPTIM, None, "Stochastic weight averaging at this learning rate from --swa-epoch-start on; saved as swa.ckpt.")
    swa_epoch_start: int | float = _setting(_OPTIM, 0.8, "Where SWA starts: an epoch number, or a fraction of --max-epochs.")
    gradient_clip_val: float | None = _setting(_OPTIM, None, "Clip the gradients' norm to this value.")
    accumulate_grad_batches: int = _setting(_OPTIM, 1, "Batches whose gradients add up to one optimizer step.")
    # ------------------------------------------------------------------ trainer
    accelerator: Accelerator = _setting(_TRAINER, "auto", "Where to train: auto (a GPU if there is one), cpu, gpu, cuda or mps.")
    devices: int | str = _setting(_TRAINER, "auto", "Devices: a number, a list like 0,1, -1 (all) or auto.")
    strategy: str = _setting(_TRAINER, "auto", "Lightning's strategy: auto, ddp, ddp_spawn, fsdp, ...")
    num_nodes: int = _setting(_TRAINER, 1, "Machines in a multi-node run (started by torchrun, SLURM, ...).")
    precision: Precision = _setting(_TRAINER, "32-true", "Numeric precision: 32-true, bf16-mixed (CPU or GPU), 16-mixed (CUDA), ...")
    max_epochs: int = _setting(_TRAINER, 10, "Epochs to train (in total, when resuming).")
    max_steps: int = _setting(_TRAINER, -1, "Stop after this many optimizer steps (-1: no limit).")
    max_time: str | None = _setting(_TRAINER, None, "Stop after this much training time, DD:HH:MM:SS.")
    early_stopping_patience: int | None = _setting(_TRAINER, None, "Stop when val/acc has not improved for this many epochs.")
    compile: bool = _setting(_TRAINER, False, "torch.compile the network; its compile time is paid in the first steps.")
    seed: int = _setting(_TRAINER, 42, "Seed of the weights, shuffling and augmentation.")
    threads: int | None = _setting(_TRAINER, None, "CPU threads of torch's operators in each process (default: $OMP_NUM_THREADS, else the CPUs this process may use, by its affinity and cgroup quota, shared among the run's processes); give each of several runs on one machine its share.")
    deterministic: bool = _setting(_TRAINER, False, "Use only deterministic algorithms (slower; same result on each run).")
    fast_dev_run: int = _setting(_TRAINER, 0, "Run this many batches of each stage (the bare flag: 1) as a smoke test, with no logs or checkpoints.")
    limit_train_batches: int | float | None = _setting(_TRAINER, None, "Training batches per epoch: a count or a fraction.")
    limit_val_batches: int | float | None = _setting(_TRAINER, None, "Validation batches per epoch: a count or a fraction.")
    limit_test_batches: int | float | None = _setting(_TRAINER, None, "Test batches: a count or a fraction.")
    log_every_n_steps: int = _setting(_TRAINER, 50, "Log train/loss every this many optimizer steps.")
    progress_bar: bool = _setting(_TRAINER, True, "Show the progress bar.")
    # ------------------------------------------------------------------ checkpoints and logs
    log_dir: str = _setting(_OUT, "lightning_logs", "Runs go to LOG_DIR/version_N.")
    ckpt_path: str | None = _setting(_OUT, None, "Resume from this checkpoint, or last: the newest run's last.ckpt.")
    save_top_k: int = _setting(_OUT, 1, "Best checkpoints kept, by val/acc (-1: all).")
    ckpt_every_n_steps: int | None = _setting(_OUT, None, "Also write last.ckpt every this many optimizer steps.")
    logger: tuple[LoggerName, ...] = _setting(_OUT, ("tensorboard", "csv"), "Loggers: tensorboard, csv, mlflow, wandb (the last two need their extras).")
    mlflow_tracking_uri: str | None = _setting(_OUT, None, "MLflow server, e.g. http://host:5000 (default: a SQLite store in LOG_DIR).")
    mlflow_experiment: str = _setting(_OUT, "lit_mnist", "MLflow experiment name.")
    profiler: ProfilerName | None = _setting(_OUT, None, "Lightning's profiler (simple, advanced or pytorch); its report goes to the run folder.")
    log_histograms: bool = _setting(_OUT, False, "Log weight and gradient histograms to TensorBoard each epoch.")
    # fmt: on

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            plain = _plain(value)  # a YAML or JSON list frozen as a tuple, numpy's numbers as Python's
            if plain is not value:
                object.__setattr__(self, f.name, value := plain)
            _check_type(f.name, value, _HINTS[f.name])
        for check in _CHECKS:
            check(self)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML/JSON values (tuples as lists), in field order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """A config from a mapping of field names (dashes or underscores); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        settings = {str(k).replace("-", "_"): v for k, v in values.items()}
        if unknown := sorted(set(settings) - names):
            raise ConfigError(unknown[0], "is not a setting of a run (see train.py --help)")
        return cls(**settings)

    def flag_changes(self, other: RunConfig | None = None) -> dict[str, Any]:
        """The settings that differ from ``other`` (default: the defaults), by name."""
        base = other if other is not None else RunConfig()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        }


# --------------------------------------------------------------------------- checks
_HINTS: dict[str, Any] = typing.get_type_hints(RunConfig)
_FOLDER_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata["group"] == _FOLDER)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        return float(value)
    return value


def _accepts(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_accepts(v, args[0]) for v in value)
    if hint is float:  # numpy's numbers too (a sweep's or a notebook's values)
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"a list, each {_describe(args[0])}"
    if hint is type(None):
        return "null"
    if origin is not None:
        return " or ".join(_describe(arg) for arg in args)
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        hint.__name__, hint.__name__
    )


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _accepts(value, hint):
        raise ConfigError(name, f"must be {_describe(hint)}; got {value!r}")


def _at_least(minimum: int, *names: str) -> Any:
    def check(cfg: RunConfig) -> None:
        for name in names:
            value = getattr(cfg, name)
            if value is not None and value < minimum:
                raise ConfigError(name, f"must be >= {minimum}, got {value}")

    return check


def _check_data(cfg: RunConfig) -> None:
    if cfg.batch_size != "auto" and cfg.batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.val_size not in (None, 0):  # 0: no validation images
        check_count_or_fraction("val_size", cfg.val_size)
    check_count_or_fraction("test_size", cfg.test_size)
    for stage in ("train", "val", "test"):
        if (value := getattr(cfg, f"limit_{stage}_batches")) is not None:
            check_count_or_fraction(f"limit_{stage}_batches", value, closed=True)
    check_augmentation(cfg.augment_degrees, cfg.augment_translate, cfg.augment_scale)
    augmenting = cfg.augment_degrees or cfg.augment_translate or cfg.augment_scale
    if augmenting and cfg.loader != "memory":
        raise ConfigError(
            "loader",
            f"must be memory for augmentation (--augment-*: on whole batches on the device); got {cfg.loader!r}",
        )
    if cfg.dataset != "folder":
        for name in _FOLDER_FIELDS:
            if getattr(cfg, name) != getattr(RunConfig, name):
                raise ConfigError(
                    name, f"is a flag of --dataset folder; leave it out with --dataset {cfg.dataset}"
                )


def _check_model(cfg: RunConfig) -> None:
    """The network's own settings: the MLP's for ``mlp``, the CNN's for ``cnn`` (the other's are unused)."""
    if not 0 <= cfg.dropout < 1:
        raise ConfigError("dropout", f"must be in [0, 1), got {cfg.dropout}")
    if cfg.model == "mlp":
        if not cfg.hidden_sizes or min(cfg.hidden_sizes) < 1:
            raise ConfigError(
                "hidden_sizes",
                f"must be one or more positive integers, e.g. 128 64; got {list(cfg.hidden_sizes)}",
            )
        return
    if not cfg.cnn_channels or min(cfg.cnn_channels) < 1:
        raise ConfigError(
            "cnn_channels", f"must be one or more positive integers, e.g. 32 64; got {list(cfg.cnn_channels)}"
        )
    kernels = cfg.cnn_kernel_sizes
    if len(kernels) not in (1, len(cfg.cnn_channels)) or any(k < 1 or k % 2 == 0 for k in kernels):
        raise ConfigError(
            "cnn_kernel_sizes",
            f"must be odd positive sizes, one for every convolution or one per convolution ({len(cfg.cnn_channels)} "
            f"for channels {list(cfg.cnn_channels)}), e.g. 5 3; got {list(kernels)}",
        )
    if cfg.cnn_hidden_size < 1:
        raise ConfigError("cnn_hidden_size", f"must be >= 1, got {cfg.cnn_hidden_size}")


def _check_optimization(cfg: RunConfig) -> None:
    check_optimizer_settings(
        cfg.optimizer, 1.0 if cfg.lr == "auto" else cfg.lr, cfg.momentum, cfg.betas, cfg.nesterov,
        cfg.weight_decay, cfg.step_size, cfg.gamma, cfg.label_smoothing,
    )  # fmt: skip
    if cfg.gradient_clip_val is not None and cfg.gradient_clip_val < 0:
        raise ConfigError("gradient_clip_val", f"must be >= 0, got {cfg.gradient_clip_val}")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise ConfigError("ema", f"must be a decay in (0, 1), e.g. 0.999; got {cfg.ema}")
    if cfg.swa_lr is not None and not (math.isfinite(cfg.swa_lr) and cfg.swa_lr > 0):
        raise ConfigError("swa_lr", f"must be a learning rate > 0, e.g. 0.01; got {cfg.swa_lr}")


def _check_averaging(cfg: RunConfig) -> None:
    if cfg.ema is not None and cfg.swa_lr is not None:
        raise ConfigError("ema", "and --swa-lr both average the weights; give one of them")
    start = cfg.swa_epoch_start
    if (isinstance(start, float) and not 0 < start < 1) or (
        isinstance(start, int) and not 1 <= start < cfg.max_epochs
    ):
        raise ConfigError(
            "swa_epoch_start",
            f"must be an epoch number from 1 to --max-epochs - 1 (e.g. 8) or a fraction in (0, 1) (e.g. 0.8); got {start}",
        )
    if cfg.swa_lr is None:
        return
    early = [
        flag
        for flag, given in (
            ("--early-stopping-patience", cfg.early_stopping_patience is not None),
            ("--max-steps", cfg.max_steps != -1),
            ("--max-time", cfg.max_time is not None),
        )
        if given
    ]
    if early:
        raise ConfigError(
            "swa_lr",
            f"with {early[0]}: Lightning's SWA puts the average into the model only when --max-epochs is reached, "
            "and this run may stop before; stop it by --max-epochs alone",
        )


def _check_trainer(cfg: RunConfig) -> None:
    if cfg.fast_dev_run < 0:
        raise ConfigError("fast_dev_run", f"must be >= 0 (batches per stage), got {cfg.fast_dev_run}")
    if cfg.save_top_k < -1:
        raise ConfigError("save_top_k", f"must be -1 (all), 0 or a positive count, got {cfg.save_top_k}")
    if cfg.max_steps < -1 or cfg.max_steps == 0:
        raise ConfigError("max_steps", f"must be -1 (no limit) or >= 1, got {cfg.max_steps}")
    if cfg.max_time is not None and not re.fullmatch(r"\d{1,2}:\d{2}:\d{2}:\d{2}", cfg.max_time):
        raise ConfigError(
            "max_time",
            f"must be DD:HH:MM:SS, e.g. 00:02:30:00 for two and a half hours; got {cfg.max_time!r}",
        )
    parse_devices(cfg.devices)
    if isinstance(parse_devices(cfg.devices), list) and cfg.accelerator == "cpu":
        raise ConfigError(
            "devices",
            f"{cfg.devices} picks devices by index, which the CPU does not have; give a number of processes instead, e.g. --devices 2",
        )
    if not cfg.logger:
        raise ConfigError("logger", "must name at least one logger: tensorboard, csv, mlflow or wandb")


def _check_recipe(cfg: RunConfig) -> None:
    from lit_mnist.recipes import RECIPES

    if cfg.recipe is not None and cfg.recipe not in RECIPES:
        raise ConfigError(
            "recipe", f"{cfg.recipe!r} is not a recipe; choose one of {', '.join(RECIPES)} (--recipe list)"
        )


def _check_finders(cfg: RunConfig) -> None:
    """The finders search before training starts; a resumed run keeps what it trained with."""
    if cfg.ckpt_path is None:
        return
    if cfg.batch_size == "auto":
        raise ConfigError(
            "batch_size",
            "auto searches a batch size before training starts; a resumed run (--ckpt-path) keeps its own: "
            "give it the number it trained with",
        )
    if cfg.lr_find or cfg.lr == "auto":
        key, flag = ("lr", "auto") if cfg.lr == "auto" else ("lr_find", "")
        raise ConfigError(
            key,
            f"{flag + ' ' if flag else ''}searches a learning rate before training starts; a resumed run (--ckpt-path) keeps its own",
        )


def _check_folds(cfg: RunConfig) -> None:
    """A cross-validation's settings: K >= 2 folds, a fold inside them, what each of its runs can take."""
    if cfg.folds < 0 or cfg.folds == 1:
        raise ConfigError("folds", f"must be 0 (one run) or a number of folds >= 2, got {cfg.folds}")
    if cfg.fold is not None and not cfg.folds:
        raise ConfigError("fold", "picks one fold of a cross-validation: give --folds K (K >= 2) with it")
    if cfg.fold is not None and not 0 <= cfg.fold < cfg.folds:
        raise ConfigError("fold", f"must be from 0 to {cfg.folds - 1} (--folds {cfg.folds}), got {cfg.fold}")
    if cfg.val_size == 0 and cfg.early_stopping_patience is not None:
        raise ConfigError(
            "early_stopping_patience", "watches val/acc, and --val-size 0 holds out no validation images"
        )
    if not cfg.folds:
        return
    if cfg.val_size is not None:
        raise ConfigError(
            "val_size",
            f"is chosen by --folds: each fold validates on 1/{cfg.folds} of the training images; leave it out",
        )
    if cfg.fold is not None:
        return  # one fold's run: an ordinary run on that fold's split
    refused = (
        ("ckpt_path", cfg.ckpt_path is not None, "resumes one run; a cross-validation goes on where it stopped when the same command runs again"),
        ("batch_size", cfg.batch_size == "auto", "auto would search each fold's own; run the finder once without --folds and give its value"),
        ("lr", cfg.lr == "auto", "auto would search each fold's own; run the finder once without --folds and give its value"),
        ("lr_find", cfg.lr_find, "would search each fold's own rate; run it once without --folds and give --lr its value"),
        ("fast_dev_run", bool(cfg.fast_dev_run), "writes no run folders; try one fold of it instead (--fold 0)"),
        ("limit_val_batches", cfg.limit_val_batches == 0, "0 leaves the folds nothing to validate"),
        ("early_stopping_patience", cfg.early_stopping_patience is not None and cfg.folds_final,
         "stops on val/acc, and the final model trains on all the training images with none; add --no-folds-final"),
    )  # fmt: skip
    for name, given, why in refused:
        if given:
            raise ConfigError(name, f"with --folds: {why}")


_CHECKS = (
    _at_least(1, "max_epochs", "num_nodes", "accumulate_grad_batches", "log_every_n_steps", "steps_per_batch",
              "early_stopping_patience", "ckpt_every_n_steps", "image_size", "threads"),
    _at_least(0, "num_workers"),
    _check_data,
    _check_model,
    _check_optimization,
    _check_averaging,
    _check_trainer,
    _check_finders,
    check_limits,
    _check_folds,
    _check_recipe,
)  # fmt: skip


def parse_devices(value: str | int) -> int | str | list[int]:
    """``"auto"`` -> ``"auto"``, ``"2"`` -> ``2``, ``"-1"`` -> ``-1`` (all), ``"0,1"`` -> ``[0, 1]``.

    Raises:
        ConfigError: naming ``devices`` and what it accepts.
    """
    text = str(value).strip()
    accepted = "a positive count, -1 (all), a list of indices like 0,1, or auto"
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            indices = [int(part) for part in text.split(",") if part.strip()]
            if not indices or min(indices) < 0:
                raise ValueError
            return indices
        count = int(text)
    except ValueError:
        raise ConfigError("devices", f"must be {accepted}; got {text!r}") from None
    if count == 0 or count < -1:
        raise ConfigError("devices", f"must be {accepted}; got {count}")
    return count
