"""``train``: flags and config file -> checked config -> datamodule, module, Trainer -> results.

``python scripts/train.py`` and ``lit-mnist train`` both end up in :func:`train_main`. The flags
are flat (``--lr``, ``--max-epochs``); ``--config FILE.yaml`` takes the same names as keys (dashes
or underscores), and flags given on the command line override the file. The resolved config is
written to the run's folder as ``config.yaml``; ``--config`` on it repeats the run.

Parsing is jsonargparse's (the library LightningCLI is built on). Every usage error ends the
process with exit status 2 and one line that names the flag and what it accepts.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shlex
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_mnist.augment import RandomAffine
from lit_mnist.callbacks import (
    EpochSpeed,
    ParameterHistograms,
    PredictionImages,
    TrainingCurves,
    written_figures,
)
from lit_mnist.checkpoints import (
    CONFIG_NAME,
    AtomicCheckpointIO,
    DatasetRecord,
    check_dataset,
    check_resumable,
)
from lit_mnist.cli.common import constructor_flags, one_line, usage_exit
from lit_mnist.data import DATA_DIR_ENV, MNISTDataModule, TensorDataModule, default_data_dir
from lit_mnist.datasets import DATASETS
from lit_mnist.errors import (
    Aborted,
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    DataError,
    Interrupted,
    LoaderStateError,
    NonFiniteLossError,
    RunError,
    UsageError,
)
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.groups import StepGroupPlan, StepGroups, StepProgressBar, group_size
from lit_mnist.loggers import (
    LOGGERS,
    MLFLOW_EXPERIMENT,
    build_loggers,
    check_installed,
    check_reachable,
    finish_runs,
    local_mlflow_uri,
    log_artifacts,
)
from lit_mnist.module import MNISTClassifier
from lit_mnist.recipes import RECIPES, recipe_path, recipes_table
from lit_mnist.runtime import (
    ACCELERATORS,
    PRECISION_ALIASES,
    PRECISIONS,
    RunLock,
    check_accelerator,
    first_line,
    hide_advertisements,
    ignore_upstream_deprecations,
    lock_run,
    remove_stale_partials,
    write_atomic,
)
from lit_mnist.stopping import GracefulInterrupt, LastCheckpoint, NonFiniteLossGuard

RESULTS_NAME = "results.json"
PROFILERS = ("simple", "advanced", "pytorch")
#: The largest batch size ``--batch-size auto`` tries (Lightning's own default limit).
BATCH_SIZE_AUTO_MAX = 8192
#: Set by the launching process so that DDP's re-launched processes log into the same run folder.
RUN_VERSION_ENV = "LIT_MNIST_RUN_VERSION"


#: The group size train.py asks for (``--steps-per-batch``): Lightning's per-batch work is paid once per
#: this many optimizer steps. The library's default is 1, plain Lightning; see lit_mnist.groups.
STEPS_PER_BATCH = 10
#: Flags derived from the constructors' signatures (type, default, choices, help); ranges are checked there.
DATA_FLAGS = (
    "data_dir", "batch_size", "num_workers", "val_size", "loader", "steps_per_batch", "download",
    "augment_degrees", "augment_translate", "augment_scale",
)  # fmt: skip
#: Flags of ``--dataset folder`` only (ImageFolderDataModule's arguments).
FOLDER_FLAGS = ("image_size", "color", "test_size", "skip_bad_images")
MODEL_FLAGS = (
    "model", "hidden_sizes", "dropout", "cnn_channels", "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size",
    "channels_last",
)  # fmt: skip
OPTIMIZATION_FLAGS = (
    "optimizer", "lr", "momentum", "nesterov", "betas", "weight_decay", "scheduler", "cycle_momentum", "step_size",
    "gamma", "label_smoothing",
)  # fmt: skip


def get_parser(prog: str = "train.py") -> ArgumentParser:
    """The flat-flag parser of ``train``, grouped for ``--help``."""
    parser = ArgumentParser(
        prog=prog,
        description="Train an MNIST-family classifier with PyTorch Lightning.",
        exit_on_error=False,
        default_env=False,
        print_config="--print-config",  # dashed, like every other flag
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML file whose keys are these flags' names."
    )
    parser.add_argument(
        "--recipe",
        type=str | None,
        default=None,
        help=f"A named recipe ({', '.join(RECIPES)}), read like --config from lit_mnist/recipes/NAME.yaml "
        "where it stands (flags after it override it); 'list' prints them with what each reached.",
    )

    data = parser.add_argument_group("Data")
    data.add_argument(
        "--dataset",
        type=Literal[tuple(DATASETS)],
        default="mnist",
        help="Dataset: the MNIST family, or folder: your own images, one sub-folder per class in --data-dir.",
    )
    constructor_flags(
        data,
        MNISTDataModule,
        DATA_FLAGS,
        defaults={"steps_per_batch": STEPS_PER_BATCH, "val_size": None},
        types={"batch_size": int | Literal["auto"]},
        helps={
            "batch_size": "Samples per batch (per device under DDP); auto: the largest that fits in the CUDA "
            "GPU's memory, found before training by Lightning's batch-size finder (Tuner.scale_batch_size, "
            f"doubling from 2; its cap, {BATCH_SIZE_AUTO_MAX}, is returned untried), in one process.",
            "data_dir": f"Folder holding <Dataset>/raw, or with --dataset folder the image folder "
            f"(default: ${DATA_DIR_ENV}, else ./data).",
            "val_size": "Training images held out for validation: a count, or a fraction in (0, 1) "
            "(default: 5000 for the MNIST family, 0.1 for folder).",
            "steps_per_batch": "Optimizer steps per training batch that Lightning sees (step groups, the "
            "in-memory loader's fast path): the same steps and weights as 1, less overhead. Lowered to "
            "divide the steps per epoch, --log-every-n-steps, --max-steps and --ckpt-every-n-steps; 1 "
            "(plain Lightning) with --loader torchvision, --gradient-clip-val, --accumulate-grad-batches, "
            "--limit-train-batches or --fast-dev-run. The run says at its start which it uses and why.",
        },
    )
    constructor_flags(
        parser.add_argument_group("Image folder (--dataset folder)"), ImageFolderDataModule, FOLDER_FLAGS
    )
    constructor_flags(parser.add_argument_group("Model"), MNISTClassifier, MODEL_FLAGS)
    optim = parser.add_argument_group("Optimization")
    constructor_flags(
        optim,
        MNISTClassifier,
        OPTIMIZATION_FLAGS,
        types={"lr": float | Literal["auto"]},
        helps={
            "lr": "Learning rate (the peak rate for onecycle); auto: the one Lightning's learning-rate "
            "finder suggests (--lr-find)."
        },
    )
    optim.add_argument(
        "--lr-find",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="Before training, run Lightning's learning-rate finder (Tuner.lr_find, one process): print its "
        "suggestion and save its plot as lr_find.png in the run folder; --lr auto trains with it.",
    )
    optim.add_argument(
        "--ema",
        type=float | None,
        default=None,
        help="Keep an exponential moving average of the weights with this decay (e.g. 0.999; Lightning's "
        "EMAWeightAveraging): the averaged weights are validated, checkpointed, tested and exported.",
    )
    optim.add_argument(
        "--swa-lr",
        type=float | None,
        default=None,
        help="Stochastic weight averaging (Lightning's StochasticWeightAveraging) from --swa-epoch-start on, "
        "at this learning rate: the averaged weights are tested, saved as checkpoints/swa.ckpt and exported.",
    )
    optim.add_argument(
        "--swa-epoch-start",
        type=int | float,
        default=0.8,
        help="Where SWA starts: an epoch index (int), or a fraction of --max-epochs (float in (0, 1)).",
    )
    optim.add_argument("--gradient-clip-val", type=float | None, default=None, help="Clip gradient norm.")
    optim.add_argument("--accumulate-grad-batches", type=int, default=1, help="Batches per optimizer step.")

    trainer = parser.add_argument_group("Trainer")
    trainer.add_argument("--accelerator", type=Literal[ACCELERATORS], default="auto")
    trainer.add_argument(
        "--devices", type=int | str, default="auto", help="Number, list like 0,1, -1 (all), or auto."
    )
    trainer.add_argument("--strategy", type=str, default="auto", help="auto, ddp, ddp_spawn, fsdp, ...")
    trainer.add_argument("--num-nodes", type=int, default=1, help="Machines in a multi-node run.")
    trainer.add_argument("--precision", type=Literal[PRECISIONS], default="32-true")
    trainer.add_argument(
        "--max-epochs", type=int, default=10, help="Epochs to train (in total, when resuming)."
    )
    trainer.add_argument(
        "--max-steps", type=int, default=-1, help="Stop after this many optimizer steps (-1: off)."
    )
    trainer.add_argument(
        "--max-time", type=str | None, default=None, help="Stop after DD:HH:MM:SS of training."
    )
    trainer.add_argument(
        "--early-stopping-patience",
        type=int | None,
        default=None,
        help="Stop when val/acc has not improved for N epochs.",
    )
    trainer.add_argument(
        "--compile",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="torch.compile the network (not the LightningModule); its compile time is paid in the first steps.",
    )
    trainer.add_argument("--seed", type=int, default=42, help="Seed of weights and shuffling.")
    trainer.add_argument("--deterministic", action=ActionYesNo(no_prefix="no-"), default=False)
    trainer.add_argument(
        "--fast-dev-run",
        type=int,
        nargs="?",
        const=1,
        default=0,
        help="Run N batches of each stage, no logs.",
    )
    for stage in ("train", "val", "test"):
        trainer.add_argument(
            f"--limit-{stage}-batches",
            type=int | float | None,
            default=None,
            help=f"{stage} batches per epoch: an int (count) or a float in (0, 1] (fraction).",
        )
    trainer.add_argument("--log-every-n-steps", type=int, default=50, help="Logging interval of train/loss.")
    trainer.add_argument("--progress-bar", action=ActionYesNo(no_prefix="no-"), default=True)

    ckpt = parser.add_argument_group("Checkpoints and logs")
    ckpt.add_argument("--log-dir", type=str, default="lightning_logs", help="Runs go to LOG_DIR/version_N.")
    ckpt.add_argument("--ckpt-path", type=str | None, default=None, help="Resume: a .ckpt path, or 'last'.")
    ckpt.add_argument("--save-top-k", type=int, default=1, help="Best checkpoints kept (by val/acc).")
    ckpt.add_argument(
        "--ckpt-every-n-steps",
        type=int | None,
        default=None,
        help="Also write last.ckpt every N training steps.",
    )
    ckpt.add_argument(
        "--logger",
        type=Literal[LOGGERS],
        nargs="+",
        default=["tensorboard", "csv"],
        help="Loggers, any of them: tensorboard, csv (metrics.csv), mlflow, wandb (the last two are extras: "
        'pip install -e ".[mlflow]").',
    )
    ckpt.add_argument(
        "--mlflow-tracking-uri",
        type=str | None,
        default=None,
        help="MLflow tracking URI, e.g. http://host:5000 for a shared server (default: a local store, "
        "sqlite:///LOG_DIR/mlflow.db with artifacts in LOG_DIR/mlartifacts).",
    )
    ckpt.add_argument(
        "--mlflow-experiment", type=str, default=MLFLOW_EXPERIMENT, help="MLflow experiment name."
    )
    ckpt.add_argument(
        "--profiler",
        type=Literal[PROFILERS] | None,
        default=None,
        help="Lightning's profiler: simple (time per hook), advanced (cProfile per hook) or pytorch (operators, "
        "and a trace in the run folder for TensorBoard's profiler plugin); its report goes to the run folder.",
    )
    ckpt.add_argument(
        "--log-histograms",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="Log weight and gradient histograms to TensorBoard once per epoch.",
    )
    return parser


# --------------------------------------------------------------------------- parsing and checks
def parse_args(argv: Sequence[str] | None = None, prog: str = "train.py") -> Namespace:
    """Parse and check ``argv``; on a usage error print one line and exit with status 2."""
    parser = get_parser(prog)
    args, recipe = expand_recipe(list(sys.argv[1:] if argv is None else argv), prog)
    try:
        cfg = parser.parse_args(args)
        if cfg.recipe is not None and recipe is None:  # `recipe: NAME` in a --config file: read it first
            args, recipe = expand_recipe(["--recipe", str(cfg.recipe), *args], prog)
            cfg = parser.parse_args(args)
        check_not_null(cfg, parser)
        check_config(cfg)
    except UnicodeDecodeError as err:  # a binary file given as --config
        usage_exit(
            prog, f"--config must be a YAML text file; it holds bytes that are not UTF-8 text ({err.reason})"
        )
    except ArgumentError as err:
        usage_exit(prog, one_line(str(err), argv))
    except UsageError as err:
        usage_exit(prog, str(err))
    except ConfigError as err:
        usage_exit(prog, f"{err.flag} {err.message}")
    return cfg


def expand_recipe(args: list[str], prog: str) -> tuple[list[str], str | None]:
    """``--recipe NAME`` -> ``--config <lit_mnist/recipes/NAME.yaml>`` in place; ``--recipe list`` prints them.

    Returns:
        The arguments to parse and the recipe's name (the last one given), or None.
    """
    expanded, recipe = [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--recipe" or arg.startswith("--recipe="):
            if arg == "--recipe":
                if i + 1 >= len(args):
                    usage_exit(prog, f"--recipe needs a name: {', '.join(RECIPES)}, or list")
                name, i = args[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            if name == "list":
                print(recipes_table())
                raise SystemExit(0)
            try:
                path = recipe_path(name)
            except KeyError:
                usage_exit(
                    prog,
                    f"--recipe {name!r} is not a recipe; choose one of {', '.join(RECIPES)} (--recipe list)",
                )
            expanded += ["--config", str(path), f"--recipe={name}"]
            recipe = name
            continue
        expanded.append(arg)
        i += 1
    return expanded, recipe


def check_not_null(cfg: Namespace, parser: ArgumentParser) -> None:
    """Refuse ``null`` (``None``) for a flag that has a value by default: a config file's ``lr: null``.

    Raises:
        UsageError: naming the flag.
    """
    for key, default in parser.get_defaults().items():
        if default is not None and key != "config" and cfg.get(key, default) is None:
            raise UsageError(
                f"--{key.replace('_', '-')} cannot be null (a config file's '{key}: null'); "
                f"give a value, e.g. {default!r}, or leave the key out for the default"
            )


def check_config(cfg: Namespace) -> None:
    """Check what the parser's types cannot: ranges, combinations and this machine's hardware.

    The flags of the datamodule and the module are checked by their constructors.

    Raises:
        UsageError: with one line naming the flag and what it accepts.
    """
    for key in ("max_epochs", "num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        if cfg[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg.fast_dev_run < 0:
        raise UsageError(f"--fast-dev-run must be >= 0 (batches per stage), got {cfg.fast_dev_run}")
    if cfg.save_top_k < -1:
        raise UsageError(f"--save-top-k must be -1 (all), 0 or a positive count, got {cfg.save_top_k}")
    if cfg.max_steps < -1 or cfg.max_steps == 0:
        raise UsageError(f"--max-steps must be -1 (no limit) or >= 1, got {cfg.max_steps}")
    for key in ("early_stopping_patience", "ckpt_every_n_steps"):
        if cfg[key] is not None and cfg[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg.max_time is not None and not re.fullmatch(r"\d{1,2}:\d{2}:\d{2}:\d{2}", cfg.max_time):
        raise UsageError(
            f"--max-time must be DD:HH:MM:SS, e.g. 00:02:30:00 for two and a half hours; got {cfg.max_time!r}"
        )
    if cfg.gradient_clip_val is not None and cfg.gradient_clip_val < 0:
        raise UsageError(f"--gradient-clip-val must be >= 0, got {cfg.gradient_clip_val}")
    for stage in ("train", "val", "test"):
        key = f"limit_{stage}_batches"
        value = cfg[key]
        if value is not None and (value < 0 or (isinstance(value, float) and value > 1)):
            raise UsageError(
                f"--{key.replace('_', '-')} must be a count >= 0 or a fraction in [0, 1], got {value}"
            )
    if isinstance(parse_devices(cfg.devices), list) and cfg.accelerator == "cpu":
        raise UsageError(
            f"--devices {cfg.devices} picks devices by index, which the CPU does not have; "
            "give a number of processes instead, e.g. --devices 2"
        )
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if cfg.strategy not in strategies:
        raise UsageError(
            f"--strategy {cfg.strategy!r} is not known; use auto, ddp, ddp_spawn, fsdp, deepspeed "
            "or another name in Lightning's StrategyRegistry"
        )
    RandomAffine(cfg.augment_degrees, cfg.augment_translate, cfg.augment_scale)  # ConfigError naming the flag
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise UsageError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {cfg.ema}")
    if cfg.swa_lr is not None and not (math.isfinite(cfg.swa_lr) and cfg.swa_lr > 0):
        raise UsageError(f"--swa-lr must be a learning rate > 0, e.g. 0.01; got {cfg.swa_lr}")
    if cfg.ema is not None and cfg.swa_lr is not None:
        raise UsageError("--ema and --swa-lr both average the weights; give one of them")
    start = cfg.swa_epoch_start
    if (isinstance(start, float) and not 0 < start < 1) or (
        isinstance(start, int) and not 1 <= start < cfg.max_epochs
    ):
        raise UsageError(
            f"--swa-epoch-start must be an epoch number from 1 to --max-epochs - 1 (e.g. 8) or a fraction in (0, 1) "
            f"(e.g. 0.8); got {start}"
        )
    if cfg.swa_lr is not None:
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
            raise UsageError(
                f"--swa-lr with {early[0]}: Lightning's SWA puts the average into the model only when --max-epochs "
                "is reached, and this run may stop before; stop it by --max-epochs alone"
            )
    if cfg.batch_size == "auto":
        if cfg.ckpt_path is not None:
            raise UsageError(
                "--batch-size auto searches a batch size before training starts; a resumed run (--ckpt-path) "
                "keeps its own: give it the number it trained with"
            )
        if cfg.accelerator == "mps" or not torch.cuda.is_available() or cfg.accelerator == "cpu":
            if cfg.accelerator == "mps" or (
                cfg.accelerator in ("auto", "gpu") and torch.backends.mps.is_available()
            ):
                where = "this run is on Apple's GPU (MPS), whose out-of-memory errors Lightning's finder does not recognise"
            elif cfg.accelerator in ("gpu", "cuda"):
                where = f"no CUDA GPU is visible for --accelerator {cfg.accelerator}"
            else:
                where = "this run is on the CPU, where memory is not what limits the batch"
            raise UsageError(
                "--batch-size auto finds the largest batch that fits in a CUDA GPU's memory, and "
                f"{where}: give --batch-size a number (64 to 256 train MNIST well)"
            )
        if world_size(cfg) != 1:
            raise UsageError(
                "--batch-size auto runs Lightning's batch-size finder in one process; run it with --devices 1 "
                "and give the multi-device run the size it finds (--batch-size, per device)"
            )
    if cfg.lr_find or cfg.lr == "auto":
        flag = "--lr auto" if cfg.lr == "auto" else "--lr-find"
        if cfg.ckpt_path is not None:
            raise UsageError(
                f"{flag} searches a learning rate before training starts; a resumed run (--ckpt-path) keeps its own"
            )
        if world_size(cfg) != 1:
            raise UsageError(
                f"{flag} runs Lightning's learning-rate finder in one process; run it with --devices 1 and "
                "give the multi-device run the rate it finds (--lr)"
            )
    if cfg.num_nodes > 1 and not launched_across_machines():
        raise UsageError(
            f"--num-nodes {cfg.num_nodes} joins processes on {cfg.num_nodes} machines, and this process was not "
            "started by torchrun, srun (SLURM), LSF or MPI, nor given NODE_RANK (and MASTER_ADDR): it "
            "would wait for the others for ever; start it on each machine as the README's 'Several devices and "
            "nodes' shows, or leave --num-nodes at 1 on one machine"
        )
    check_accelerator(cfg.accelerator)
    check_installed(cfg.logger)
    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    if cfg.precision in ("16-mixed", "16") and on_cpu:
        raise UsageError(
            f"--precision {cfg.precision} (float16 autocast) needs a CUDA GPU and none is in use; "
            "on the CPU use --precision bf16-mixed, or 32-true"
        )
    if cfg.ckpt_path is not None and cfg.ckpt_path != "last" and not Path(cfg.ckpt_path).is_file():
        raise UsageError(f"--ckpt-path {cfg.ckpt_path}: no such file; give a .ckpt file or 'last'")


def launched_across_machines() -> bool:
    """Whether a launcher that can place processes on several machines started this one.

    Lightning's cluster environments say it for torchrun, SLURM, LSF and MPI; by hand (the way
    Lightning documents) NODE_RANK is set on each machine (with MASTER_ADDR but on node 0); Kubeflow
    sets MASTER_ADDR and RANK.
    """
    environments = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    if any(environment.detect() for environment in environments):
        return True
    return "NODE_RANK" in os.environ or ("MASTER_ADDR" in os.environ and "RANK" in os.environ)


def parse_devices(value: str | int) -> int | str | list[int]:
    """``"auto"`` -> ``"auto"``, ``"2"`` -> ``2``, ``"-1"`` -> ``-1`` (all), ``"0,1"`` -> ``[0, 1]``."""
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
        raise UsageError(f"--devices must be {accepted}; got {text!r}") from None
    if count == 0 or count < -1:
        raise UsageError(f"--devices must be {accepted}; got {count}")
    return count


# --------------------------------------------------------------------------- building the run
def build_datamodule(cfg: Namespace, steps_per_batch: int = 1) -> TensorDataModule:
    """The datamodule named by ``--dataset`` with the data flags and the run's group size.

    Raises:
        UsageError: a flag of ``--dataset folder`` given with another dataset.
    """
    cls = DATASETS[cfg.dataset]
    if cls is not ImageFolderDataModule:
        defaults = inspect.signature(ImageFolderDataModule.__init__).parameters
        for name in FOLDER_FLAGS:
            if cfg[name] != defaults[name].default:
                flag = "--" + name.replace("_", "-")
                raise UsageError(
                    f"{flag} is a flag of --dataset folder; leave it out with --dataset {cfg.dataset}"
                )
    accepted = inspect.signature(cls.__init__).parameters
    names = [*DATA_FLAGS, *FOLDER_FLAGS]
    flags = {n: cfg[n] for n in names if n in accepted and n != "steps_per_batch" and cfg[n] is not None}
    return cls(**flags, seed=cfg.seed, steps_per_batch=steps_per_batch)


def build_model(cfg: Namespace, datamodule: TensorDataModule, steps_per_batch: int = 1) -> MNISTClassifier:
    """The LightningModule; number of classes and input shape come from the datamodule."""
    return MNISTClassifier(
        **{name: cfg[name] for name in (*MODEL_FLAGS, *OPTIMIZATION_FLAGS)},
        num_classes=datamodule.num_classes,
        input_shape=list(datamodule.image_shape),
        steps_per_batch=steps_per_batch,
    )


def groups_ruled_out(cfg: Namespace) -> str:
    """The flag that rules step groups out (why Lightning must take one step per batch), or ``""``.

    ``--steps-per-batch`` below 1 is not ruled out here: the constructors refuse it.
    """
    if cfg.steps_per_batch == 1:
        return "--steps-per-batch 1"
    if cfg.loader != "memory":
        return f"--loader {cfg.loader} yields one batch at a time"
    if cfg.gradient_clip_val:
        return "--gradient-clip-val: Lightning clips gradients only with automatic optimization"
    if cfg.accumulate_grad_batches > 1:
        return "--accumulate-grad-batches: Lightning accumulates gradients only with automatic optimization"
    if cfg.limit_train_batches is not None:
        return "--limit-train-batches counts Lightning's batches"
    if cfg.fast_dev_run:
        return "--fast-dev-run counts Lightning's batches"
    if cfg.ema is not None:
        return "--ema: Lightning's weight averaging updates once per batch Lightning sees"
    if cfg.swa_lr is not None:
        return (
            "--swa-lr: Lightning's SWA sets its own learning-rate schedule, stepped by automatic optimization"
        )
    return ""


def plan_step_groups(cfg: Namespace, datamodule: TensorDataModule, ruled_out: str) -> StepGroupPlan:
    """The group size of the run: ``--steps-per-batch``, lowered to divide every step count Lightning checks.

    Reads the training split's size (``prepare_data`` and ``setup``, which Lightning's own calls then
    find done) and the number of processes from the flags. ``ruled_out``: :func:`groups_ruled_out`.
    """
    requested = cfg.steps_per_batch
    if ruled_out:
        return StepGroupPlan(1, requested, ruled_out, ruled_out=True)
    processes = world_size(cfg)
    if processes is None:
        reason = f"--devices {cfg.devices}: the number of processes is not known"
        return StepGroupPlan(1, requested, reason, ruled_out=True)
    datamodule.prepare_data()
    datamodule.setup("fit")
    per_process = math.ceil(len(datamodule.split("train")[1]) / processes)  # DDP pads the shards
    steps = math.ceil(per_process / cfg.batch_size)
    counts = {
        f"{steps} optimizer steps per epoch at --batch-size {cfg.batch_size}": steps,
        f"--log-every-n-steps {cfg.log_every_n_steps}": cfg.log_every_n_steps,
        f"--max-steps {cfg.max_steps}": cfg.max_steps,
        f"--ckpt-every-n-steps {cfg.ckpt_every_n_steps}": cfg.ckpt_every_n_steps or 0,
    }
    size = group_size(requested, steps, *counts.values())
    lowered_by = [name for name, count in counts.items() if count > 0 and count % requested]
    return StepGroupPlan(size, requested, ", ".join(lowered_by))


def world_size(cfg: Namespace) -> int | None:
    """Processes of the run as the flags ask for them (devices per node x nodes); None when unknown."""
    devices = parse_devices(cfg.devices)
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    else:  # "auto" (or -1): every GPU with a CUDA accelerator, else one process
        cuda = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
        if not cuda and devices == -1:
            return None
        count = torch.cuda.device_count() if cuda else 1
    return count * cfg.num_nodes


def build_data_and_model(cfg: Namespace) -> tuple[TensorDataModule, MNISTClassifier, StepGroupPlan]:
    """The datamodule and the module of a run, with the step-group plan they share (see ``build_trainer``)."""
    ruled_out = groups_ruled_out(cfg)
    candidate = 1 if ruled_out else cfg.steps_per_batch
    datamodule = build_datamodule(cfg, candidate)
    build_model(cfg, datamodule, candidate)  # its constructor checks the flags before the data are read
    plan = plan_step_groups(cfg, datamodule, ruled_out)
    if plan.size != candidate:  # lowered: the data are checked and parsed again
        datamodule = build_datamodule(cfg, plan.size)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same weights whatever was built before
    return datamodule, build_model(cfg, datamodule, plan.size), plan


def build_trainer(cfg: Namespace, version: int | None, plan: StepGroupPlan) -> L.Trainer:
    """The Trainer: TensorBoard in ``LOG_DIR/version_N``, best-by-``val/acc`` and last checkpoints.

    With step groups (``plan``), Lightning counts its logging interval in groups, the loggers write
    at optimizer steps and the progress bar counts optimizer steps (see :mod:`lit_mnist.groups`).
    """
    size = plan.size
    run_dir = Path(cfg.log_dir) / f"version_{version}"
    checkpoints = run_dir / "checkpoints"  # whichever loggers there are
    loggers = (
        []
        if cfg.fast_dev_run
        else build_loggers(
            cfg.logger,
            cfg.log_dir,
            version,
            cfg.mlflow_tracking_uri,
            cfg.mlflow_experiment,
            log_graph=not cfg.compile,
        )
    )
    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=checkpoints,
            filename="epoch{epoch:02d}-val_acc{val/acc:.4f}",
            monitor="val/acc",
            mode="max",
            save_top_k=cfg.save_top_k,
            auto_insert_metric_name=False,
        ),
        LastCheckpoint(checkpoints),
        DatasetRecord(cfg.dataset),  # the datamodule's dataset_record(): classes, normalisation, shape
        GracefulInterrupt(),
        NonFiniteLossGuard(),
    ]
    if size > 1:
        callbacks.append(StepGroups(size))
    if cfg.ckpt_every_n_steps:
        callbacks.append(LastCheckpoint(checkpoints, every_n_train_steps=cfg.ckpt_every_n_steps))
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=cfg.early_stopping_patience))
    if cfg.progress_bar:
        callbacks.append(
            StepProgressBar(size, refresh_rate=20)
        )  # a terminal write per step would be most of it
    if not cfg.fast_dev_run:  # fast_dev_run disables the logger: nothing to monitor into
        callbacks += [
            LearningRateMonitor(logging_interval="step"),
            EpochSpeed(),
            TrainingCurves(run_dir),
            PredictionImages(dirpath=run_dir),
        ]
        if cfg.log_histograms:
            callbacks.append(ParameterHistograms())
    if cfg.ema is not None:  # validated, checkpointed (state_dict) and, after fit, left in the model
        callbacks.append(EMAWeightAveraging(decay=cfg.ema))
    if cfg.swa_lr is not None:
        callbacks.append(StochasticWeightAveraging(swa_lrs=cfg.swa_lr, swa_epoch_start=cfg.swa_epoch_start))
    limits = {
        f"limit_{stage}_batches": cfg[f"limit_{stage}_batches"]
        for stage in ("train", "val", "test")
        if cfg[f"limit_{stage}_batches"] is not None
    }
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=PRECISION_ALIASES.get(cfg.precision, cfg.precision),
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        deterministic=cfg.deterministic,
        gradient_clip_val=cfg.gradient_clip_val,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        fast_dev_run=cfg.fast_dev_run,
        log_every_n_steps=cfg.log_every_n_steps // size,  # Lightning counts its batches: groups
        enable_progress_bar=cfg.progress_bar,
        logger=loggers,
        callbacks=callbacks,
        profiler=build_profiler(cfg.profiler, run_dir),
        plugins=[AtomicCheckpointIO()],  # every checkpoint written beside its target, synced, renamed
        **limits,
    )


def build_profiler(name: str | None, run_dir: Path) -> Profiler | None:
    """Lightning's profiler ``name``, reporting into the run folder (``profile*.txt``; a trace for ``pytorch``)."""
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


@contextmanager
def _tuning(
    cfg: Namespace, searched: Namespace, what: str
) -> Iterator[tuple[MNISTClassifier, Any, L.Trainer]]:
    """The run's model and data, built from ``searched`` with one step per batch (as Lightning's Tuner
    needs), and a plain Trainer in this process (no loggers, checkpoints, bars or summary) whose temporary
    files go to a temporary folder; the finders' own notes on their short runs are quieted. The model is
    thrown away after: the run builds its own, from the same seed."""
    import tempfile

    if searched.lr == "auto":
        searched.lr = 1e-3  # the module needs a number; the finders do not train with it
    datamodule = build_datamodule(searched, 1)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(searched, datamodule, 1)
    with tempfile.TemporaryDirectory(prefix=f"lit_mnist_{what}_") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        yield (
            model,
            datamodule,
            L.Trainer(
                accelerator=cfg.accelerator,
                devices=parse_devices(cfg.devices),  # one (checked), the one the run trains on
                precision=PRECISION_ALIASES.get(cfg.precision, cfg.precision),
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
                max_epochs=cfg.max_epochs,  # the finders take their own numbers of steps
            ),
        )


def find_lr(cfg: Namespace) -> tuple[float, Any]:
    """Lightning's learning-rate finder (``Tuner.lr_find``) on the run's data and model (:func:`_tuning`):
    ``(suggestion, plot figure)``.

    Raises:
        RunError: when the finder has no suggestion (the loss never fell, or too few steps).
    """
    with _tuning(cfg, cfg.clone(), "lr_find") as (model, datamodule, trainer):
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion) or suggestion <= 0:
        raise RunError(
            "the learning-rate finder found no rate where the loss falls fastest; give --lr a number"
        )
    return float(suggestion), finder.plot(suggest=True)  # type: ignore[union-attr]


def find_batch_size(cfg: Namespace, max_val: int | None = None) -> int:
    """Lightning's batch-size finder on the run's data and model (:func:`_tuning`): the batch size to train with.

    ``Tuner.scale_batch_size`` in ``"power"`` mode: from 2, doubled after every 3 training steps that
    fit in the device's memory; Lightning stops at ``max_val`` (default :data:`BATCH_SIZE_AUTO_MAX`),
    which it returns without a try, or at the first power of 2 that reaches the training split's size.
    What it returns is used, as Lightning's documentation says.

    Raises:
        RunError: when the finder returns no batch size.
    """
    searched = cfg.clone()
    searched.batch_size = 2  # the finder's start (init_val)
    with _tuning(cfg, searched, "batch_size") as (model, datamodule, trainer):
        found = Tuner(trainer).scale_batch_size(
            model, datamodule=datamodule, mode="power", init_val=2, max_val=max_val or BATCH_SIZE_AUTO_MAX
        )
    if not found:
        raise RunError("the batch-size finder found no batch size that fits; give --batch-size a number")
    return int(found)


def find_last_checkpoint(log_dir: str | Path) -> Path:
    """``last.ckpt`` of the newest ``version_N`` under ``log_dir`` that has one."""
    runs = sorted(_versions(log_dir).items(), reverse=True)
    for _, run in runs:
        if (last := run / "checkpoints" / "last.ckpt").is_file():
            return last
    raise UsageError(f"--ckpt-path last: no {log_dir}/version_N/checkpoints/last.ckpt to resume from")


def _versions(log_dir: str | Path) -> dict[int, Path]:
    root = Path(log_dir)
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            if m := re.fullmatch(r"version_(\d+)", path.name):
                found[int(m[1])] = path
    return found


def reserve_version(log_dir: str | Path) -> int:
    """Create the next free ``version_N`` folder atomically and return N.

    ``mkdir`` either creates the folder or fails, so two runs started at once in the same
    ``log_dir`` never share a folder.
    """
    root = Path(log_dir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--log-dir {root} is a file, not a folder; give a folder for the runs")
    try:
        root.mkdir(parents=True, exist_ok=True)
        version = max(_versions(root), default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1
    except OSError as err:  # read-only, no permission, a file on the way
        raise UsageError(
            f"--log-dir {root}: cannot create a run folder there ({first_line(err)}); give a folder you can write"
        ) from None


def _global_rank() -> int:
    """This process's rank as launchers (torchrun, SLURM, Lightning's DDP) announce it; 0 alone."""
    return int(getattr(rank_zero_only, "rank", 0))


def _run_version(cfg: Namespace, ckpt_path: Path | None) -> int | None:
    """The version folder of this run: the resumed run's own, a new one, or (other ranks) none."""
    if (inherited := os.environ.get(RUN_VERSION_ENV)) is not None:
        return int(inherited)
    if ckpt_path is not None and ckpt_path.parent.name == "checkpoints":
        run = ckpt_path.parent.parent
        if (m := re.fullmatch(r"version_(\d+)", run.name)) and run.parent.resolve() == Path(
            cfg.log_dir
        ).resolve():
            return int(m[1])  # resuming one of our runs: keep writing into its folder
    if _global_rank() != 0:
        return None  # torchrun / SLURM ranks > 0: rank 0 names the folder and writes everything
    return reserve_version(cfg.log_dir)


def train(
    cfg: Namespace, parser: ArgumentParser | None = None, callbacks: Sequence[L.Callback] = ()
) -> dict[str, Any]:
    """Run fit then test on the best checkpoint; return the results (also written to ``results.json``).

    ``callbacks`` join the run's own (a sweep's pruning callback); an exception one of them raises
    ends the run and reaches the caller as it is.

    Raises:
        DataError, CheckpointError, UsageError: for the caller to report without a traceback.
    """
    if _global_rank() == 0 and not cfg.fast_dev_run:  # not at the first metric, after the data were read
        check_reachable(cfg.logger, cfg.mlflow_tracking_uri)
    ckpt_path = None
    if cfg.ckpt_path is not None:  # another dataset is refused before its files are looked for
        ckpt_path = find_last_checkpoint(cfg.log_dir) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        check_dataset(ckpt_path, cfg.dataset)
    if cfg.batch_size == "auto":  # before the learning rate: the rate depends on the batch size
        cfg.batch_size = find_batch_size(cfg)
        print(f"Batch-size finder: --batch-size {cfg.batch_size}, used", flush=True)
    lr_plot = None
    if cfg.lr_find or cfg.lr == "auto":
        found, lr_plot = find_lr(cfg)
        print(
            f"Learning-rate finder: suggests --lr {found:.3g}" + (", used" if cfg.lr == "auto" else ""),
            flush=True,
        )
        if cfg.lr == "auto":
            cfg.lr = float(f"{found:.3g}")  # config.yaml records the rate the run trained with
    datamodule, model, plan = build_data_and_model(cfg)
    if cfg.compile:
        model.net.compile()  # the nn.Module, in place: the state_dict keys stay those of the network
    if _global_rank() == 0:
        print(plan.notice(), flush=True)
    if ckpt_path is not None:
        check_resumable(ckpt_path, model)

    version = _run_version(cfg, ckpt_path)
    lock = _lock_run_folder(cfg, version)
    owns_env = RUN_VERSION_ENV not in os.environ and version is not None
    if owns_env:
        os.environ[RUN_VERSION_ENV] = str(version)  # DDP's re-launched processes read it
    trainer, finished = None, False
    try:
        trainer = _make_trainer(cfg, version, plan)
        trainer.callbacks.extend(callbacks)  # type: ignore[attr-defined]
        run_dir = Path(cfg.log_dir) / f"version_{version}"
        if version is not None:
            trainer.callbacks.append(SaveConfig(cfg, run_dir / CONFIG_NAME, parser or get_parser()))  # type: ignore[attr-defined]

        if trainer.is_global_zero and version is not None and lr_plot is not None:
            lr_plot.savefig(run_dir / "lr_find.png", dpi=100)
            print(f"Learning-rate finder plot: {run_dir / 'lr_find.png'}", flush=True)
        if trainer.is_global_zero and version is not None:
            for partial in remove_stale_partials(run_dir / "checkpoints"):
                print(f"Removed {partial}, left by a save that was interrupted", flush=True)
        with warnings.catch_warnings():
            if ckpt_path is not None:  # resuming into the run's own folder: of course it is not empty
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                # A checkpoint from a moved run folder or another run: its best checkpoint is not this
                # run's, and the final test takes this run's own (_own_best)
                warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
                # A run stopped after an epoch's last training batch resumes without that epoch's
                # validation (Lightning skips it): no val/acc for that epoch is expected, not a bug.
                warnings.filterwarnings(
                    "ignore", message=r"`ModelCheckpoint\(monitor='val/acc'\)` could not find"
                )
            try:
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            except SIGTERMException:
                raise _interrupted(trainer) from None
            except Aborted:  # a second Ctrl-C: where the run stood, for the message
                raise Aborted(trainer.current_epoch, trainer.global_step, run_dir / "checkpoints") from None
            except torch.OutOfMemoryError as err:
                raise RunError(_out_of_memory_message(err, cfg, trainer, run_dir)) from None
            except LoaderStateError as err:
                raise UsageError(
                    f"--ckpt-path {ckpt_path} was written in the middle of an epoch, and its position in the "
                    f"epoch does not fit this run's batches ({err}); resume it with the flags it was started "
                    "with (--batch-size, --steps-per-batch, --val-size, --devices, and --log-every-n-steps, "
                    "--max-steps, --ckpt-every-n-steps, which set the group size), or from a checkpoint "
                    "written at the end of an epoch"
                ) from None
            except CheckpointWriteError as err:  # nothing recorded it as best or last (LastCheckpoint)
                raise RunError(
                    f"{err}; training stopped in epoch {trainer.current_epoch}; checkpoints written before "
                    f"are intact in {run_dir / 'checkpoints'}{_newest(run_dir / 'checkpoints' / 'last.ckpt')}"
                ) from None
            except OSError as err:  # disk full, folder removed, ...: the written checkpoints stay intact
                raise RunError(
                    f"{err} (training stopped in epoch {trainer.current_epoch}; checkpoints written before "
                    f"are intact in {run_dir / 'checkpoints'})"
                ) from None
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = _own_best(trainer, run_dir) if version is not None else ""
        if cfg.swa_lr is not None and version is not None:
            # Lightning's SWA puts the averaged weights into the model when training ends, after the last
            # checkpoint: they are saved (every rank calls, rank 0 writes) and tested, not the best epoch's
            swa = run_dir / "checkpoints" / "swa.ckpt"
            trainer.save_checkpoint(swa, weights_only=False)
            best = str(swa)
        # The averaging callbacks' work is done: on loading a checkpoint for the test, EMAWeightAveraging
        # would put the weights it averaged *from* back into the model; the test is of the averaged ones.
        callbacks_now: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        for callback in [
            cb for cb in callbacks_now if isinstance(cb, (EMAWeightAveraging, StochasticWeightAveraging))
        ]:
            callbacks_now.remove(callback)
        try:
            with warnings.catch_warnings():  # a best checkpoint of a moved run folder names the old one
                warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
                # the averaging callbacks were taken out on purpose (above): their state is not wanted
                warnings.filterwarnings(
                    "ignore", message=r"Be aware that when using `ckpt_path`, callbacks used"
                )
                tested = trainer.test(
                    model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
                )
        except SIGTERMException:  # training is complete and saved; the test was not
            raise _interrupted(trainer, best=best or None, testing=True) from None
        except Aborted:
            raise Aborted(trainer.current_epoch, trainer.global_step, run_dir / "checkpoints") from None
        except torch.OutOfMemoryError as err:
            raise RunError(_out_of_memory_message(err, cfg, trainer, run_dir)) from None
        results: dict[str, Any] = {
            "test_acc": tested[0]["test/acc"],
            "test_loss": tested[0]["test/loss"],
            "val_acc_best": fit_metrics.get("val/acc_best"),
            "epochs": trainer.current_epoch,
            "best_checkpoint": best or None,
            "last_checkpoint": str(Path(best).parent / "last.ckpt") if best else None,
            "run_dir": str(run_dir) if version is not None else None,
            # curves.png, confusion_matrix.png: written by the monitoring callbacks (rank 0)
            "figures": written_figures(trainer),
        }
        if trainer.is_global_zero and version is not None and not cfg.fast_dev_run:
            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):  # its run exists since the first metrics were logged
                    results["mlflow_run_id"] = logger.run_id
            write_atomic(run_dir / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
            try:  # what the loggers keep of the results: a failure there costs a warning, not the results
                record_results(trainer, {**datamodule.hparams, **model.hparams}, results)
            except Exception as err:
                print(f"warning: the loggers did not take the results: {first_line(err)}", file=sys.stderr)
        graceful = _graceful(trainer)
        if (
            graceful is not None and graceful.signal_name is not None
        ):  # it came as the test ended: all is written
            finished = True
            raise Interrupted(
                graceful.signal_name, None, trainer.current_epoch, trainer.global_step, stage="finished",
                best=best or None, results=run_dir / RESULTS_NAME if version is not None else None,
            )  # fmt: skip
        finished = True
        return results
    finally:
        if trainer is not None:  # a W&B run stays open in the process until it is finished
            if (graceful := _graceful(trainer)) is not None:  # Ctrl-C and SIGTERM as before the run
                graceful.restore()
            finish_runs(trainer.loggers, finished)
        if owns_env:
            os.environ.pop(RUN_VERSION_ENV, None)
        if lock is not None:
            lock.release()


def _lock_run_folder(cfg: Namespace, version: int | None) -> RunLock | None:
    """Rank 0 takes the run folder's lock before anything is written into it; other ranks take none.

    Two processes resuming one run at once (a requeued job while the old one still runs) would both
    write into one ``version_N``; the second is refused with one line naming the first. DDP's other
    ranks write nothing there and must not wait for the lock their rank 0 holds.
    """
    if version is None or _global_rank() != 0:
        return None
    run_dir = Path(cfg.log_dir) / f"version_{version}"
    try:
        return lock_run(run_dir)
    except OSError as err:  # read-only, removed meanwhile
        raise RunError(f"{run_dir}: cannot take the run folder's lock ({first_line(err)})") from None


def _own_best(trainer: L.Trainer, run_dir: Path) -> str:
    """The best checkpoint of this run, by a path inside its folder, or ``""`` when it has none on disk.

    The best path Lightning's ``ModelCheckpoint`` remembers comes from the checkpoint a run resumed
    from: after the run folder was moved it names the old place (the file is found here by its name),
    and for a checkpoint copied from another run it names that run's file, which is not this run's.
    """
    checkpoint = trainer.checkpoint_callback
    remembered = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
    if not remembered:
        return ""
    here = run_dir / "checkpoints" / Path(remembered).name
    if here.is_file():
        return remembered if Path(remembered).resolve() == here.resolve() else str(here)
    if trainer.is_global_zero:
        print(
            f"Note: the best checkpoint this run remembers, {remembered}, is not in {here.parent}; "
            "the test uses the weights at the end of training",
            file=sys.stderr,
        )
    return ""


def _newest(last: Path) -> str:
    """``"; the last one, FILE, is from epoch E, step S"``, or ``""`` when there is none to read."""
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return f"; the last one, {last}, holds epoch {saved['epoch']}, step {saved['global_step']}"
    except Exception:  # none yet, or unreadable: say nothing more
        return ""


def record_results(trainer: L.Trainer, hparams: dict[str, Any], results: dict[str, Any]) -> None:
    """What the loggers keep of a finished run: TensorBoard's HParams entry and MLflow's artifacts.

    TensorBoard's HParams tab links the module's and datamodule's hyperparameters to the run's results,
    written under their own tags (``hp/val_acc_best``, ``hp/test_acc``): the server keeps one value per
    tag and step, so writing them under the curves' tags would replace the curves' first points.
    """
    metrics = {"hp/val_acc_best": results["val_acc_best"] or 0.0, "hp/test_acc": results["test_acc"]}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics)
    files = [("checkpoints", results["best_checkpoint"])] if results["best_checkpoint"] else []
    log_artifacts(trainer.loggers, files + [("figures", path) for path in results["figures"].values()])


class SaveConfig(L.Callback):
    """Writes the run's resolved flags to ``config.yaml`` when training starts (rank 0).

    Not before: a resume that Lightning refuses while restoring the checkpoint (another group size,
    a mid-epoch position that does not fit) leaves the run's file as it was. Without ``ckpt_path``,
    ``--config`` on the file repeats the whole run from scratch.
    """

    def __init__(self, cfg: Namespace, path: Path, parser: ArgumentParser) -> None:
        self.cfg, self.path, self.parser = cfg, path, parser

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            saved = self.cfg.clone()
            saved.ckpt_path = None
            self.parser.save(saved, self.path, overwrite=True)


def _interrupted(trainer: L.Trainer, best: str | None = None, testing: bool = False) -> Interrupted:
    """What a SIGTERM or Ctrl-C stopped: training (and the checkpoint saved then), the sanity check
    before training started (nothing saved), or the final test (``best``: what it was testing)."""
    last = [cb for cb in trainer.callbacks if isinstance(cb, LastCheckpoint)]  # type: ignore[attr-defined]
    checkpoint = next((cb.saved_on_exception for cb in last if cb.saved_on_exception is not None), None)
    if testing:
        stage = "test"
    elif any(cb.training_started for cb in last):
        stage = "training"
    else:
        stage = "sanity check"
    return Interrupted(
        _stop_signal(trainer), checkpoint, trainer.current_epoch, trainer.global_step, stage=stage, best=best
    )


def _graceful(trainer: L.Trainer) -> GracefulInterrupt | None:
    """The run's :class:`GracefulInterrupt`, which knows the signal that stopped it."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return next((cb for cb in callbacks if isinstance(cb, GracefulInterrupt)), None)


def _stop_signal(trainer: L.Trainer) -> str:
    graceful = _graceful(trainer)
    return (graceful.signal_name if graceful is not None else None) or "SIGTERM"


def _make_trainer(cfg: Namespace, version: int | None, plan: StepGroupPlan) -> L.Trainer:
    try:
        return build_trainer(cfg, version, plan)
    except (MisconfigurationException, ValueError, TypeError) as err:  # Lightning's checks of its arguments
        raise UsageError(" ".join(str(err).split())) from None
    except OSError as err:  # a logger's files (metrics.csv, ...) cannot be written: disk full, ...
        checkpoints = Path(cfg.log_dir) / f"version_{version}" / "checkpoints"
        raise RunError(
            f"{err} (starting the run's loggers; checkpoints written before are intact in {checkpoints})"
        ) from None


def _out_of_memory_message(err: BaseException, cfg: Namespace, trainer: L.Trainer, run_dir: Path) -> str:
    """One line for a device out-of-memory error: where it happened and what to change."""
    what = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
    smaller = max(cfg.batch_size // 2, 1)
    stage = (
        "testing"
        if trainer.testing
        else f"training (epoch {trainer.current_epoch}, step {trainer.global_step})"
    )
    hints = [f"pass a smaller --batch-size (e.g. {smaller}; it is per device)"]
    if cfg.precision in ("32-true", "32", "64-true", "64"):
        hints.append("--precision bf16-mixed or 16-mixed to halve the activations")
    if cfg.loader == "memory":
        hints.append("--loader torchvision to keep the dataset in host memory instead of on the device")
    kept = (
        f"; checkpoints written before are in {run_dir / 'checkpoints'}"
        if (run_dir / "checkpoints").is_dir()
        else ""
    )
    return f"out of memory on {trainer.strategy.root_device} during {stage} at --batch-size {cfg.batch_size}: {what}. Try: {'; '.join(hints)}{kept}"


def print_summary(results: dict[str, Any], cfg: Namespace, asked: frozenset[str] = frozenset()) -> None:
    """The few lines a user needs at the end of a run (``asked``: the finders it ran, :func:`searched`)."""
    print()
    print(f"Test accuracy: {results['test_acc']:.2%}  (test loss {results['test_loss']:.4f})")
    if results["best_checkpoint"]:
        print(f"Best checkpoint: {results['best_checkpoint']}")
    if results["run_dir"] and not cfg.fast_dev_run:
        print(
            f"Run folder:      {results['run_dir']}  (repeat it: --config {results['run_dir']}/{CONFIG_NAME})"
        )
        found = _finder_values(asked, cfg)
        print(
            f"Train further:   add --ckpt-path last --max-epochs N (N > {results['epochs']}) to the same flags"
            + (f", then {' '.join(found)} (what the finders gave; a resume does not search)" if found else "")
        )
        for label, line in logger_lines(results, cfg):
            print(f"{label + ':':<17}{line}")
    for index, path in enumerate(results.get("figures", {}).values()):
        print(f"{'Figures:' if index == 0 else '':<17}{path}")


def logger_lines(results: dict[str, Any], cfg: Namespace) -> list[tuple[str, str]]:
    """Where to look at the run: one ``(label, line)`` per logger, and the profiler's report."""
    run_dir = Path(results["run_dir"])
    lines = []
    if "tensorboard" in cfg.logger:
        lines.append(("TensorBoard", f"tensorboard --logdir {cfg.log_dir}"))
    if "csv" in cfg.logger:
        lines.append(("Metrics", str(run_dir / "metrics.csv")))
    if "mlflow" in cfg.logger and results.get("mlflow_run_id"):
        store = cfg.mlflow_tracking_uri or local_mlflow_uri(cfg.log_dir)
        where = f"at {store}" if cfg.mlflow_tracking_uri else f"(mlflow ui --backend-store-uri {store})"
        lines.append(
            ("MLflow", f"run {results['mlflow_run_id']} in experiment {cfg.mlflow_experiment} {where}")
        )
    if "wandb" in cfg.logger:
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        lines.append(("W&B", f"wandb sync {offline[-1]}" if offline else "the run's page on wandb.ai"))
    if cfg.profiler is not None:
        # one report per process of this machine under DDP (Lightning names them by local rank)
        processes = world_size(cfg)
        if processes is None:  # --devices -1 on the CPU: whatever this run wrote
            reports = sorted(run_dir.glob("fit-profile*.txt")) or [run_dir / "fit-profile.txt"]
        elif processes > 1:
            reports = [run_dir / f"fit-profile-{rank}.txt" for rank in range(processes // cfg.num_nodes)]
        else:
            reports = [run_dir / "fit-profile.txt"]
        trace = "; trace for TensorBoard's profiler plugin in profiler/" if cfg.profiler == "pytorch" else ""
        lines.append(("Profile", ", ".join(map(str, reports)) + trace))
    return lines


def train_main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """Entry point of ``scripts/train.py``: parse, train, test, print the summary. Returns the exit status."""
    ignore_upstream_deprecations()
    hide_advertisements()
    cfg = parse_args(argv, prog)
    if cfg.data_dir is None:
        cfg.data_dir = default_data_dir()
    asked = searched(cfg)  # before train() puts the values found in the place of auto
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        results = train(cfg)
    except Interrupted as stop:
        if _global_rank() == 0:
            print(_stop_message(stop, args, prog, cfg, asked), file=sys.stderr)
        return stop.exit_status
    except Aborted as abort:
        if _global_rank() == 0:
            print(_abort_message(abort, prog), file=sys.stderr)
        return abort.exit_status
    except (UsageError, ConfigError) as err:
        usage_exit(prog, f"{err.flag} {err.message}" if isinstance(err, ConfigError) else str(err))
    except CheckpointError as err:
        usage_exit(prog, f"--ckpt-path {err}")
    except (DataError, NonFiniteLossError, RunError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if _global_rank() == 0:
        print_summary(results, cfg, asked)
    return 0


def _stop_message(
    stop: Interrupted, args: list[str], prog: str, cfg: Namespace, asked: frozenset[str] = frozenset()
) -> str:
    """What a signal stopped and what was saved (one line), then the command that goes on from there."""
    train_cmd = "python scripts/train.py"
    if stop.stage == "finished":
        written = f"; the results are in {stop.results}" if stop.results is not None else ""
        return (
            f"{prog}: {stop.signal_name} came as the final test ended; training ({stop.epoch} epochs, step "
            f"{stop.step}) and the test had finished{written}"
        )
    if stop.stage == "test":
        evaluate = ["--ckpt-path", str(stop.best), "--data-dir", str(cfg.data_dir), "--dataset", cfg.dataset]
        return (
            f"{prog}: {stop.signal_name} stopped the final test; training had finished ({stop.epoch} epochs, "
            f"step {stop.step}) and its checkpoints are saved; no test results were written\n"
            + (
                f"Test it with: python scripts/evaluate.py {shlex.join(evaluate)}"
                if stop.best
                else f"Test it with: {train_cmd} {shlex.join(args)}"
            )
        )
    if stop.stage == "sanity check":  # before training started: nothing new to save
        again = "Resume with" if cfg.ckpt_path is not None else "Start it again with"
        return (
            f"{prog}: {stop.signal_name} stopped the run before training started (in the sanity check); "
            f"no checkpoint was written\n{again}: {train_cmd} {shlex.join(args)}"
        )
    if stop.checkpoint is None:  # e.g. --fast-dev-run, which writes no checkpoint
        return (
            f"{prog}: {stop.signal_name} stopped training in epoch {stop.epoch} after step {stop.step}; "
            "no checkpoint was written"
        )
    resume = [*_resolved(_without_flag(args, "--ckpt-path"), asked, cfg), "--ckpt-path", str(stop.checkpoint)]
    return (
        f"{prog}: {stop.signal_name} stopped training in epoch {stop.epoch} after step {stop.step}; "
        f"saved {stop.checkpoint}\nResume with: {train_cmd} {shlex.join(resume)}"
    )


def _abort_message(abort: Aborted, prog: str) -> str:
    """One line: where a second Ctrl-C aborted the run, and the last checkpoint on disk (every one is whole)."""
    where = f" in epoch {abort.epoch} after step {abort.step}" if abort.epoch is not None else ""
    last = Path(str(abort.checkpoints)) / "last.ckpt" if abort.checkpoints is not None else None
    kept = _newest(last) if last is not None else ""
    return (
        f"{prog}: a second Ctrl-C aborted the run{where}; a checkpoint being written was left unwritten "
        "and none is half-written"
        + (f"{kept}; --ckpt-path last resumes from it" if kept else "; no checkpoint of this run is on disk")
    )


def searched(cfg: Namespace) -> frozenset[str]:
    """The finders this run asks for, from its flags or its config file: ``batch_size`` and ``lr`` where
    they are ``auto``, ``lr_find`` for ``--lr-find``. Taken before :func:`train`, which puts the values found
    in their place."""
    asked = {name for name in ("batch_size", "lr") if cfg[name] == "auto"}
    return frozenset(asked | ({"lr_find"} if cfg.lr_find else set()))


def _finder_values(asked: frozenset[str], cfg: Namespace) -> list[str]:
    """What a resume of this run adds to its flags: the values the finders gave (``--batch-size N``,
    ``--lr X``) for those it asked for (:func:`searched`), and ``--no-lr-find``, as a resumed run refuses
    the finders. Flags last, so they override a config file or recipe that asked for a finder."""
    values = []
    for flag, name in (("--batch-size", "batch_size"), ("--lr", "lr")):
        if name in asked and cfg[name] != "auto":
            values += [flag, str(cfg[name])]
    return values + (["--no-lr-find"] if "lr_find" in asked else [])


def _resolved(args: list[str], asked: frozenset[str], cfg: Namespace) -> list[str]:
    """``args`` for a resume: without ``--lr-find`` (a resumed run refuses it), the finders' values last."""
    return [arg for arg in args if arg not in ("--lr-find", "--no-lr-find")] + _finder_values(asked, cfg)


def _without_flag(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """``train``'s entry point, shaped like the other commands' (``get_parser`` + ``main``)."""
    return train_main(argv, prog)
