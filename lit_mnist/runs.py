"""Run folders: ``LOG_DIR/version_N``, reserved atomically, found again to resume, locked while a run writes.

A run's folder holds everything it writes (checkpoints, ``config.yaml``, ``results.json``, the
loggers' files). Rank 0 names it; DDP's re-launched processes read its number from
:data:`RUN_VERSION_ENV`, which rank 0 sets for them (:func:`share_version`) and never reads itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_mnist.errors import RunError, UsageError
from lit_mnist.runtime import RunLock, first_line, lock_run, set_env, write_atomic

__all__ = [
    "ERROR_NAME",
    "RESULTS_NAME",
    "RUN_VERSION_ENV",
    "find_last_checkpoint",
    "global_rank",
    "lock_run_folder",
    "note_failure",
    "reserve_version",
    "run_version",
    "share_version",
    "versions",
]

#: Set by a run's rank 0 for the processes DDP's launcher re-launches, so that they log into its run
#: folder; read by those ranks only.
RUN_VERSION_ENV = "LIT_MNIST_RUN_VERSION"
RESULTS_NAME = "results.json"
#: What a run that failed writes into its folder: the error's line, then its traceback.
ERROR_NAME = "error.txt"


def global_rank() -> int:
    """This process's rank as launchers (torchrun, SLURM, Lightning's DDP) announce it; 0 alone."""
    return int(getattr(rank_zero_only, "rank", 0))


def versions(log_dir: str | Path) -> dict[int, Path]:
    """The ``version_N`` folders under ``log_dir``, by N."""
    root = Path(log_dir)
    found = {}
    if root.is_dir():
        for path in root.iterdir():
            if m := re.fullmatch(r"version_(\d+)", path.name):
                found[int(m[1])] = path
    return found


def find_last_checkpoint(log_dir: str | Path) -> Path:
    """``last.ckpt`` of the newest ``version_N`` under ``log_dir`` that has one."""
    for _, run in sorted(versions(log_dir).items(), reverse=True):
        if (last := run / "checkpoints" / "last.ckpt").is_file():
            return last
    raise UsageError(f"--ckpt-path last: no {log_dir}/version_N/checkpoints/last.ckpt to resume from")


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
        version = max(versions(root), default=-1) + 1
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


def run_version(log_dir: str, ckpt_path: Path | None) -> int | None:
    """The version folder of this run: the resumed run's own, a new one, or (other ranks) rank 0's or none.

    Rank 0 never reads :data:`RUN_VERSION_ENV`: a value left in a user's environment must not send a
    new run into a finished run's folder.
    """
    if global_rank() != 0 and (inherited := _inherited_version()) is not None:
        return inherited
    if ckpt_path is not None and ckpt_path.parent.name == "checkpoints":
        run = ckpt_path.parent.parent
        if (m := re.fullmatch(r"version_(\d+)", run.name)) and run.parent.resolve() == Path(
            log_dir
        ).resolve():
            return int(m[1])  # resuming one of our runs: keep writing into its folder
    if global_rank() != 0:
        return None  # torchrun / SLURM ranks > 0: rank 0 names the folder and writes everything
    return reserve_version(log_dir)


def _inherited_version() -> int | None:
    """The run folder number rank 0 set in :data:`RUN_VERSION_ENV` for this re-launched process, if any."""
    if (value := os.environ.get(RUN_VERSION_ENV)) is None:
        return None
    if not re.fullmatch(r"[0-9]+", value):
        raise UsageError(
            f"${RUN_VERSION_ENV}={value!r} is not a run folder number (a non-negative integer); "
            "lit_mnist sets it for DDP's processes: unset it"
        )
    return int(value)


def share_version(version: int | None) -> Callable[[], None]:
    """Rank 0: set :data:`RUN_VERSION_ENV` to its run folder's number for DDP's re-launched processes.

    Returns what puts the previous value back (or removes the variable) when the run ends. Other
    ranks change nothing.
    """
    if version is None or global_rank() != 0:
        return lambda: None
    return set_env(RUN_VERSION_ENV, str(version))


def lock_run_folder(run_dir: Path | None) -> RunLock | None:
    """Rank 0 takes the run folder's lock before anything is written into it; other ranks take none.

    Two processes resuming one run at once (a requeued job while the old one still runs) would both
    write into one ``version_N``; the second is refused with one line naming the first. DDP's other
    ranks write nothing there and must not wait for the lock their rank 0 holds.
    """
    if run_dir is None or global_rank() != 0:
        return None
    try:
        return lock_run(run_dir)
    except OSError as err:  # read-only, removed meanwhile
        raise RunError(f"{run_dir}: cannot take the run folder's lock ({first_line(err)})") from None


def note_failure(run_dir: Path, err: BaseException) -> None:
    """Write ``err`` (its line, then its traceback) to ``run_dir``'s :data:`ERROR_NAME`; a run folder that
    cannot take it (a full disk) is left as it is: the error itself reaches the caller either way."""
    text = f"{type(err).__name__}: {first_line(err)}\n\n" + "".join(traceback.format_exception(err))
    with contextlib.suppress(OSError):
        write_atomic(run_dir / ERROR_NAME, text)
