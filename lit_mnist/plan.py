"""The plan of a run: what this machine allows (checked before anything is built) and the step-group size.

:func:`check_machine` checks what a :class:`~lit_mnist.config.RunConfig` cannot know by itself: a CUDA
GPU for what needs one, a launcher for several machines, Lightning's strategies, installed loggers,
the checkpoint to resume from. :func:`plan_step_groups` picks the run's group size (see
:mod:`lit_mnist.groups`) once, before the Trainer exists; the data, module and callbacks receive it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from lit_mnist.config import RunConfig, parse_devices
from lit_mnist.data import TensorDataModule
from lit_mnist.errors import UsageError
from lit_mnist.groups import StepGroupPlan, group_size
from lit_mnist.loggers import check_installed
from lit_mnist.runtime import THREADS_ENV, check_accelerator, cpu_share, env_threads, set_env

__all__ = [
    "check_launcher_variables",
    "check_machine",
    "groups_ruled_out",
    "launched_across_machines",
    "plan_step_groups",
    "set_threads",
    "share_threads",
    "world_size",
]  # fmt: skip


def world_size(cfg: RunConfig) -> int | None:
    """Processes of the run as the config asks for them (devices per node x nodes); None when unknown."""
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


def launched_across_machines() -> bool:
    """Whether a launcher that can place processes on several machines started this one.

    Lightning's cluster environments say it for torchrun, SLURM, LSF and MPI; by hand (the way
    Lightning documents) NODE_RANK is set on each machine (with MASTER_ADDR but on node 0); Kubeflow
    sets MASTER_ADDR and RANK.
    """
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    environments = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    if any(environment.detect() for environment in environments):
        return True
    return "NODE_RANK" in os.environ or ("MASTER_ADDR" in os.environ and "RANK" in os.environ)


#: The variables a launcher (torchrun, SLURM, by hand) sets for each process: whole numbers >= 0.
LAUNCHER_VARIABLES = ("NODE_RANK", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def check_launcher_variables() -> None:
    """Refuse a launcher's variable that is not a whole number: Lightning reads them as ``int``.

    Raises:
        UsageError: one line naming the variable.
    """
    for name in LAUNCHER_VARIABLES:
        if (value := os.environ.get(name)) is not None and not re.fullmatch(r"[0-9]+", value.strip()):
            raise UsageError(
                f"the environment variable {name}={value!r} must be a whole number >= 0 (a launcher sets it for "
                "each process); unset it, or set it as the README's 'Scale out' shows"
            )
    if (host := os.environ.get("MASTER_ADDR")) is not None and not re.fullmatch(
        r"[A-Za-z0-9_.:\[\]-]+", host
    ):
        raise UsageError(
            f"the environment variable MASTER_ADDR={host!r} is not a host name or address (node 0's, which the "
            "other processes connect to); unset it, or set it as the README's 'Scale out' shows"
        )


def check_machine(cfg: RunConfig) -> None:
    """Check what depends on this machine and its environment, before anything is built.

    Raises:
        UsageError: one line naming the flag and what to do instead.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    if cfg.strategy not in ["auto", *StrategyRegistry.available_strategies()]:
        raise UsageError(
            f"--strategy {cfg.strategy!r} is not known; use auto, ddp, ddp_spawn, fsdp, deepspeed "
            "or another name in Lightning's StrategyRegistry"
        )
    _check_finders(cfg)
    if cfg.num_nodes > 1 and not launched_across_machines():
        raise UsageError(
            f"--num-nodes {cfg.num_nodes} joins processes on {cfg.num_nodes} machines, and this process was not "
            "started by torchrun, srun (SLURM), LSF or MPI, nor given NODE_RANK (and MASTER_ADDR): it "
            "would wait for the others for ever; start it on each machine as the README's 'Several devices and "
            "nodes' shows, or leave --num-nodes at 1 on one machine"
        )
    check_launcher_variables()
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


def set_threads(cfg: RunConfig) -> int:
    """Give this process its threads (``--threads``, else :data:`THREADS_ENV`, else this process's CPU share
    divided among the run's processes on this machine); return the number.

    Raises:
        UsageError: :data:`THREADS_ENV` is set to something that is not a number of threads.
    """
    threads = cfg.threads or env_threads() or max(1, cpu_share() // _local_processes(cfg))
    torch.set_num_threads(threads)
    return threads


def share_threads(cfg: RunConfig) -> Callable[[], None]:
    """A run of several processes per machine: set :data:`THREADS_ENV` to this process's threads, which
    Lightning's launchers read and hand to every process they start (else they pick their own). Returns what
    puts the variable back as it was when the run ends."""
    if _local_processes(cfg) == 1:
        return lambda: None
    return set_env(THREADS_ENV, str(torch.get_num_threads()))


def _local_processes(cfg: RunConfig) -> int:
    return max(1, (world_size(cfg) or 1) // cfg.num_nodes)


def _check_finders(cfg: RunConfig) -> None:
    """The finders run in one process, and the batch-size finder needs a CUDA GPU's out-of-memory error."""
    if cfg.batch_size == "auto":
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
    if (cfg.lr_find or cfg.lr == "auto") and world_size(cfg) != 1:
        flag = "--lr auto" if cfg.lr == "auto" else "--lr-find"
        raise UsageError(
            f"{flag} runs Lightning's learning-rate finder in one process; run it with --devices 1 and "
            "give the multi-device run the rate it finds (--lr)"
        )


def groups_ruled_out(cfg: RunConfig) -> str:
    """The setting that rules step groups out (why Lightning must take one step per batch), or ``""``."""
    reasons = (
        (cfg.steps_per_batch == 1, "--steps-per-batch 1"),
        (cfg.loader != "memory", f"--loader {cfg.loader} yields one batch at a time"),
        (bool(cfg.gradient_clip_val), "--gradient-clip-val: Lightning clips gradients only with automatic optimization"),
        (cfg.accumulate_grad_batches > 1,
         "--accumulate-grad-batches: Lightning accumulates gradients only with automatic optimization"),
        (cfg.limit_train_batches is not None, "--limit-train-batches counts Lightning's batches"),
        (bool(cfg.fast_dev_run), "--fast-dev-run counts Lightning's batches"),
        (cfg.ema is not None, "--ema: Lightning's weight averaging updates once per batch Lightning sees"),
        (cfg.swa_lr is not None,
         "--swa-lr: Lightning's SWA sets its own learning-rate schedule, stepped by automatic optimization"),
    )  # fmt: skip
    return next((reason for ruled_out, reason in reasons if ruled_out), "")


def plan_step_groups(cfg: RunConfig, datamodule: TensorDataModule) -> StepGroupPlan:
    """The group size of the run: ``steps_per_batch``, lowered to divide every step count Lightning checks.

    Reads the training split's size (``prepare_data`` and ``setup``, which Lightning's own calls then
    find done) and the number of processes from the config.
    """
    requested = cfg.steps_per_batch
    if ruled_out := groups_ruled_out(cfg):
        return StepGroupPlan(1, requested, ruled_out, ruled_out=True)
    processes = world_size(cfg)
    if processes is None:
        return StepGroupPlan(
            1, requested, f"--devices {cfg.devices}: the number of processes is not known", ruled_out=True
        )
    assert isinstance(cfg.batch_size, int), "the batch-size finder runs before the plan"
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
