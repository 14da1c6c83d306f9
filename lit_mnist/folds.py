"""K-fold cross-validation: K ordinary runs, each validating on another fold, then a final model.

    import lit_mnist as lm
    cv = lm.cross_validate(lm.RunConfig(folds=5, max_epochs=2, data_dir="../shared/data"))
    print(f"{cv.mean:.2%} ± {cv.std:.2%}", cv.final.test_acc if cv.final else None)

Fold ``k``'s run is :func:`lit_mnist.train` of the config with ``fold=k``: it validates on fold ``k`` of
the training images' stratified, seeded folds (:func:`lit_mnist.splits.stratified_folds`) and trains on
the others; the test set is never in a fold. The final model (``folds_final``) trains on all the
training images (``val_size=0``) with the same settings, and its test is the cross-validation's one
test figure. Everything goes into one folder::

    LOG_DIR/folds5_<digest>/fold_0/version_0 ... fold_4/version_0, final/version_0, folds.json

The folder's name is a digest of the settings, so the same settings find the same folder: running the
same command again keeps the runs that finished (their ``results.json``), resumes a stopped one from
its ``last.ckpt`` and starts the rest. Under DDP every process computes the same folder and the same
runs from the same files, and rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from lit_mnist.config import RunConfig
from lit_mnist.data import default_data_dir
from lit_mnist.errors import RunError, UsageError
from lit_mnist.run import RunResult, train
from lit_mnist.runlist import is_locked
from lit_mnist.runs import RESULTS_NAME, global_rank
from lit_mnist.runtime import write_atomic

__all__ = ["FOLDS_NAME", "FoldsResult", "cross_validate", "folds_folder"]

#: The summary a cross-validation writes into its folder.
FOLDS_NAME = "folds.json"
#: Settings that do not change what the folds compute: left out of the folder's name.
_NOT_IN_NAME = ("ckpt_path", "log_dir", "progress_bar", "threads", "folds_final")
STD_METHOD = "sample standard deviation (n - 1) of the folds' best validation accuracies"


@dataclass(frozen=True)
class FoldsResult:
    """What a cross-validation reached.

    Attributes:
        folder: The folder holding the runs and ``folds.json``.
        runs: Fold ``k``'s run at index ``k``.
        final: The final model's run (all the training images, tested), or None without one.
        config: The cross-validation's config (data folder resolved).
    """

    folder: str
    runs: tuple[RunResult, ...]
    final: RunResult | None
    config: RunConfig

    @property
    def val_accs(self) -> tuple[float, ...]:
        """Each fold's best validation accuracy (NaN for a fold that never validated)."""
        return tuple(float("nan") if r.val_acc_best is None else r.val_acc_best for r in self.runs)

    @property
    def mean(self) -> float:
        """The mean of the folds' best validation accuracies."""
        return statistics.fmean(self.val_accs)

    @property
    def std(self) -> float:
        """Their sample standard deviation (n - 1): the spread from fold to fold."""
        return statistics.stdev(self.val_accs)

    def to_dict(self, finished: bool = True) -> dict[str, Any]:
        """The content of ``folds.json``."""
        final = self.final
        return {
            "status": "finished" if finished else "running",
            "folds": self.config.folds,
            "val_acc_mean": self.mean if finished else None,
            "val_acc_std": self.std if finished else None,
            "std_method": STD_METHOD,
            "runs": [
                {"fold": k, "val_acc_best": r.val_acc_best, "epochs": r.epochs, "run_dir": r.run_dir}
                for k, r in enumerate(self.runs)
            ],
            "final": None if final is None else {
                "test_acc": final.test_acc,
                "test_loss": final.test_loss,
                "test_images": final.test_images,
                "test_acc_ci": None if final.test_acc_ci is None else list(final.test_acc_ci),
                "epochs": final.epochs,
                "best_checkpoint": final.best_checkpoint,
                "run_dir": final.run_dir,
            },
            "config": _settings(self.config),
        }  # fmt: skip


def cross_validate(
    config: RunConfig, callbacks: Sequence[L.Callback] = (), folder: str | Path | None = None
) -> FoldsResult:
    """Train fold 0 to K-1 of ``config.folds``, then (``folds_final``) the final model; write ``folds.json``.

    ``callbacks`` join every run's own, as :func:`lit_mnist.train`'s do. ``folder``: where the runs go
    (a sweep's trial gives its own); by default :func:`folds_folder`, which the same settings find
    again, so that a second call goes on where the first stopped.

    Raises:
        UsageError: ``config`` does not ask for a cross-validation (``folds`` >= 2, no ``fold``).
        Interrupted: SIGTERM or Ctrl-C stopped a run; its ``config`` says which (``fold``, ``log_dir``).
        ConfigError, DataError, RunError, ...: as :func:`lit_mnist.train` raises them.
    """
    if config.folds < 2 or config.fold is not None:
        raise UsageError(
            "cross_validate needs folds >= 2 and no fold (a config with fold=k is one run: train)"
        )
    cfg = config if config.data_dir is not None else dataclasses.replace(config, data_dir=default_data_dir())
    parent = Path(folder) if folder is not None else folds_folder(cfg)
    runs: list[RunResult] = []
    for k in range(cfg.folds):
        fold = dataclasses.replace(cfg, fold=k, log_dir=str(parent / f"fold_{k}"))
        runs.append(_run_or_keep(fold, callbacks))
        _write_summary(parent, FoldsResult(str(parent), tuple(runs), None, cfg), finished=False)
    final = None
    if cfg.folds_final:
        final_cfg = dataclasses.replace(cfg, folds=0, fold=None, val_size=0, log_dir=str(parent / "final"))
        final = _run_or_keep(final_cfg, callbacks)
    result = FoldsResult(str(parent), tuple(runs), final, cfg)
    _write_summary(parent, result, finished=True)
    return result


def folds_folder(config: RunConfig) -> Path:
    """``LOG_DIR/folds<K>_<digest>``: the same settings give the same folder, other settings another."""
    settings = _settings(config)
    settings["data_dir"] = str(Path(config.data_dir or default_data_dir()).resolve())
    for name in _NOT_IN_NAME:
        settings.pop(name, None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return Path(config.log_dir) / f"folds{config.folds}_{digest[:8]}"


def _run_or_keep(cfg: RunConfig, callbacks: Sequence[L.Callback]) -> RunResult:
    """The run in ``cfg.log_dir/version_0``: kept when finished, resumed from its ``last.ckpt``, or started."""
    run_dir = Path(cfg.log_dir) / "version_0"
    if (results := run_dir / RESULTS_NAME).is_file():
        return _finished(results, cfg)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if global_rank() == 0:
        if resume is None and run_dir.is_dir() and any(run_dir.iterdir()) and not is_locked(run_dir):
            # an attempt that failed before its first checkpoint: kept beside, as it was, for its error.txt
            run_dir.rename(run_dir.with_name(f"failed_{time.strftime('%Y%m%d-%H%M%S')}_{run_dir.name}"))
        run_dir.mkdir(parents=True, exist_ok=True)
        what = "resumes from " + resume if resume else "starts in " + str(run_dir)
        print(f"{_name(cfg)} {what}", flush=True)
    return train(dataclasses.replace(cfg, ckpt_path=resume), callbacks, version=0)


def _finished(results: Path, cfg: RunConfig) -> RunResult:
    """A finished run's :class:`RunResult`, from its ``results.json``."""
    try:
        saved = json.loads(results.read_text())
        names = {f.name for f in dataclasses.fields(RunResult)} - {"config"}
        values = {key: value for key, value in saved.items() if key in names}
        if values.get("test_acc_ci") is not None:
            values["test_acc_ci"] = tuple(values["test_acc_ci"])
        result = RunResult(**values, config=cfg)
    except (OSError, ValueError, TypeError) as err:
        raise RunError(f"{results}: not a run's results ({err}); remove it to train that run again") from None
    if global_rank() == 0:
        print(f"{_name(cfg)} is finished: {results}", flush=True)
    return result


def _name(cfg: RunConfig) -> str:
    return f"Fold {cfg.fold}" if cfg.fold is not None else "The final model"


def _settings(cfg: RunConfig) -> dict[str, Any]:
    return {key: value for key, value in cfg.to_dict().items() if key != "ckpt_path"}


def _write_summary(parent: Path, result: FoldsResult, finished: bool) -> None:
    if global_rank() == 0:
        write_atomic(parent / FOLDS_NAME, json.dumps(result.to_dict(finished), indent=2) + "\n")
