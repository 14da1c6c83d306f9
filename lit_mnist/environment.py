"""What ran, where: the software, machine, code version and command of a run, as plain values.

Each run writes its record to ``version_N/environment.json`` as soon as its Trainer exists (so a run
that fails later still has one), and :class:`EnvironmentRecord` adds it to every checkpoint
(``checkpoint["lit_mnist_environment"]``; plain values, as checkpoints are read with
``weights_only=True``). A resumed run's file holds the new process's record, and the records of the
processes before it under ``earlier`` (oldest first). A resume compares the checkpoint's record with this
process's and warns in one line when bit-for-bit resumption cannot hold (:func:`resume_differences`).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_mnist.runtime import write_atomic

__all__ = [
    "ENVIRONMENT_NAME",
    "EnvironmentRecord",
    "collect_environment",
    "resume_differences",
    "start_record",
]

#: The record's file in a run folder.
ENVIRONMENT_NAME = "environment.json"
#: The checkpoint entry holding the record.
ENVIRONMENT_KEY = "lit_mnist_environment"
#: How long a ``git`` query may take before the commit is recorded as unknown (a slow network filesystem).
GIT_TIMEOUT_S = 3.0


def collect_environment() -> dict[str, Any]:
    """This process's software, machine, code version and command line (no Trainer needed)."""
    import lightning
    import torchmetrics

    import lit_mnist

    cuda = torch.cuda.is_available()
    return {
        "start_time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "command_line": list(sys.argv),
        "python_executable": sys.executable,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass torch.load(weights_only=True) refuses
        "lightning": str(lightning.__version__),
        "torchmetrics": str(torchmetrics.__version__),
        "cuda": None if torch.version.cuda is None else str(torch.version.cuda),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "os": platform.platform(),
        "lit_mnist": lit_mnist.__version__,
        **git_state(Path(lit_mnist.__file__).resolve().parent.parent),
    }


def cpu_model() -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s where there is one, else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(source: Path) -> dict[str, Any]:
    """``{"git_commit", "git_dirty"}`` of the checkout ``source`` when lit_mnist runs from one, else Nones.

    Only a checkout whose top folder is ``source`` counts: an installed copy inside some other
    repository (a virtualenv in a project) is not that repository's code.
    """
    unknown = {"git_commit": None, "git_dirty": None}
    if not (source / ".git").exists():
        return unknown

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(source), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, a timeout, not a repository after all
        return unknown
    return {"git_commit": commit, "git_dirty": dirty}


def determinism() -> dict[str, Any]:
    """The determinism switches as they are now (the Trainer sets them for ``--deterministic``), and
    which operations they force to be deterministic."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    forced = []
    if enabled:
        forced.append(
            "every torch operation that has a deterministic implementation, cuDNN convolutions included "
            f"(torch.use_deterministic_algorithms; the others {'warn' if warn_only else 'raise an error'})"
        )
        if not torch.backends.cudnn.benchmark:
            forced.append(
                "cuDNN's algorithm choice: fixed, not benchmarked per input shape (cudnn.benchmark off)"
            )
        if cublas in (":4096:8", ":16:8"):
            forced.append(f"cuBLAS matrix products (CUBLAS_WORKSPACE_CONFIG={cublas})")
    if torch.backends.cudnn.deterministic:
        forced.append("cuDNN convolutions (torch.backends.cudnn.deterministic)")
    return {
        "deterministic_algorithms": enabled,
        "warn_only": warn_only,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": cublas,
        "forced": forced,
    }


def trainer_facts(trainer: L.Trainer) -> dict[str, Any]:
    """What the Trainer decided: the device kind and name it trains on, processes, precision, determinism."""
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device_type": device.type,
        "device_name": name,
        "num_devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "determinism": determinism(),
    }


class EnvironmentRecord(L.Callback):
    """Writes the environment record into every checkpoint (``checkpoint["lit_mnist_environment"]``).

    Args:
        record: Plain values only; ``None`` (the default): :func:`collect_environment` now.
    """

    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self.record = record if record is not None else collect_environment()

    def start(self, trainer: L.Trainer, run_dir: Path | None) -> dict[str, Any]:
        """Complete the record with the Trainer's facts and (rank 0) write ``run_dir/environment.json``."""
        self.record.update(trainer_facts(trainer))
        if run_dir is not None and trainer.is_global_zero:
            path = run_dir / ENVIRONMENT_NAME
            written = {**self.record, **({"earlier": earlier} if (earlier := _earlier(path)) else {})}
            write_atomic(path, json.dumps(written, indent=2) + "\n")
        return self.record

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[ENVIRONMENT_KEY] = dict(self.record)


def _earlier(path: Path) -> list[dict[str, Any]]:
    """The records of the processes that ran this run before (a resumed run keeps them, oldest first)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet (a new run), or unreadable: nothing to keep
        return []
    if not isinstance(previous, dict):
        return []
    earlier = previous.pop("earlier", [])
    return [*(earlier if isinstance(earlier, list) else []), previous]


def start_record(trainer: L.Trainer, run_dir: Path | None, ckpt_path: Path | None) -> str | None:
    """Write the run's ``environment.json`` (rank 0, through the Trainer's :class:`EnvironmentRecord`);
    return the one-line warning of :func:`resume_differences` when resuming ``ckpt_path``, else ``None``."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    record = next((cb for cb in callbacks if isinstance(cb, EnvironmentRecord)), None)
    if record is None:
        return None
    current = record.start(trainer, run_dir)
    if ckpt_path is None or not trainer.is_global_zero:
        return None
    try:  # read and checked before (check_resumable); mmap: only the record is read from disk
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not this function's to report: the resume itself says what is wrong
        return None
    why = resume_differences(saved if isinstance(saved, dict) else {}, current)
    return f"--ckpt-path {ckpt_path}: {why}" if why else None


#: What must stay the same for a resumed run to end with the weights an uninterrupted one would have.
BIT_EXACT_KEYS = {
    "torch": "torch",
    "cuda": "CUDA",
    "cudnn": "cuDNN",
    "device_type": "device kind",
    "device_name": "device",
    "world_size": "number of processes",
    "precision": "precision",
}


def resume_differences(checkpoint: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why resuming ``checkpoint`` here is not bit-for-bit what the run would have done, or ``None``.

    ``checkpoint``: a checkpoint's contents (one written before lit_mnist recorded the environment has
    no record, and nothing is said); ``current``: this run's record.
    """
    saved = checkpoint.get(ENVIRONMENT_KEY)
    if not isinstance(saved, dict):
        return None
    changed = [
        f"{label} {saved[key]} -> {current.get(key)}"
        for key, label in BIT_EXACT_KEYS.items()
        if key in saved and key in current and saved[key] != current[key]
    ]
    if not changed:
        return None
    return (
        f"the checkpoint was written with another environment ({'; '.join(changed)}): the run goes on, but "
        "not bit for bit as it would have gone there"
    )
