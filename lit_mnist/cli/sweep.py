"""``sweep``: a hyperparameter search with Optuna in which every trial is an ordinary ``train`` run.

    lit-mnist sweep --space examples/sweep.yaml --trials 20 [train.py flags for every trial]
    lit-mnist sweep --study sweep --report

The search space is a YAML file (:mod:`lit_mnist.cli.sweep_space`); the flags of ``train`` on the
command line go to every trial and override the file's ``fixed:`` flags. Each trial is
:func:`lit_mnist.cli.train.train` on its own ``LOG_DIR/version_N`` (TensorBoard with the HParams
entry, ``config.yaml``, checkpoints, ``results.json``), with two callbacks more: one that reads the
metric at each validation epoch and Optuna's Lightning pruning callback.

The study lives in an Optuna RDB storage, ``sqlite:///LOG_DIR/sweeps.db`` unless ``--storage URL``
names another database (PostgreSQL, MySQL: several machines then share the study). The same command
continues a study; several processes may run it at once. Why SQLite and not Optuna's journal file for
several processes on one machine: Optuna's docs advise the journal file (``JournalFileBackend``) for
multi-process work on one host and warn against SQLite "at scale", but only ``RDBStorage`` has
heartbeats, the one public way to mark a trial whose worker was killed (``kill -9``, a lost machine)
as failed. A sweep's workers write a few rows per epoch while a trial trains for seconds to hours, so
SQLite with a long lock timeout (the remedy Optuna's FAQ gives) holds a handful of workers well; the
first creation of the tables is serialised with a lock on the database's folder.

A trial ends in one of Optuna's states and, when not complete, a ``reason`` user attribute: pruned
(the pruner, on the validation metric of an epoch; a NaN loss is reported to the pruner as NaN, which
it prunes once it has the trials it needs), failed (flags the run refuses, an error in the run:
the sweep goes on), or failed because its worker stopped (SIGTERM/Ctrl-C: the sweep stops too; a
killed worker: its heartbeat stops and the next start of any worker marks it failed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import socket
import sys
import traceback
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
from jsonargparse import ArgumentParser, Namespace

from lit_mnist.cli.common import one_line, usage_exit
from lit_mnist.cli.sweep_space import Param, Space, load_space
from lit_mnist.cli.train import (
    RUN_VERSION_ENV,
    build_datamodule,
    build_model,
    check_config,
    check_not_null,
    reserve_version,
    train,
    world_size,
)
from lit_mnist.cli.train import get_parser as train_parser
from lit_mnist.data import default_data_dir
from lit_mnist.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    NonFiniteLossError,
    RunError,
    UsageError,
)
from lit_mnist.runtime import (
    first_line,
    hide_advertisements,
    ignore_upstream_deprecations,
    replace_atomic,
    write_atomic,
)

if TYPE_CHECKING:
    import optuna

#: The metrics a sweep can optimise (logged at every validation epoch) and their natural direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {"val/acc": "maximize", "val/loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
#: The default storage's file in the log folder, and the folder of each study's results there.
STORAGE_NAME = "sweeps.db"
RESULTS_DIR = "sweeps"
#: Seconds a SQLite connection waits for another worker's write lock (Optuna's FAQ on SQLite).
SQLITE_TIMEOUT = 60.0
#: Where the trials' flags differ from train.py's defaults: one device (a trial runs in this process),
#: no progress bar (several workers may share a terminal). The space file and the command line override.
TRIAL_DEFAULTS: dict[str, Any] = {"devices": "1", "progress_bar": False}
#: Flags of train.py that a sweep sets itself or cannot take, with the reason.
RESERVED = {
    "log_dir": "is the sweep's own flag (--log-dir: trials go to LOG_DIR/version_N)",
    "ckpt_path": "cannot be swept: every trial starts from scratch",
    "fast_dev_run": "cannot be swept: a fast dev run writes no run folder to compare",
    "config": "is not a flag a trial takes",
}
#: Study attributes: the space and metric it was created with (a continued sweep must keep them).
ATTR_SPACE, ATTR_METRIC = "lit_mnist:space", "lit_mnist:metric"
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


class TrialFailed(Exception):
    """A trial that could not finish (its ``reason`` user attribute says why); the sweep goes on."""


# --------------------------------------------------------------------------- flags
def get_parser(prog: str = "sweep.py") -> ArgumentParser:
    """train.py's flags (given to every trial) and the sweep's own, in a group of their own."""
    parser = train_parser(prog)
    parser.description = (
        "Search hyperparameters with Optuna: every trial is a train.py run in LOG_DIR/version_N. "
        "The train.py flags given here go to every trial."
    )
    sweep = parser.add_argument_group("Sweep")
    sweep.add_argument(
        "--space",
        type=str | None,
        default=None,
        help="YAML file: 'space:' (the flags to search: {low, high, log/step} ranges or lists of choices) and "
        "'fixed:' (flags every trial takes). See examples/sweep.yaml.",
    )
    sweep.add_argument(
        "--trials",
        type=int | None,
        default=None,
        help="Run until the study holds N trials (any state, all workers together; --sampler grid: the whole grid).",
    )
    sweep.add_argument(
        "--timeout",
        type=float | None,
        default=None,
        help="Start no trial after this many seconds (a started trial runs to its end).",
    )
    sweep.add_argument("--metric", type=Literal[tuple(METRICS)], default="val/acc", help="What to optimise.")
    sweep.add_argument(
        "--direction",
        type=Literal["maximize", "minimize"] | None,
        default=None,
        help="Default: maximize val/acc, minimize val/loss.",
    )
    sweep.add_argument("--sampler", type=Literal[SAMPLERS], default="tpe", help="Optuna's sampler.")
    sweep.add_argument("--sampler-seed", type=int | None, default=None, help="Seed of the sampler.")
    sweep.add_argument(
        "--pruner",
        type=Literal[PRUNERS],
        default="median",
        help="Stops unpromising trials on the metric at each validation epoch.",
    )
    sweep.add_argument(
        "--pruner-startup-trials",
        type=int,
        default=5,
        help="median: prune only once this many trials have completed (Optuna's n_startup_trials).",
    )
    sweep.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help=f"Optuna storage URL (default sqlite:///LOG_DIR/{STORAGE_NAME}); e.g. "
        "postgresql://user:password@host/db to share the study between machines.",
    )
    sweep.add_argument(
        "--study", type=str | None, default=None, help="Study name (default: the --space file's name)."
    )
    sweep.add_argument(
        "--report",
        action="store_true",
        help="Show the study's results (table, best config, plots) and run nothing.",
    )
    sweep.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="Seconds between a running trial's heartbeats; a trial silent for twice this is marked failed.",
    )
    return parser


#: The sweep's own flags (the rest of the parser's flags are train.py's, given to every trial).
SWEEP_FLAGS = (
    "space", "trials", "timeout", "metric", "direction", "sampler", "sampler_seed", "pruner",
    "pruner_startup_trials", "storage", "study", "report", "heartbeat",
)  # fmt: skip


def trial_flags() -> set[str]:
    """The names (with underscores) of train.py's flags."""
    return {
        key for key in train_parser().get_defaults().as_dict() if key not in ("config", "__default_config__")
    }


def parse_args(argv: Sequence[str] | None, prog: str) -> tuple[Namespace, dict[str, Any]]:
    """The sweep's flags (with their defaults) and the train.py flags given explicitly, for every trial."""
    parser = get_parser(prog)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parser.parse_args(args)
        given = parser.parse_args(args, defaults=False).as_dict()
    except ArgumentError as err:
        usage_exit(prog, one_line(str(err), args))
    flags = trial_flags()
    explicit = {key: value for key, value in given.items() if key in flags and key not in RESERVED}
    return opts, explicit


def check_options(opts: Namespace) -> None:
    """Ranges and combinations of the sweep's own flags; UsageError names the flag."""
    if not opts.report and opts.space is None:
        raise UsageError("--space FILE is required to run a sweep (or --report --study NAME to show one)")
    if opts.trials is not None and opts.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {opts.trials}")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {opts.timeout}")
    if not opts.report and opts.trials is None and opts.timeout is None and opts.sampler != "grid":
        raise UsageError("give --trials N or --timeout SECONDS (or both) to say when the sweep ends")
    if opts.heartbeat < 1:
        raise UsageError(f"--heartbeat must be >= 1 second, got {opts.heartbeat}")
    if opts.pruner_startup_trials < 0:
        raise UsageError(f"--pruner-startup-trials must be >= 0, got {opts.pruner_startup_trials}")


def require_optuna() -> None:
    """UsageError naming the extra when Optuna or its Lightning callback is not installed."""
    for module in ("optuna", "optuna_integration", "sklearn"):
        try:
            __import__(module)
        except ImportError:
            raise UsageError(
                f'sweep needs the {module} package: pip install -e ".[sweep]" (Optuna, optuna-integration, '
                "scikit-learn for the importance plot, psycopg2 for PostgreSQL)"
            ) from None


# --------------------------------------------------------------------------- a trial's flags
def describe(err: BaseException) -> str:
    """One line naming the flag, for the errors that the parser, the checks and the constructors raise."""
    if isinstance(err, ArgumentError):
        return one_line(str(err), [])
    if isinstance(err, ConfigError):
        return f"{err.flag} {err.message}"
    return " ".join(str(err).split())


def trial_config(parser: ArgumentParser, base: Mapping[str, Any], values: Mapping[str, Any]) -> Namespace:
    """train.py's config of a trial: its defaults, then ``base`` (fixed flags), then the sampled ``values``.

    Checked as train.py checks its flags, and by the datamodule's and module's constructors (cheap:
    nothing is read or trained).

    Raises:
        ArgumentError, UsageError, ConfigError: a value the run would refuse.
    """
    cfg = parser.parse_object({**base, **values})
    check_not_null(cfg, parser)
    for name in ("lr", "batch_size"):  # before check_config, whose refusal of auto depends on the machine
        if cfg[name] == "auto":
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} auto runs a finder before one training run, and a sweep's trials take numbers: give "
                f"{flag} a number, or search it in the space ({name}: {{low: ..., high: ...}})"
            )
    check_config(cfg)
    if world_size(cfg) != 1:
        raise UsageError(
            f"--devices {cfg.devices} --num-nodes {cfg.num_nodes}: a trial runs in the sweep's own process, on "
            "one device; run one sweep worker per device instead (e.g. CUDA_VISIBLE_DEVICES=1 lit-mnist sweep ...)"
        )
    build_model(cfg, build_datamodule(cfg))
    return cfg


def check_space(parser: ArgumentParser, space: Space, base: Mapping[str, Any]) -> None:
    """The fixed flags, and each bound and choice of the space with them, are runs that train.py accepts.

    Each value is checked with the others at train.py's defaults, so that an error names its cause.

    Raises:
        UsageError: one line naming the hyperparameter or flag and the value refused.
    """
    try:
        trial_config(parser, base, {})
    except (ArgumentError, UsageError, ConfigError) as err:
        raise UsageError(
            f"{describe(err)} (a fixed flag: --space {space.path} or the command line)"
        ) from None
    for param in space.params:
        for value in param.corners():
            try:
                trial_config(parser, base, {param.name: value})
            except (ArgumentError, UsageError, ConfigError) as err:
                raise UsageError(
                    f"--space {space.path}: {param.name} {value!r} is refused: {describe(err)}"
                ) from None


# --------------------------------------------------------------------------- storage and study
def default_storage(log_dir: str) -> str:
    """``sqlite:///LOG_DIR/sweeps.db`` (a relative LOG_DIR stays relative to the working folder)."""
    return f"sqlite:///{Path(log_dir) / STORAGE_NAME}"


def shown(url: str) -> str:
    """The storage URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as UrlError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except UrlError:
        return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL; None for other databases and in-memory SQLite."""
    m = re.fullmatch(r"sqlite(?:\+\w+)?:///(.+?)(\?.*)?", url)
    return Path(m[1]) if m and m[1] != ":memory:" else None


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """An exclusive lock on a SQLite database's folder while Optuna creates or checks its tables.

    Optuna creates the tables and their version row when a storage is first opened; two workers
    starting at once on a new file would both try. Other databases (and systems without ``fcntl``)
    get no lock: :func:`open_storage` retries there instead.
    """
    path = sqlite_file(url)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None or not path.parent.is_dir():
        yield
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, with heartbeats (so that a killed worker's trial is failed).

    Raises:
        UsageError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    import optuna
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if sqlite_file(url) else {}
    for attempt in range(3):
        try:
            with creation_lock(url), warnings.catch_warnings():
                # heartbeat_interval is an experimental argument of RDBStorage (Optuna 4 and 5)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=2 * heartbeat
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 2:  # another worker creating the same tables at the same moment: retry
                raise
        except ImportError as err:
            raise UsageError(
                f"--storage {shown(url)}: its database driver is not installed ({first_line(err)}); for "
                'PostgreSQL: pip install -e ".[sweep]" (psycopg2)'
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
            detail = first_line(getattr(err, "orig", None) or err)
            raise UsageError(f"--storage {shown(url)}: cannot open the database ({detail})") from None
    raise AssertionError("unreachable")


def make_sampler(name: str, space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    """Optuna's TPE (default), random or grid sampler."""
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, startup_trials: int, max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's median or Hyperband pruner (epochs are the steps), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    space: Space,
    metric: str,
    direction: Literal["maximize", "minimize"],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study or continue it; one created with another space, metric or direction is refused.

    A study created with Optuna itself (e.g. to ``enqueue_trial`` the points to try first) is taken
    over: it gets this space and metric.
    """
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    attrs = study.user_attrs
    where = f"--study {name} in {shown(storage.url)}"
    stored = study.direction.name.lower()
    if ATTR_METRIC in attrs and (attrs[ATTR_METRIC], stored) != (metric, direction):
        raise UsageError(
            f"{where} was created to {stored[:-1]}e {attrs[ATTR_METRIC]}, not to {direction[:-1]}e {metric}; "
            "give another --study, or the same --metric and --direction"
        )
    if stored != direction:
        raise UsageError(
            f"{where} was created to {stored[:-1]}e; give another --study or --direction {stored}"
        )
    if ATTR_SPACE in attrs and attrs[ATTR_SPACE] != space.spec():
        changed = sorted(set(attrs[ATTR_SPACE]) ^ set(space.spec())) or [
            key for key in space.spec() if attrs[ATTR_SPACE].get(key) != space.spec()[key]
        ]
        raise UsageError(
            f"{where} was created with another search space (it differs in {', '.join(changed)}); "
            "give another --study to search this one"
        )
    if ATTR_SPACE not in attrs:
        study.set_user_attr(ATTR_SPACE, space.spec())
        study.set_user_attr(ATTR_METRIC, metric)
    return study


def load_existing_study(storage: optuna.storages.RDBStorage, name: str | None) -> optuna.Study:
    """The study ``name`` (or the storage's only study) for ``--report``; UsageError when there is none."""
    import optuna

    names = optuna.get_all_study_names(storage)
    where = shown(storage.url)
    if name is None:
        if len(names) != 1:
            listed = f"studies there: {', '.join(names)}" if names else "it holds no study"
            raise UsageError(f"--report needs --study NAME; {listed} ({where})")
        name = names[0]
    if name not in names:
        listed = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise UsageError(f"--study {name}: no such study in {where}; {listed}")
    return optuna.load_study(study_name=name, storage=storage)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark failed the running trials whose worker's heartbeat stopped; their numbers."""
    import optuna

    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # experimental in Optuna 4, 5
        optuna.storages.fail_stale_trials(study)
    still = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return sorted(running - still)


# --------------------------------------------------------------------------- a trial
class EpochMetric(L.Callback):
    """The metric at the end of each validation epoch (not the sanity check), and the epoch in training."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: dict[int, float] = {}
        self.epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch = trainer.current_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if not trainer.sanity_checking and value is not None:
            self.values[trainer.current_epoch] = float(value)

    def best(self, direction: str) -> float | None:
        """The best value over the epochs (the trial's value), or None when validation never ran."""
        if not self.values:
            return None
        return max(self.values.values()) if direction == "maximize" else min(self.values.values())


class Objective:
    """Optuna's objective: one train.py run per trial, in its own ``LOG_DIR/version_N``.

    Args:
        space: The hyperparameters to sample.
        base: The flags every trial takes (fixed in the space file, given on the command line).
        metric: ``val/acc`` or ``val/loss``; the trial's value is its best over the epochs.
        direction: ``maximize`` or ``minimize``.
    """

    def __init__(self, space: Space, base: Mapping[str, Any], metric: str, direction: str) -> None:
        self.parser = train_parser()
        self.space, self.base, self.metric, self.direction = space, dict(base), metric, direction

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        values = {param.name: param.suggest(trial) for param in self.space.params}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            cfg = trial_config(self.parser, self.base, values)
        except (ArgumentError, UsageError, ConfigError) as err:
            raise _failed(trial, f"the run refuses these values: {describe(err)}") from None
        version = reserve_version(cfg.log_dir)
        run_dir = Path(cfg.log_dir) / f"version_{version}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", self.parser.dump(cfg))
        print(f"\ntrial {trial.number}: {format_params(values)}  ->  {run_dir}", flush=True)

        recorder = EpochMetric(self.metric)
        # optuna-integration's callback reports the metric of each validation epoch to the trial and
        # raises optuna.TrialPruned when the study's pruner says so; the run ends there.
        pruning = PyTorchLightningPruningCallback(trial, monitor=self.metric)
        os.environ[RUN_VERSION_ENV] = str(version)  # train() writes into the folder reserved here
        try:
            results = train(cfg, self.parser, callbacks=[recorder, pruning])
        except optuna.TrialPruned:
            epoch = max(recorder.values, default=0)
            value = recorder.values.get(epoch)
            at = f"{self.metric} {value:.4g} at epoch {epoch}" if value is not None else f"epoch {epoch}"
            raise _pruned(trial, f"pruned: {at}") from None
        except NonFiniteLossError as err:
            reason = f"diverged: {str(err).split(';')[0]}"
            trial.report(float("nan"), step=recorder.epoch)  # the pruner prunes a NaN once it may prune
            with warnings.catch_warnings():  # the median pruner's np.nanmax of the NaN, on purpose
                warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
                prune = trial.should_prune()
            if prune:
                raise _pruned(trial, reason) from None
            raise _failed(trial, reason) from None
        except Interrupted as stop:  # SIGTERM / Ctrl-C: this trial fails, and the sweep stops
            trial.set_user_attr("reason", f"{stop.signal_name} stopped it in epoch {stop.epoch}")
            raise
        except DataError as err:  # every trial would fail the same way: the sweep stops
            trial.set_user_attr("reason", first_line(err))
            raise
        except (UsageError, ConfigError, CheckpointError, RunError) as err:
            raise _failed(trial, describe(err)) from None
        except Exception as err:  # a bug or an error of a library: this trial fails, the sweep goes on
            log = run_dir / "error.txt"
            try:
                log.write_text("".join(traceback.format_exception(err)))
                where = f" (traceback in {log})"
            except OSError:  # a full disk: the trial's own error is what matters
                where = ""
            raise _failed(trial, f"{type(err).__name__}: {first_line(err)}{where}") from None
        finally:
            os.environ.pop(RUN_VERSION_ENV, None)
        value = recorder.best(self.direction)
        if value is None:
            raise _failed(
                trial, f"no {self.metric} was logged: validation never ran (--limit-val-batches 0?)"
            )
        trial.set_user_attr("best_checkpoint", results["best_checkpoint"])
        trial.set_user_attr("test_acc", results["test_acc"])
        return value


def _failed(trial: optuna.Trial, reason: str) -> TrialFailed:
    trial.set_user_attr("reason", reason)
    return TrialFailed(reason)


def _pruned(trial: optuna.Trial, reason: str) -> Exception:
    import optuna

    trial.set_user_attr("reason", reason)
    return optuna.TrialPruned(reason)


def format_value(value: Any) -> str:
    """A parameter or metric value for a table: floats with 4 significant digits, lists as written."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(values: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={format_value(value)}" for name, value in values.items())


# --------------------------------------------------------------------------- running the sweep
@contextlib.contextmanager
def optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's logging at ``level`` inside the block (the sweep prints its own line per trial)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


#: The trials ``--trials`` counts: every state but WAITING (enqueued, not started).
COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


def run_sweep(study: optuna.Study, objective: Objective, trials: int | None, timeout: float | None) -> None:
    """Run trials until the study holds ``trials`` trials (every worker counts) or ``timeout`` passes."""
    import optuna

    counted = tuple(optuna.trial.TrialState[name] for name in COUNTED)
    for number in fail_stale_trials(study):
        print(f"trial {number}: its worker stopped without finishing it (no heartbeat); marked failed")
    remaining = None
    if trials is not None:  # trials enqueued (WAITING) are yet to run: they do not count
        remaining = trials - len(study.get_trials(deepcopy=False, states=counted))
        if remaining <= 0:
            print(
                f"study {study.study_name} holds {trials - remaining} trials (--trials {trials}): none to run"
            )
            return
    callbacks: list[Any] = [Announce(objective.space)]
    if trials is not None:  # the other workers' trials count too (Optuna's documented way)
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=counted))
    study.optimize(
        objective,
        n_trials=remaining,
        timeout=timeout,
        catch=(TrialFailed,),
        callbacks=callbacks,
        gc_after_trial=True,
    )


class Announce:
    """An Optuna callback: one line when a trial ends (state, value or reason, the best so far)."""

    def __init__(self, space: Space) -> None:
        self.params: dict[str, Param] = {p.name: p for p in space.params}

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = f"trial {trial.number} {trial.state.name.lower()}"
        if trial.value is not None:
            line += f": {study.user_attrs.get(ATTR_METRIC, 'value')} {trial.value:.4g}"
        if reason := trial.user_attrs.get("reason"):
            line += f": {reason}"
        with contextlib.suppress(ValueError):  # no completed trial yet
            best = study.best_trial
            line += f"   (best: trial {best.number}, {best.value:.4g})"
        print(line, flush=True)


# --------------------------------------------------------------------------- results
def results_dir(log_dir: str, study_name: str) -> Path:
    """``LOG_DIR/sweeps/STUDY``: the table, the best config and the plots of a study."""
    return Path(log_dir) / RESULTS_DIR / re.sub(r"[^\w.-]+", "_", study_name)


def sorted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials best first, then pruned, running and failed ones, each by number."""
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0

    def key(trial: optuna.trial.FrozenTrial) -> tuple[int, float, int]:
        rank = STATE_ORDER.index(trial.state.name) if trial.state.name in STATE_ORDER else len(STATE_ORDER)
        return rank, sign * trial.value if trial.value is not None else 0.0, trial.number

    return sorted(study.get_trials(deepcopy=False), key=key)


def trial_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial did not complete; a trial failed by the heartbeat has no reason of its own."""
    if reason := trial.user_attrs.get("reason"):
        return str(reason)
    if trial.state.name == "FAIL":
        return "its worker stopped without finishing it (killed?); marked failed when its heartbeat stopped"
    return ""


def run_folder(trial: optuna.trial.FrozenTrial) -> str:
    """The trial's run folder, with the machine's name when another machine ran it."""
    run = str(trial.user_attrs.get("run_dir", "-"))
    host = str(trial.user_attrs.get("worker", "")).rsplit(":", 1)[0]
    return f"{host}:{run}" if host and host != socket.gethostname() else run


def table(study: optuna.Study, metric: str) -> list[list[str]]:
    """The rows of the trials table (a header first): number, state, value, params, run folder, note."""
    trials = sorted_trials(study)
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    space = {name: Param(name, **spec) for name, spec in study.user_attrs.get(ATTR_SPACE, {}).items()}
    rows = [["trial", "state", metric, *names, "run", "note"]]
    for t in trials:
        params = [
            format_value(space[n].decode(t.params[n]) if n in space else t.params[n])
            if n in t.params
            else "-"
            for n in names
        ]
        value = format_value(t.value) if t.value is not None else "-"
        note = trial_reason(t) if t.state.name != "COMPLETE" else ""
        rows.append([str(t.number), t.state.name.lower(), value, *params, run_folder(t), note])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def save_plots(study: optuna.Study, folder: Path) -> tuple[list[Path], str]:
    """Optuna's optimisation history and parameter importances as PNG files (matplotlib's Agg canvas).

    Returns the files written and, when the importance plot cannot be drawn yet (fewer than two
    completed trials), why.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no window: before pyplot is used
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.figure import Figure
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    written, missing = [], ""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[optuna.Study], Any]]] = [("history.png", plot_optimization_history)]
    if len({t.value for t in complete}) == 1 < len(complete):
        missing = f"importance.png: every completed trial has the same value, {complete[0].value:.4g}"
    elif len(complete) >= 2:
        # fANOVA (scikit-learn's random forest), Optuna 4's default: Optuna 5's default (PED-ANOVA)
        # needs many more trials than a small sweep has, and says so in a warning
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plots.append(("importance.png", partial(plot_param_importances, evaluator=evaluator)))
    else:
        missing = f"importance.png needs two completed trials, the study has {len(complete)}"
    for name, plot in plots:
        with warnings.catch_warnings():
            # optuna.visualization.matplotlib is experimental (Optuna 4, 5)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as err:  # e.g. every completed trial scored the same
                missing = f"{name}: {first_line(err)}"
                continue
        figure = axes.figure
        assert isinstance(figure, Figure)
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        path = folder / name
        replace_atomic(path, partial(figure.savefig, format="png", dpi=100))
        plt.close(figure)
        written.append(path)
    return written, missing


def write_results(study: optuna.Study, log_dir: str, storage_url: str) -> bool:
    """Print the study's table and summary; write ``trials.csv``, ``best.yaml`` and the plots.

    Returns whether a trial completed (there is a best trial).
    """
    import optuna

    metric = str(study.user_attrs.get(ATTR_METRIC, "value"))
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in STATE_ORDER}
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    print(
        f"\nStudy {study.study_name} ({shown(storage_url)}): {len(trials)} trials"
        f"{': ' + summary if summary else ''}; {study.direction.name.lower()} {metric}"
    )
    if not trials:
        return False
    rows = table(study, metric)
    print(format_table(rows))
    folder = results_dir(log_dir, study.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_atomic(folder / "trials.csv", text.getvalue())
    lines = []
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        lines.append(("Best trial", f"{best.number} ({metric} {best.value:.4g}) in {run_folder(best)}"))
        if config := best.user_attrs.get("config"):
            best_yaml = folder / "best.yaml"
            write_atomic(best_yaml, str(config))
            lines.append(
                ("Best config", f"{best_yaml}  (repeat it: python scripts/train.py --config {best_yaml})")
            )
        if checkpoint := best.user_attrs.get("best_checkpoint"):
            lines.append(("Best checkpoint", str(checkpoint)))
    else:
        lines.append(("Best trial", "none: no trial has completed (exit status 1)"))
    plots, missing = save_plots(study, folder)
    if plots:
        lines.append(("Plots", ", ".join(str(p) for p in plots) + (f"  ({missing})" if missing else "")))
    lines.append(("Trials", str(folder / "trials.csv")))
    lines.append(("TensorBoard", f"tensorboard --logdir {log_dir}  (the HParams tab compares the trials)"))
    print()
    for label, line in lines:
        print(f"{label + ':':<17}{line}")
    return bool(complete)


# --------------------------------------------------------------------------- the command
def prepare(opts: Namespace, explicit: Mapping[str, Any]) -> tuple[Space, dict[str, Any]]:
    """The space and the flags every trial takes, all checked before anything is created."""
    space = load_space(opts.space, trial_flags(), RESERVED)
    both = [name for name in space.spec() if name in explicit]
    if both:
        flag = "--" + both[0].replace("_", "-")
        raise UsageError(
            f"{flag} is given on the command line and searched in --space {opts.space}; drop one"
        )
    base: dict[str, Any] = {**TRIAL_DEFAULTS, **space.fixed, **explicit, "log_dir": opts.log_dir}
    if base.get("data_dir") is None:
        base["data_dir"] = default_data_dir()
    check_space(train_parser(), space, base)
    if opts.sampler == "grid":
        space.grid()  # a continuous range is refused here
    return space, base


def sweep_main(argv: Sequence[str] | None = None, prog: str = "sweep.py") -> int:
    """Entry point of ``scripts/sweep.py`` and ``lit-mnist sweep``. Returns the exit status."""
    ignore_upstream_deprecations()
    hide_advertisements()
    opts, explicit = parse_args(argv, prog)
    try:
        check_options(opts)
        require_optuna()
        import optuna

        with optuna_verbosity(optuna.logging.ERROR):
            if opts.report:
                return report(opts)
            return sweep(opts, explicit)
    except UsageError as err:
        usage_exit(prog, str(err))
    except Interrupted as stop:
        print(
            f"{prog}: {stop.signal_name} stopped the sweep; the trial it was in is marked failed"
            + (f" ({stop.checkpoint} holds its last state)" if stop.checkpoint is not None else "")
            + ". Run the same command to continue the sweep.",
            file=sys.stderr,
        )
        return stop.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: Ctrl-C stopped the sweep. Run the same command to continue it.", file=sys.stderr)
        return 130
    except (DataError, RunError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # the database went away in the middle of the sweep
        # Optuna's RDB storage wraps SQLAlchemy's errors in its StorageInternalError
        storage_error = (
            type(err).__module__.split(".")[0] == "sqlalchemy" or type(err).__name__ == "StorageInternalError"
        )
        if not storage_error:
            raise
        cause = err.__cause__ or err
        where = shown(opts.storage or default_storage(opts.log_dir))
        print(
            f"{prog}: error: the storage {where} failed: {first_line(getattr(cause, 'orig', None) or cause)}",
            file=sys.stderr,
        )
        return 1


def sweep(opts: Namespace, explicit: Mapping[str, Any]) -> int:
    space, base = prepare(opts, explicit)
    metric = opts.metric
    direction: Literal["maximize", "minimize"] = opts.direction or METRICS[metric]
    url = opts.storage
    if url is None:
        url = default_storage(opts.log_dir)
        Path(opts.log_dir).mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, opts.heartbeat)
    name = opts.study or Path(opts.space).stem
    searched = {p.name: p for p in space.params}
    max_epochs = (  # Hyperband's largest budget: the most epochs a trial may train
        int(max(searched["max_epochs"].corners()))
        if "max_epochs" in searched
        else int(base.get("max_epochs", train_parser().get_defaults().max_epochs))
    )
    study = open_study(
        storage,
        name,
        space,
        metric,
        direction,
        make_sampler(opts.sampler, space, opts.sampler_seed),
        make_pruner(opts.pruner, opts.pruner_startup_trials, max_epochs),
    )
    print(f"Sweep: study {name} in {shown(url)}, trials in {opts.log_dir}/version_N")
    trials = opts.trials
    if trials is None and opts.sampler == "grid":  # the whole grid
        trials = math.prod(len(values) for values in space.grid().values())
    objective = Objective(space, base, metric, direction)
    run_sweep(study, objective, trials, opts.timeout)
    return 0 if write_results(study, opts.log_dir, url) else 1


def report(opts: Namespace) -> int:
    url = opts.storage
    if url is None:
        url = default_storage(opts.log_dir)
        if not Path(opts.log_dir, STORAGE_NAME).is_file():
            raise UsageError(
                f"--report: no {Path(opts.log_dir) / STORAGE_NAME} (give the sweep's --log-dir or --storage)"
            )
    storage = open_storage(url, opts.heartbeat)
    study = load_existing_study(storage, opts.study or (Path(opts.space).stem if opts.space else None))
    for number in fail_stale_trials(study):
        print(f"trial {number}: its worker stopped without finishing it (no heartbeat); marked failed")
    return 0 if write_results(study, opts.log_dir, url) else 1


def main(argv: Sequence[str] | None = None, prog: str = "sweep.py") -> int:
    """``sweep``'s entry point, shaped like the other commands' (``get_parser`` + ``main``)."""
    return sweep_main(argv, prog)
