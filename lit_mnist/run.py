"""``train(config) -> RunResult``: a whole run as one library call.

    import lit_mnist as lm
    result = lm.train(lm.RunConfig(max_epochs=1, data_dir="../shared/data"))

The stages, each a short function: **plan** (check the machine, find the checkpoint to resume, run
the finders), **build** (datamodule, module, step-group plan, Trainer), **fit**, **test** (on the
best checkpoint) and **record** (``results.json``, the loggers' HParams and artifacts). One place,
:func:`_stage_errors`, turns what a stage raises into the run's typed error. ``train`` never prints
the end-of-run summary and never exits; it can be called several times in one process.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from lit_mnist.build import build_data_and_model, build_trainer
from lit_mnist.checkpoints import CONFIG_NAME, check_dataset, check_resumable
from lit_mnist.config import RunConfig
from lit_mnist.data import default_data_dir
from lit_mnist.environment import start_record
from lit_mnist.errors import (
    Aborted,
    CheckpointWriteError,
    Interrupted,
    LoaderStateError,
    RunError,
    UsageError,
)
from lit_mnist.plan import check_machine, set_threads, share_threads
from lit_mnist.runs import (
    RESULTS_NAME,
    find_last_checkpoint,
    global_rank,
    lock_run_folder,
    note_failure,
    run_version,
    share_version,
)
from lit_mnist.runtime import first_line, remove_stale_partials, write_atomic
from lit_mnist.stats import INTERVAL_METHOD, accuracy_interval
from lit_mnist.stopping import GracefulInterrupt, LastCheckpoint

__all__ = ["RunResult", "SaveConfig", "newest_checkpoint", "record_results", "train"]


@dataclass(frozen=True)
class RunResult:
    """What a finished run reached and where it left it.

    Attributes:
        test_acc: Accuracy on the test set, of the best checkpoint (or the averaged weights).
        test_loss: Loss on the test set.
        val_acc_best: The best validation accuracy of the run.
        epochs: Epochs trained (in total, when resumed).
        best_checkpoint: The checkpoint tested; None without one (``fast_dev_run``).
        last_checkpoint: ``last.ckpt`` beside it, from which ``ckpt_path`` resumes.
        run_dir: ``LOG_DIR/version_N``; None on the ranks other than 0 of a torchrun or SLURM job.
        figures: PNG files the monitoring callbacks wrote, by name.
        config: The config the run trained with: the finders' values in place of ``auto``.
        mlflow_run_id: The MLflow run, when ``logger`` has mlflow.
        test_images: How many test images ``test_acc`` is the proportion of; None where it is not one
            (a limited test, targets that are not class labels).
        test_acc_ci: The 95% Wilson score interval of ``test_acc`` (:mod:`lit_mnist.stats`), or None.
    """

    test_acc: float
    test_loss: float
    val_acc_best: float | None
    epochs: int
    best_checkpoint: str | None
    last_checkpoint: str | None
    run_dir: str | None
    figures: dict[str, str] = field(default_factory=dict)
    config: RunConfig = field(default_factory=RunConfig)
    mlflow_run_id: str | None = None
    test_images: int | None = None
    test_acc_ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        results = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("config", "mlflow_run_id")}
        if self.test_acc_ci is not None:
            results |= {"test_acc_ci": list(self.test_acc_ci), "interval_method": INTERVAL_METHOD}
        return results | ({"mlflow_run_id": self.mlflow_run_id} if self.mlflow_run_id else {})


def train(config: RunConfig, callbacks: Sequence[L.Callback] = (), version: int | None = None) -> RunResult:
    """Plan, build, fit, test on the best checkpoint and record a run; return its results.

    ``callbacks`` join the run's own (a sweep's pruning callback); an exception one of them raises
    ends the run and reaches the caller as it is. ``version``: a folder ``LOG_DIR/version_N`` the caller
    reserved (:func:`lit_mnist.runs.reserve_version`) to know it before the run starts, as a sweep's
    trial does; by default the run reserves the next one itself (or resumes into its checkpoint's).

    Raises:
        ConfigError, UsageError, DataError, CheckpointError, RunError, NonFiniteLossError: one line each.
        Interrupted: SIGTERM or Ctrl-C stopped the run (what was saved, and ``config``, the one it used).
        Aborted: a second Ctrl-C.
    """
    if config.folds and config.fold is None:  # K runs and a final one, not one
        raise UsageError("folds: a cross-validation is lit_mnist.cross_validate(config); train runs one fold (fold=k)")
    cfg, ckpt_path, lr_plot = _plan(config)
    try:
        return _run(cfg, ckpt_path, lr_plot, callbacks, version)
    except Interrupted as stop:
        stop.config = cfg
        raise


# --------------------------------------------------------------------------- plan
def _plan(config: RunConfig) -> tuple[RunConfig, Path | None, Any]:
    """The config to train with (data folder resolved, finders run), the checkpoint to resume, the lr plot."""
    from lit_mnist.finders import run_finders
    from lit_mnist.loggers import check_reachable

    cfg = config if config.data_dir is not None else dataclasses.replace(config, data_dir=default_data_dir())
    check_machine(cfg)
    set_threads(cfg)
    if global_rank() == 0 and not cfg.fast_dev_run:  # not at the first metric, after the data were read
        check_reachable(list(cfg.logger), cfg.mlflow_tracking_uri)
    ckpt_path = None
    if cfg.ckpt_path is not None:  # another dataset is refused before its files are looked for
        ckpt_path = find_last_checkpoint(cfg.log_dir) if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
        check_dataset(ckpt_path, cfg.dataset)
    cfg, lr_plot = run_finders(cfg)
    return cfg, ckpt_path, lr_plot


# --------------------------------------------------------------------------- build, fit, test, record
def _run(
    cfg: RunConfig,
    ckpt_path: Path | None,
    lr_plot: Any,
    callbacks: Sequence[L.Callback],
    reserved: int | None,
) -> RunResult:
    datamodule, model, plan = build_data_and_model(cfg)
    if global_rank() == 0:
        print(plan.notice(), flush=True)
    # other classes are refused; other files of the same classes are said
    changed = check_resumable(ckpt_path, model, datamodule) if ckpt_path is not None else None
    if changed and global_rank() == 0:
        print(f"warning: {changed}", file=sys.stderr, flush=True)
    version = reserved if reserved is not None else run_version(cfg.log_dir, ckpt_path)
    run_dir = Path(cfg.log_dir) / f"version_{version}"
    lock = lock_run_folder(run_dir if version is not None else None)
    unshare = share_version(version)  # DDP's re-launched processes read it
    unshare_threads = share_threads(cfg)  # and the number of threads each takes
    trainer, finished = None, False
    try:
        trainer = _trainer(cfg, run_dir, version, plan)
        if warning := start_record(trainer, run_dir if version is not None else None, ckpt_path):
            print(f"warning: {warning}", file=sys.stderr)  # environment.json is written by now
        own: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        own += [*callbacks, *([SaveConfig(cfg, run_dir / CONFIG_NAME)] if version is not None else [])]
        if trainer.is_global_zero and version is not None:
            _tidy_run_folder(run_dir, lr_plot)
        val_acc_best = _fit(trainer, model, datamodule, ckpt_path, cfg, run_dir)
        best = _own_best(trainer, run_dir) if version is not None else ""
        best = _save_swa(trainer, run_dir) if cfg.swa_lr is not None and version is not None else best
        tested = _test(trainer, model, datamodule, best, cfg, run_dir)
        result = _result(trainer, tested, val_acc_best, best, cfg, run_dir if version is not None else None)
        result = _with_interval(result, datamodule, cfg)
        if trainer.is_global_zero and version is not None and not cfg.fast_dev_run:
            result = _record(trainer, result, {**datamodule.hparams, **model.hparams})
        finished = True
        _raise_if_signalled(trainer, best, result)
        return result
    except Exception as err:
        if version is not None and global_rank() == 0 and not isinstance(err, (Interrupted, Aborted)):
            note_failure(run_dir, err)  # lit-mnist runs lists it as failed, though it may hold a last.ckpt
        raise
    finally:
        if trainer is not None:
            if (graceful := _graceful(trainer)) is not None:  # Ctrl-C and SIGTERM as before the run
                graceful.restore()
            from lit_mnist.loggers import finish_runs

            finish_runs(trainer.loggers, finished)  # a W&B run stays open in the process until finished
        unshare()
        unshare_threads()
        if lock is not None:
            lock.release()


def _trainer(cfg: RunConfig, run_dir: Path, version: int | None, plan: Any) -> L.Trainer:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return build_trainer(cfg, run_dir, version, plan)
    except (MisconfigurationException, ValueError, TypeError) as err:  # Lightning's checks of its arguments
        raise UsageError(" ".join(str(err).split())) from None
    except OSError as err:  # a logger's files (metrics.csv, ...) cannot be written: disk full, ...
        raise RunError(
            f"{err} (starting the run's loggers; checkpoints written before are intact in {run_dir / 'checkpoints'})"
        ) from None


def _tidy_run_folder(run_dir: Path, lr_plot: Any) -> None:
    """Rank 0, before training: the learning-rate finder's plot in, a half-written checkpoint out."""
    if lr_plot is not None:
        lr_plot.savefig(run_dir / "lr_find.png", dpi=100)
        print(f"Learning-rate finder plot: {run_dir / 'lr_find.png'}", flush=True)
    for partial in remove_stale_partials(run_dir / "checkpoints"):
        print(f"Removed {partial}, left by a save that was interrupted", flush=True)


def _fit(
    trainer: L.Trainer, model: Any, datamodule: Any, ckpt_path: Path | None, cfg: RunConfig, run_dir: Path
) -> float | None:
    """Lightning's fit, resumed from ``ckpt_path``; returns the best validation accuracy."""
    with warnings.catch_warnings(), _stage_errors(trainer, cfg, run_dir, ckpt_path):
        if ckpt_path is not None:  # resuming into the run's own folder: of course it is not empty
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            # A checkpoint from a moved run folder or another run: its best checkpoint is not this
            # run's, and the final test takes this run's own (_own_best)
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
            # A run stopped after an epoch's last training batch resumes without that epoch's
            # validation (Lightning skips it): no val/acc for that epoch is expected.
            warnings.filterwarnings(
                "ignore", message=r"`ModelCheckpoint\(monitor='val/acc'\)` could not find"
            )
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = trainer.callback_metrics.get("val/acc_best")
    return float(best) if best is not None else None


def _save_swa(trainer: L.Trainer, run_dir: Path) -> str:
    """Lightning's SWA puts the averaged weights into the model when training ends, after the last
    checkpoint: they are saved (every rank calls, rank 0 writes) and tested, not the best epoch's."""
    swa = run_dir / "checkpoints" / "swa.ckpt"
    trainer.save_checkpoint(swa, weights_only=False)
    return str(swa)


def _test(
    trainer: L.Trainer, model: Any, datamodule: Any, best: str, cfg: RunConfig, run_dir: Path
) -> dict[str, float]:
    from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

    # The averaging callbacks' work is done: on loading a checkpoint for the test, EMAWeightAveraging
    # would put the weights it averaged *from* back into the model; the test is of the averaged ones.
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    for callback in [
        cb for cb in callbacks if isinstance(cb, (EMAWeightAveraging, StochasticWeightAveraging))
    ]:
        callbacks.remove(callback)
    with warnings.catch_warnings(), _stage_errors(trainer, cfg, run_dir, best=best or None, testing=True):
        warnings.filterwarnings(
            "ignore", message=r"The dirpath has changed from"
        )  # a moved run folder's best
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used")
        tested = trainer.test(
            model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
        )
    return dict(tested[0])


def _result(
    trainer: L.Trainer,
    tested: dict[str, float],
    val_acc_best: float | None,
    best: str,
    cfg: RunConfig,
    run_dir: Path | None,
) -> RunResult:
    from lit_mnist.callbacks import written_figures

    return RunResult(
        test_acc=tested["test/acc"],
        test_loss=tested["test/loss"],
        val_acc_best=val_acc_best,
        epochs=trainer.current_epoch,
        best_checkpoint=best or None,
        last_checkpoint=str(Path(best).parent / "last.ckpt") if best else None,
        run_dir=str(run_dir) if run_dir is not None else None,
        figures=written_figures(trainer),  # curves.png, confusion_matrix.png (rank 0)
        config=cfg,
    )


def _with_interval(result: RunResult, datamodule: Any, cfg: RunConfig) -> RunResult:
    """The test accuracy's interval, where it is a proportion of the whole test split's class labels."""
    whole = cfg.limit_test_batches is None or (
        isinstance(cfg.limit_test_batches, float) and cfg.limit_test_batches == 1.0
    )  # an int is a count of batches: 1 is one batch, not the whole split
    if cfg.fast_dev_run or not whole:
        return result
    try:
        labels = datamodule.split("test")[1]
    except KeyError:  # ddp_spawn: the spawned processes tested; this one reads the test split itself
        datamodule.setup("test")
        labels = datamodule.split("test")[1]
    if labels.dim() != 1 or labels.is_floating_point():
        return result
    n = len(labels)
    return dataclasses.replace(result, test_images=n, test_acc_ci=accuracy_interval(result.test_acc, n))


def _record(trainer: L.Trainer, result: RunResult, hparams: dict[str, Any]) -> RunResult:
    """``results.json``, then what the loggers keep of it (a failure there costs a warning, not the results)."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):  # its run exists since the first metrics were logged
            result = dataclasses.replace(result, mlflow_run_id=logger.run_id)
    assert result.run_dir is not None
    write_atomic(Path(result.run_dir) / RESULTS_NAME, json.dumps(result.to_dict(), indent=2) + "\n")
    try:
        record_results(trainer, hparams, result)
    except Exception as err:
        print(f"warning: the loggers did not take the results: {first_line(err)}", file=sys.stderr)
    return result


def record_results(trainer: L.Trainer, hparams: dict[str, Any], result: RunResult) -> None:
    """What the loggers keep of a finished run: TensorBoard's HParams entry and MLflow's artifacts.

    TensorBoard's HParams tab links the hyperparameters to the results, written under their own tags
    (``hp/val_acc_best``, ``hp/test_acc``): the server keeps one value per tag and step, so writing
    them under the curves' tags would replace the curves' first points.
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_mnist.loggers import log_artifacts

    metrics = {"hp/val_acc_best": result.val_acc_best or 0.0, "hp/test_acc": result.test_acc}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics)
    files = [("checkpoints", result.best_checkpoint)] if result.best_checkpoint else []
    log_artifacts(trainer.loggers, files + [("figures", path) for path in result.figures.values()])


class SaveConfig(L.Callback):
    """Writes the run's config to ``config.yaml`` when training starts (rank 0).

    Not before: a resume that Lightning refuses while restoring the checkpoint leaves the run's file
    as it was. ``ckpt_path`` is left out, so ``--config`` on the file repeats the whole run from scratch.
    """

    def __init__(self, cfg: RunConfig, path: Path) -> None:
        self.cfg, self.path = cfg, path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            saved = dataclasses.replace(self.cfg, ckpt_path=None).to_dict()
            write_atomic(self.path, yaml.safe_dump(saved, sort_keys=False))


# --------------------------------------------------------------------------- errors and signals
@contextmanager
def _stage_errors(
    trainer: L.Trainer, cfg: RunConfig, run_dir: Path, ckpt_path: Path | None = None,
    best: str | None = None, testing: bool = False,
) -> Iterator[None]:  # fmt: skip
    """Turn what fit or test raises into the run's typed error, naming where the run stood and what is saved."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    checkpoints = run_dir / "checkpoints"
    try:
        yield
    except SIGTERMException:
        raise _interrupted(trainer, best=best, testing=testing) from None
    except Aborted:  # a second Ctrl-C: where the run stood, for the message
        raise Aborted(trainer.current_epoch, trainer.global_step, checkpoints) from None
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
            f"{err}; {_where(trainer, testing)}; checkpoints written before are intact in "
            f"{checkpoints}{newest_checkpoint(checkpoints / 'last.ckpt')}"
        ) from None
    except OSError as err:  # disk full, folder removed, ...: the written checkpoints stay intact
        raise RunError(
            f"{err} ({_where(trainer, testing)}; checkpoints written before are intact in {checkpoints})"
        ) from None


def _where(trainer: L.Trainer, testing: bool) -> str:
    """Where the run stood when it stopped, read when it stopped."""
    return "the final test stopped" if testing else f"training stopped in epoch {trainer.current_epoch}"


def _raise_if_signalled(trainer: L.Trainer, best: str, result: RunResult) -> None:
    """A signal that came as the final test ended (DDP agrees at its end): all is written, say so."""
    graceful = _graceful(trainer)
    if graceful is not None and graceful.signal_name is not None:
        results = Path(result.run_dir) / RESULTS_NAME if result.run_dir is not None else None
        raise Interrupted(
            graceful.signal_name, None, trainer.current_epoch, trainer.global_step, stage="finished",
            best=best or None, results=results,
        )  # fmt: skip


def _own_best(trainer: L.Trainer, run_dir: Path) -> str:
    """The best checkpoint of this run, by a path inside its folder, or ``""`` when it has none on disk.

    The best path Lightning's ``ModelCheckpoint`` remembers comes from the checkpoint a run resumed
    from: after the run folder was moved it names the old place (the file is found here by its name),
    and for a checkpoint copied from another run it names that run's file, which is not this run's.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

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


def newest_checkpoint(last: Path) -> str:
    """``"; the last one, FILE, holds epoch E, step S"``, or ``""`` when there is none to read."""
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return f"; the last one, {last}, holds epoch {saved['epoch']}, step {saved['global_step']}"
    except Exception:  # none yet, or unreadable: say nothing more
        return ""


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
    graceful = _graceful(trainer)
    signal_name = (graceful.signal_name if graceful is not None else None) or "SIGTERM"
    return Interrupted(
        signal_name, checkpoint, trainer.current_epoch, trainer.global_step, stage=stage, best=best
    )


def _graceful(trainer: L.Trainer) -> GracefulInterrupt | None:
    """The run's :class:`GracefulInterrupt`, which knows the signal that stopped it."""
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return next((cb for cb in callbacks if isinstance(cb, GracefulInterrupt)), None)


def _out_of_memory_message(err: BaseException, cfg: RunConfig, trainer: L.Trainer, run_dir: Path) -> str:
    """One line for a device out-of-memory error: where it happened and what to change."""
    what = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
    batch_size = int(cfg.batch_size)  # a number by now: the finder ran in the plan
    stage = (
        "testing"
        if trainer.testing
        else f"training (epoch {trainer.current_epoch}, step {trainer.global_step})"
    )
    hints = [f"pass a smaller --batch-size (e.g. {max(batch_size // 2, 1)}; it is per device)"]
    if cfg.precision in ("32-true", "32", "64-true", "64"):
        hints.append("--precision bf16-mixed or 16-mixed to halve the activations")
    if cfg.loader == "memory":
        hints.append("--loader torchvision to keep the dataset in host memory instead of on the device")
    checkpoints = run_dir / "checkpoints"
    kept = f"; checkpoints written before are in {checkpoints}" if checkpoints.is_dir() else ""
    return (
        f"out of memory on {trainer.strategy.root_device} during {stage} at --batch-size {batch_size}: {what}. "
        f"Try: {'; '.join(hints)}{kept}"
    )
