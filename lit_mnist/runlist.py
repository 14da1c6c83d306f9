"""The runs of a log folder side by side, from the files each run writes; no torch, no database.

A run folder is one that holds ``config.yaml``, ``results.json``, ``environment.json`` or a
``checkpoints/`` folder, or a ``version_N`` folder with no runs inside (a run that failed before
writing anything): ``LOG_DIR/version_N``, and run folders nested deeper (a parent folder holding one
run per fold). Its status:

* ``finished``: ``results.json`` is written;
* ``running``: a process holds the folder's lock (``.lock``, :func:`lit_mnist.runtime.lock_run`);
* ``failed``: ``error.txt`` (a run that ended in an error writes it) and no results;
* ``stopped``: ``checkpoints/last.ckpt`` and no results: ``--ckpt-path .../last.ckpt`` resumes it (a fold of
  ``--folds``: the same ``--folds`` command);
* ``failed`` too: none of these.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lit_mnist.config import RunConfig
from lit_mnist.runtime import LOCK_NAME
from lit_mnist.stats import accuracy_interval
from lit_mnist.yamltext import strict_load

__all__ = ["RunInfo", "config_diff", "differing_settings", "find_run_folders", "list_runs", "read_run"]

CONFIG_NAME, RESULTS_NAME, ENVIRONMENT_NAME = "config.yaml", "results.json", "environment.json"
#: What a failed run writes (lit_mnist.runs.ERROR_NAME; this module imports no torch or Lightning).
ERROR_NAME = "error.txt"
RUN_FILES = (CONFIG_NAME, RESULTS_NAME, ENVIRONMENT_NAME)
#: Folders inside a run that hold no runs: not searched (a checkpoints/ folder with hundreds of files).
NOT_RUNS = frozenset(("checkpoints", "wandb", "profiler", "mlruns", "mlartifacts", "sweeps", "__pycache__"))
#: Settings shown in columns of their own, or that say where a run is rather than what it trains.
NOT_SETTINGS = frozenset(("dataset", "model", "ckpt_path", "log_dir"))
STATUSES = ("finished", "running", "stopped", "failed")
_VERSION = re.compile(r"version_(\d+)")
#: A best checkpoint's name: ``epoch08-val_acc0.9772.ckpt``, or ``epoch08.ckpt`` for a run without validation.
_CKPT_NAME = re.compile(r"epoch(\d+)(?:-val_acc(\d+(?:\.\d+)?))?\.ckpt")
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it


@dataclass
class RunInfo:
    """One run folder as its files describe it; ``None`` where a file does not say."""

    path: Path
    name: str
    status: str
    start_time: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    val_acc_best: float | None = None
    test_acc: float | None = None
    test_acc_ci: tuple[float, float] | None = None

    @property
    def dataset(self) -> str | None:
        return _str_or_none(self.config.get("dataset"))

    @property
    def model(self) -> str | None:
        return _str_or_none(self.config.get("model"))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- finding and reading
def find_run_folders(log_dir: Path, max_depth: int = 4) -> list[Path]:
    """The run folders under ``log_dir`` (``log_dir`` itself when it is one), at most ``max_depth`` deep."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> bool:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # removed meanwhile, no permission
            return False
        names = {e.name for e in entries}
        subfolders = [
            e for e in entries if _is_folder(e) and e.name not in NOT_RUNS and not e.name.startswith(".")
        ]
        nested = False
        if depth < max_depth:
            for entry in sorted(subfolders, key=lambda e: e.name):
                nested |= visit(Path(entry.path), depth + 1)
        own = any(name in names for name in RUN_FILES) or "checkpoints" in names
        if own or (_VERSION.fullmatch(folder.name) and not nested):
            found.append(folder)
            return True
        return nested

    visit(Path(log_dir), 0)
    return found


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def read_run(path: Path, log_dir: Path) -> RunInfo:
    """What ``path``'s files say of the run; an unreadable file counts as absent."""
    config = _read(path / CONFIG_NAME, yaml_file=True)
    if config:  # a setting added since the run was made: the run had its default
        config = {**config_defaults(), **config}
    results = _read(path / RESULTS_NAME)
    environment = _read(path / ENVIRONMENT_NAME)
    name = path.relative_to(log_dir).as_posix() if path != log_dir else path.name
    run = RunInfo(path, name or str(path), run_status(path, results), config=config, results=results)
    run.environment = environment
    run.start_time = _start_time(path, environment)
    if results:
        run.epochs = _int(results.get("epochs"))
        run.val_acc_best = _float(results.get("val_acc_best"))
        run.test_acc = _float(results.get("test_acc"))
        run.test_acc_ci = _interval(results, run.test_acc)
    else:  # a run without results: its validated epochs, from metrics.csv, else from its checkpoints' names
        saved = _validated_epochs(path) or _saved_checkpoints(path)
        run.epochs = max((epoch + 1 for epoch, _ in saved), default=None)
        run.val_acc_best = max((acc for _, acc in saved if acc is not None), default=None)
    return run


@functools.cache
def config_defaults() -> dict[str, Any]:
    """Every setting's default (:class:`~lit_mnist.config.RunConfig`), as ``config.yaml`` writes it."""
    return RunConfig().to_dict()


def _read(path: Path, yaml_file: bool = False) -> dict[str, Any]:
    try:
        text = path.read_text()
        if not yaml_file:
            loaded = json.loads(text)
        elif "&" in text or "*" in text:  # an anchor or alias, which lit_mnist never writes: read strictly
            loaded = strict_load(text)
        else:
            loaded = yaml.load(text, Loader=_SAFE_LOADER)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def run_status(path: Path, results: dict[str, Any]) -> str:
    """``running``, ``finished``, ``stopped`` or ``failed`` (see the module's description)."""
    if is_locked(path):
        return "running"
    if results:
        return "finished"
    if (path / ERROR_NAME).is_file():  # a run that failed says so, whatever it saved before
        return "failed"
    if (path / "checkpoints" / "last.ckpt").is_file():
        return "stopped"
    return "failed"


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock; asked without waiting.

    A shared lock is tried and let go at once: it fails while a run holds its exclusive one. The
    kernel releases a dead process's lock, so a run killed with ``kill -9`` does not count as running.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no run locks there
        return False
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file: no run ever held it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False


def _start_time(path: Path, environment: dict[str, Any]) -> str | None:
    """When the run first started: its environment record (the first process's, for a resumed run), else
    the time its lock file names."""
    earlier = environment.get("earlier")
    first = (
        earlier[0] if isinstance(earlier, list) and earlier and isinstance(earlier[0], dict) else environment
    )
    if isinstance(first.get("start_time"), str):
        return str(first["start_time"])
    try:
        holder = (path / LOCK_NAME).read_text(errors="replace").split()
    except OSError:
        return None
    fields = dict(zip(holder[::2], holder[1::2], strict=False))
    return fields.get("started")


def _validated_epochs(path: Path) -> list[tuple[int, float | None]]:
    """``(epoch, val/acc)`` of each validation the CSV logger wrote into ``path/metrics.csv``."""
    try:
        with open(path / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    found: list[tuple[int, float | None]] = []
    for row in rows:
        try:
            if row.get("val/acc") and row.get("epoch"):
                found.append((int(float(row["epoch"])), float(row["val/acc"])))
        except ValueError:  # a row cut short by a stop
            continue
    return found


def _saved_checkpoints(path: Path) -> list[tuple[int, float | None]]:
    """``(epoch, val_acc)`` of the best checkpoints in ``path/checkpoints``, from their names."""
    try:
        names = os.listdir(path / "checkpoints")
    except OSError:
        return []
    return [(int(m[1]), float(m[2]) if m[2] else None) for name in names if (m := _CKPT_NAME.fullmatch(name))]


def _interval(results: dict[str, Any], test_acc: float | None) -> tuple[float, float] | None:
    saved = results.get("test_acc_ci")
    if isinstance(saved, list) and len(saved) == 2 and all(isinstance(v, int | float) for v in saved):
        return float(saved[0]), float(saved[1])
    n = _int(results.get("test_images"))
    if test_acc is not None and n and 0 <= test_acc <= 1:
        return accuracy_interval(test_acc, n)
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def list_runs(log_dir: str | Path) -> list[RunInfo]:
    """Every run under ``log_dir``, in the order of their folders (``version_2`` before ``version_10``)."""
    root = Path(log_dir)
    return sorted(
        (read_run(path, root) for path in find_run_folders(root)), key=lambda r: natural_key(r.name)
    )


def natural_key(text: str) -> list[Any]:
    """``version_10`` after ``version_2``: digits compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --------------------------------------------------------------------------- comparing
def differing_settings(runs: Sequence[RunInfo]) -> list[str]:
    """The config keys whose values are not the same in every run that has a config (a run that failed before
    training started has none; a key one run lacks counts as different)."""
    runs = [run for run in runs if run.config]
    keys = sorted({key for run in runs for key in run.config} - NOT_SETTINGS)
    missing = object()
    return [
        key
        for key in keys
        if len({json.dumps(run.config.get(key, missing), sort_keys=True, default=str) for run in runs}) > 1
    ]


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"determinism": {"forced": x}}`` -> ``{"determinism.forced": x}``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, first's value, second's value)`` for every key whose values differ (``None``: absent)."""
    a, b = flatten(first), flatten(second)
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def shown(value: Any) -> str:
    """A setting's value as a table shows it: lists comma-separated, ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(shown(v) for v in value)
    return str(value)


def local_time(iso: str | None) -> str:
    """``2026-12-07T18:03:10+00:00`` as this machine's local ``2026-12-07 19:03``; ``-`` for none."""
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return (moment.astimezone() if moment.tzinfo else moment).strftime("%Y-%m-%d %H:%M")


def with_values(runs: Iterable[RunInfo], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Each run as a plain record: its columns and the values of the settings ``keys``."""
    return [
        {
            "version": run.name,
            "path": str(run.path),
            "start_time": run.start_time,
            "status": run.status,
            "dataset": run.dataset,
            "model": run.model,
            "epochs": run.epochs,
            "val_acc_best": run.val_acc_best,
            "test_acc": run.test_acc,
            "test_acc_ci": list(run.test_acc_ci) if run.test_acc_ci is not None else None,
            "settings": {key: run.config.get(key) for key in keys},
        }
        for run in runs
    ]
