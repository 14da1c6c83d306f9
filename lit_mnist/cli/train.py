"""``train``: flags and config file -> :class:`~lit_mnist.config.RunConfig` -> :func:`lit_mnist.run.train`.

``python scripts/train.py`` and ``lit-mnist train`` both end up in :func:`main`: parse the flags
(:mod:`lit_mnist.cli.flags`), call the library, turn its typed errors into one line and an exit status
(2 for usage errors, 1 for a failed run, 128 + the signal for a stopped one), and print the summary.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser

from lit_mnist.cli.common import usage_exit
from lit_mnist.cli.flags import flag, parse_run, run_parser
from lit_mnist.config import RunConfig
from lit_mnist.errors import (
    Aborted,
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    RunError,
    UsageError,
)
from lit_mnist.runtime import (
    env_threads,
    hide_advertisements,
    ignore_upstream_deprecations,
    one_line_warnings,
)
from lit_mnist.startup import quiet_gc_first_imports

if TYPE_CHECKING:  # the library is imported once the flags say the run goes ahead
    from lit_mnist.folds import FoldsResult
    from lit_mnist.run import RunResult

TRAIN_CMD = "python scripts/train.py"


def get_parser(prog: str = "train.py") -> ArgumentParser:
    """The parser of ``train``'s flags (:func:`lit_mnist.cli.flags.run_parser`)."""
    return run_parser(prog)


def main(argv: Sequence[str] | None = None, prog: str = "train.py") -> int:
    """Entry point of ``scripts/train.py``: parse, train, test, print the summary. Returns the exit status."""
    ignore_upstream_deprecations()
    hide_advertisements()
    one_line_warnings()
    asked = parse_run(argv, prog)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        env_threads()  # before torch loads OpenMP, which reads the variable and complains in its own words
    except UsageError as err:
        usage_exit(prog, str(err))

    with quiet_gc_first_imports():  # torch and Lightning, once the flags say it runs (lit_mnist.startup)
        from lit_mnist.folds import FoldsResult, cross_validate
        from lit_mnist.run import train
        from lit_mnist.runs import global_rank

    folds = bool(asked.folds) and asked.fold is None  # --folds K: K runs and the final model
    try:
        result: RunResult | FoldsResult = cross_validate(asked) if folds else train(asked)
    except Interrupted as stop:
        if global_rank() == 0:
            message = folds_stop_message(stop, args, prog) if folds else stop_message(stop, args, prog, asked)
            print(message, file=sys.stderr)
        return stop.exit_status
    except Aborted as abort:
        if global_rank() == 0:
            print(abort_message(abort, prog), file=sys.stderr)
        return abort.exit_status
    except ConfigError as err:
        usage_exit(prog, f"{err.flag} {err.message}")
    except UsageError as err:
        usage_exit(prog, str(err))
    except CheckpointError as err:
        usage_exit(prog, f"--ckpt-path {err}")
    except (DataError, NonFiniteLossError, RunError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if global_rank() == 0:
        if isinstance(result, FoldsResult):
            print_folds(result)
        else:
            print_summary(result, asked)
    return 0


train_main = main


# --------------------------------------------------------------------------- what the user reads
def print_summary(result: RunResult, asked: RunConfig) -> None:
    """The few lines a user needs at the end of a run (``asked``: the config before the finders ran)."""
    from lit_mnist.checkpoints import CONFIG_NAME

    cfg = result.config
    print()
    print(f"Test accuracy: {result.test_acc:.2%}  ({interval_text(result)}test loss {result.test_loss:.4f})")
    if result.best_checkpoint:
        print(f"Best checkpoint: {result.best_checkpoint}")
    if result.run_dir and not cfg.fast_dev_run:
        print(f"Run folder:      {result.run_dir}  (repeat it: --config {result.run_dir}/{CONFIG_NAME})")
        found = finder_values(asked, cfg)
        print(
            f"Train further:   add --ckpt-path last --max-epochs N (N > {result.epochs}) to the same flags"
            + (f", then {' '.join(found)} (what the finders gave; a resume does not search)" if found else "")
        )
        for label, line in logger_lines(result, cfg):
            print(f"{label + ':':<17}{line}")
    for index, path in enumerate(result.figures.values()):
        print(f"{'Figures:' if index == 0 else '':<17}{path}")


def interval_text(result: RunResult) -> str:
    """``"95% Wilson score interval 97.21-97.80 on 10,000 test images; "`` (an en dash), or ``""`` without one."""
    from lit_mnist.stats import EN_DASH, INTERVAL_METHOD

    if result.test_acc_ci is None or result.test_images is None:
        return ""
    low, high = result.test_acc_ci
    return f"{INTERVAL_METHOD} {100 * low:.2f}{EN_DASH}{100 * high:.2f} on {result.test_images:,} test images; "


def logger_lines(result: RunResult, cfg: RunConfig) -> list[tuple[str, str]]:
    """Where to look at the run: one ``(label, line)`` per logger, and the profiler's report."""
    from lit_mnist.loggers import local_mlflow_uri
    from lit_mnist.plan import world_size

    run_dir = Path(result.run_dir or "")
    mlflow_run_id = result.mlflow_run_id
    lines = []
    if "tensorboard" in cfg.logger:
        lines.append(("TensorBoard", f"tensorboard --logdir {cfg.log_dir}"))
    if "csv" in cfg.logger:
        lines.append(("Metrics", str(run_dir / "metrics.csv")))
    if "mlflow" in cfg.logger and mlflow_run_id:
        store = cfg.mlflow_tracking_uri or local_mlflow_uri(cfg.log_dir)
        where = f"at {store}" if cfg.mlflow_tracking_uri else f"(mlflow ui --backend-store-uri {store})"
        lines.append(("MLflow", f"run {mlflow_run_id} in experiment {cfg.mlflow_experiment} {where}"))
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


def stop_message(stop: Interrupted, args: list[str], prog: str, asked: RunConfig) -> str:
    """What a signal stopped and what was saved (one line), then the command that goes on from there."""
    used = stop.config if isinstance(stop.config, RunConfig) else asked
    if stop.stage == "finished":
        written = f"; the results are in {stop.results}" if stop.results is not None else ""
        return (
            f"{prog}: {stop.signal_name} came as the final test ended; training ({stop.epoch} epochs, step "
            f"{stop.step}) and the test had finished{written}"
        )
    if stop.stage == "test":
        evaluate = [
            "--ckpt-path",
            str(stop.best),
            "--data-dir",
            str(used.data_dir),
            "--dataset",
            used.dataset,
        ]
        again = (
            f"python scripts/evaluate.py {shlex.join(evaluate)}"
            if stop.best
            else f"{TRAIN_CMD} {shlex.join(args)}"
        )
        return (
            f"{prog}: {stop.signal_name} stopped the final test; training had finished ({stop.epoch} epochs, "
            f"step {stop.step}) and its checkpoints are saved; no test results were written\nTest it with: {again}"
        )
    if stop.stage == "sanity check":  # before training started: nothing new to save
        again = "Resume with" if asked.ckpt_path is not None else "Start it again with"
        return (
            f"{prog}: {stop.signal_name} stopped the run before training started (in the sanity check); "
            f"no checkpoint was written\n{again}: {TRAIN_CMD} {shlex.join(args)}"
        )
    if stop.checkpoint is None:  # e.g. --fast-dev-run, which writes no checkpoint
        return (
            f"{prog}: {stop.signal_name} stopped training in epoch {stop.epoch} after step {stop.step}; "
            "no checkpoint was written"
        )
    kept = [arg for arg in without_flag(args, "--ckpt-path") if arg not in ("--lr-find", "--no-lr-find")]
    resume = [*kept, *finder_values(asked, used), "--ckpt-path", str(stop.checkpoint)]
    return (
        f"{prog}: {stop.signal_name} stopped training in epoch {stop.epoch} after step {stop.step}; "
        f"saved {stop.checkpoint}\nResume with: {TRAIN_CMD} {shlex.join(resume)}"
    )


def abort_message(abort: Aborted, prog: str) -> str:
    """One line: where a second Ctrl-C aborted the run, and the last checkpoint on disk (every one is whole)."""
    from lit_mnist.run import newest_checkpoint

    where = f" in epoch {abort.epoch} after step {abort.step}" if abort.epoch is not None else ""
    last = Path(str(abort.checkpoints)) / "last.ckpt" if abort.checkpoints is not None else None
    kept = newest_checkpoint(last) if last is not None else ""
    return (
        f"{prog}: a second Ctrl-C aborted the run{where}; a checkpoint being written was left unwritten "
        "and none is half-written"
        + (f"{kept}; --ckpt-path last resumes from it" if kept else "; no checkpoint of this run is on disk")
    )


def finder_values(asked: RunConfig, used: RunConfig) -> list[str]:
    """What a resume of this run adds to its flags: the values the finders gave (``--batch-size N``,
    ``--lr X``) where ``asked`` said auto, and ``--no-lr-find``, as a resumed run refuses the finders.
    Flags last, so they override a config file or recipe that asked for a finder."""
    values = []
    for name in ("batch_size", "lr"):
        if getattr(asked, name) == "auto" and getattr(used, name) != "auto":
            values += [flag(name), str(getattr(used, name))]
    return values + (["--no-lr-find"] if asked.lr_find else [])


def without_flag(args: list[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


# --------------------------------------------------------------------------- --folds K
def print_folds(cv: FoldsResult) -> None:
    """A cross-validation's table of folds, their mean ± standard deviation, and the final model's test."""
    from lit_mnist.folds import FOLDS_NAME

    print()
    print(f"Cross-validation, {len(cv.runs)} folds of the training images: {cv.folder}")
    print(f"  {'fold':>4}  {'epochs':>6}  {'best val/acc':>12}  run folder")
    for k, run in enumerate(cv.runs):
        acc = "-" if run.val_acc_best is None else f"{run.val_acc_best:.2%}"
        print(f"  {k:>4}  {run.epochs:>6}  {acc:>12}  {run.run_dir}")
    print(
        f"Validation accuracy: {cv.mean:.2%} ± {cv.std:.2%} "
        f"(mean ± sample standard deviation of the {len(cv.runs)} folds' best)"
    )
    if (final := cv.final) is not None:
        print(
            f"Final model, trained on all the training images: test accuracy {final.test_acc:.2%} "
            f"({interval_text(final)}test loss {final.test_loss:.4f})"
        )
        if final.best_checkpoint:
            print(f"Final checkpoint: {final.best_checkpoint}")
    print(f"Summary: {Path(cv.folder) / FOLDS_NAME}")


def folds_stop_message(stop: Interrupted, args: list[str], prog: str) -> str:
    """Which run of a cross-validation a signal stopped, and the command that goes on: the same one."""
    used = stop.config if isinstance(stop.config, RunConfig) else None
    which = "a run" if used is None else "the final model" if used.fold is None else f"fold {used.fold}"
    saved = f"; saved {stop.checkpoint}" if stop.checkpoint is not None else ""
    return (
        f"{prog}: {stop.signal_name} stopped {which} of the cross-validation ({stop.stage}, epoch {stop.epoch}, "
        f"step {stop.step}){saved}\nGo on with the same command (finished runs are kept, a stopped one resumes "
        f"from its last.ckpt): {TRAIN_CMD} {shlex.join(args)}"
    )
