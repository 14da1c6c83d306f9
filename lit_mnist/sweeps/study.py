"""A sweep's study: its Optuna storage, sampler and pruner, and the loop that runs its trials.

The study lives in an Optuna RDB storage, ``sqlite:///LOG_DIR/sweeps.db`` unless another database
is named (PostgreSQL, MySQL: several machines then share the study). The same command continues a
study; several processes may run it at once. Why SQLite and not Optuna's journal file for several
processes on one machine: Optuna's docs advise the journal file (``JournalFileBackend``) for
multi-process work on one host and warn against SQLite "at scale", but only ``RDBStorage`` has
heartbeats, the one public way to mark a trial whose worker was killed (``kill -9``, a lost machine)
as failed. A sweep's workers write a few rows per epoch while a trial trains for seconds to hours, so
SQLite with a long lock timeout (the remedy Optuna's FAQ gives) holds a handful of workers well; the
first creation of the tables is serialised with a lock on the database's folder.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lit_mnist.errors import UsageError
from lit_mnist.runtime import first_line
from lit_mnist.sweeps.space import Space
from lit_mnist.sweeps.trial import Objective, TrialFailed

if TYPE_CHECKING:
    import optuna

#: The default storage's file in the log folder.
STORAGE_NAME = "sweeps.db"
#: Seconds a SQLite connection waits for another worker's write lock (Optuna's FAQ on SQLite).
SQLITE_TIMEOUT = 60.0
#: Study attributes: the space and metric it was created with (a continued sweep must keep them).
ATTR_SPACE, ATTR_METRIC = "lit_mnist:space", "lit_mnist:metric"
#: The trials ``--trials`` counts: every state but WAITING (enqueued, not started).
COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")


# --------------------------------------------------------------------------- storage
def default_storage(log_dir: str) -> str:
    """``sqlite:///LOG_DIR/sweeps.db`` (a relative LOG_DIR stays relative to the working folder).

    Built with SQLAlchemy's quoting (:func:`sqlite_url`): a ``?``, ``#`` or ``%`` in LOG_DIR stays part
    of the path instead of starting a query string.
    """
    return sqlite_url(Path(log_dir) / STORAGE_NAME)


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite database file ``path``, quoted: :func:`sqlite_file` gives ``path`` back."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def shown(url: str) -> str:
    """The storage URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as UrlError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except UrlError:
        return url


def _driver_advice(url: str) -> str:
    """What to do when the database driver of ``url`` is not installed.

    SQLAlchemy (>= 2.1) reads a bare ``postgresql://`` as psycopg 3, while the ``sweep`` extra installs
    psycopg2: such a URL is answered with the same one naming psycopg2.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as UrlError

    try:
        parsed = make_url(url)
    except UrlError:
        parsed = None
    if parsed is not None and parsed.drivername == "postgresql":
        psycopg2 = parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=True)
        return f"postgresql:// means psycopg 3 to SQLAlchemy, and the sweep extra installs psycopg2: use {psycopg2}"
    return 'for PostgreSQL: pip install -e ".[sweep]" (psycopg2) and a postgresql+psycopg2:// URL'


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (unquoted, as SQLAlchemy opens it); None for other
    databases, in-memory SQLite and URLs SQLAlchemy cannot read."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError as UrlError

    try:
        parsed = make_url(url)
    except UrlError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


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
                f"--storage {shown(url)}: its database driver is not installed ({first_line(err)}); "
                f"{_driver_advice(url)}"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:
            detail = first_line(getattr(err, "orig", None) or err)
            raise UsageError(f"--storage {shown(url)}: cannot open the database ({detail})") from None
    raise AssertionError("unreachable")


def is_storage_error(err: BaseException) -> bool:
    """Whether ``err`` comes from the database (Optuna's RDB storage wraps SQLAlchemy's errors in its
    ``StorageInternalError``): it went away in the middle of the sweep."""
    return type(err).__module__.split(".")[0] == "sqlalchemy" or type(err).__name__ == "StorageInternalError"


def storage_error_detail(err: BaseException) -> str:
    """The database's own words for a storage error, in one line."""
    cause = err.__cause__ or err
    return first_line(getattr(cause, "orig", None) or cause)


# --------------------------------------------------------------------------- sampler, pruner, study
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


def announce_stale_trials(study: optuna.Study) -> None:
    """:func:`fail_stale_trials`, with one line for each trial it marks failed."""
    for number in fail_stale_trials(study):
        print(f"trial {number}: its worker stopped without finishing it (no heartbeat); marked failed")


# --------------------------------------------------------------------------- running the trials
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


def run_sweep(study: optuna.Study, objective: Objective, trials: int | None, timeout: float | None) -> None:
    """Run trials until the study holds ``trials`` trials (every worker counts) or ``timeout`` passes."""
    import optuna

    counted = tuple(optuna.trial.TrialState[name] for name in COUNTED)
    announce_stale_trials(study)
    remaining = None
    if trials is not None:  # trials enqueued (WAITING) are yet to run: they do not count
        remaining = trials - len(study.get_trials(deepcopy=False, states=counted))
        if remaining <= 0:
            print(
                f"study {study.study_name} holds {trials - remaining} trials (--trials {trials}): none to run"
            )
            return
    callbacks: list[Any] = [Announce()]
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
