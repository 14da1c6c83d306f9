"""``sweep``: a hyperparameter search with Optuna in which every trial is an ordinary ``train`` run.

    lit-mnist sweep --space examples/sweep.yaml --trials 20 [train.py flags for every trial]
    lit-mnist sweep --study sweep --report

The search space is a YAML file (:mod:`lit_mnist.sweeps.space`); the flags of ``train`` on the
command line go to every trial and override the file's ``fixed:`` flags. Each trial is
:func:`lit_mnist.run.train` on the :class:`~lit_mnist.config.RunConfig` of its values, parsed as
train.py parses a config file (:mod:`lit_mnist.sweeps.trial`). The study lives in an Optuna RDB
storage, ``sqlite:///LOG_DIR/sweeps.db`` unless ``--storage URL`` names another database; the same
command continues it, and several processes may run it at once (:mod:`lit_mnist.sweeps.study`). The
results are printed and written to ``LOG_DIR/sweeps/STUDY`` (:mod:`lit_mnist.sweeps.report`).
"""

from __future__ import annotations

import math
import sys
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser, Namespace

from lit_mnist.build import build_datamodule, build_model
from lit_mnist.cli.common import one_line, usage_exit
from lit_mnist.cli.flags import FIELDS, check_not_null, config_from, flag, run_parser
from lit_mnist.config import RunConfig
from lit_mnist.data import default_data_dir
from lit_mnist.errors import DataError, Interrupted, RunError, UsageError
from lit_mnist.plan import check_machine, world_size
from lit_mnist.runtime import (
    check_file_name,
    hide_advertisements,
    ignore_upstream_deprecations,
    one_line_warnings,
)
from lit_mnist.sweeps.report import results_dir, write_results
from lit_mnist.sweeps.space import Configure, Space, check_space, load_space
from lit_mnist.sweeps.study import (
    STORAGE_NAME,
    announce_stale_trials,
    default_storage,
    is_storage_error,
    load_existing_study,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    optuna_verbosity,
    run_sweep,
    shown,
    storage_error_detail,
)
from lit_mnist.sweeps.trial import Objective

#: The metrics a sweep can optimise (logged at every validation epoch) and their natural direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {"val/acc": "maximize", "val/loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
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


# --------------------------------------------------------------------------- flags
def get_parser(prog: str = "sweep.py") -> ArgumentParser:
    """train.py's flags (given to every trial) and the sweep's own, in a group of their own."""
    parser = run_parser(
        prog,
        "Search hyperparameters with Optuna: every trial is a train.py run in LOG_DIR/version_N. "
        "The train.py flags given here go to every trial.",
    )
    sweep = parser.add_argument_group("Sweep")
    add_search_flags(sweep)
    add_study_flags(sweep)
    return parser


def add_search_flags(sweep: Any) -> None:
    """What to search, for how long and how: the space, the budget, the metric, the sampler and pruner."""
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


def add_study_flags(sweep: Any) -> None:
    """Where the study lives, whether to show it instead of running it, and the workers' heartbeat."""
    sweep.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help=f"Optuna storage URL (default sqlite:///LOG_DIR/{STORAGE_NAME}); e.g. "
        "postgresql+psycopg2://user:password@host/db to share the study between machines.",
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


def parse_args(argv: Sequence[str] | None, prog: str) -> tuple[Namespace, dict[str, Any]]:
    """The sweep's flags (with their defaults) and the train.py flags given explicitly, for every trial."""
    parser = get_parser(prog)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parser.parse_args(args)
        given = parser.parse_args(args, defaults=False).as_dict()
    except ArgumentError as err:
        usage_exit(prog, one_line(str(err), args))
    explicit = {key: value for key, value in given.items() if key in FIELDS and key not in RESERVED}
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
    if (name := opts.study or (Path(opts.space).stem if opts.space else None)) is not None:
        # the study's results go to LOG_DIR/sweeps/STUDY: a name no folder can have is refused before any trial
        check_file_name(
            "--study" if opts.study else f"the study name (--space {opts.space})",
            results_dir(opts.log_dir, name).name,
        )


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


# --------------------------------------------------------------------------- a trial's config
def trial_config(parser: ArgumentParser, base: Mapping[str, Any], values: Mapping[str, Any]) -> RunConfig:
    """The config of a trial: train.py's defaults, then ``base`` (fixed flags), then the sampled ``values``.

    Parsed as train.py parses a config file (``1e-3`` is a number, ``"1"`` a device count), checked by
    :class:`RunConfig`, against this machine (:func:`lit_mnist.plan.check_machine`) and by the
    datamodule's and module's constructors (cheap: nothing is read or trained).

    Raises:
        UsageError, ConfigError: a value the run would refuse.
    """
    try:
        namespace = parser.parse_object({**base, **values})
    except ArgumentError as err:
        raise UsageError(one_line(str(err), [])) from None
    check_not_null(namespace, parser)
    for name in ("lr", "batch_size"):  # before check_machine, whose refusal of auto depends on the machine
        if namespace[name] == "auto":
            raise UsageError(
                f"{flag(name)} auto runs a finder before one training run, and a sweep's trials take numbers: give "
                f"{flag(name)} a number, or search it in the space ({name}: {{low: ..., high: ...}})"
            )
    cfg = config_from(namespace)
    check_machine(cfg)
    if world_size(cfg) != 1:
        raise UsageError(
            f"--devices {cfg.devices} --num-nodes {cfg.num_nodes}: a trial runs in the sweep's own process, on "
            "one device; run one sweep worker per device instead (e.g. CUDA_VISIBLE_DEVICES=1 lit-mnist sweep ...)"
        )
    build_model(cfg, build_datamodule(cfg))
    return cfg


def prepare(opts: Namespace, explicit: Mapping[str, Any]) -> tuple[Space, Configure]:
    """The space and the config of a trial from its values, all checked before anything is created."""
    space = load_space(opts.space, FIELDS, RESERVED)
    both = [name for name in space.spec() if name in explicit]
    if both:
        raise UsageError(
            f"{flag(both[0])} is given on the command line and searched in --space {opts.space}; drop one"
        )
    base: dict[str, Any] = {**TRIAL_DEFAULTS, **space.fixed, **explicit, "log_dir": opts.log_dir}
    if base.get("data_dir") is None:
        base["data_dir"] = default_data_dir()
    configure = partial(trial_config, get_parser(), base)
    check_space(space, configure)
    if opts.sampler == "grid":
        space.grid()  # a continuous range is refused here
    return space, configure


# --------------------------------------------------------------------------- the command
def sweep_main(argv: Sequence[str] | None = None, prog: str = "sweep.py") -> int:
    """Entry point of ``scripts/sweep.py`` and ``lit-mnist sweep``. Returns the exit status."""
    ignore_upstream_deprecations()
    hide_advertisements()
    one_line_warnings()
    opts, explicit = parse_args(argv, prog)
    try:
        check_options(opts)
        require_optuna()
        import optuna

        with optuna_verbosity(optuna.logging.ERROR):
            if opts.report:
                return report(opts, prog)
            return sweep(opts, explicit, prog)
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
        if not is_storage_error(err):
            raise
        where = shown(opts.storage or default_storage(opts.log_dir))
        print(
            f"{prog}: error: the storage {where} failed: {storage_error_detail(err)}; the trials it holds are kept: "
            "fix it (free some space) and run the same command to continue, or --report to see them",
            file=sys.stderr,
        )
        return 1


def sweep(opts: Namespace, explicit: Mapping[str, Any], prog: str) -> int:
    """Run the sweep's trials, then show and write its results; 1 when no trial completed."""
    space, configure = prepare(opts, explicit)
    direction: Literal["maximize", "minimize"] = opts.direction or METRICS[opts.metric]
    url = opts.storage
    if url is None:
        url = default_storage(opts.log_dir)
        Path(opts.log_dir).mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, opts.heartbeat)
    name = opts.study or Path(opts.space).stem
    searched = {p.name: p for p in space.params}
    max_epochs = (  # Hyperband's largest budget: the most epochs a trial may train
        int(max(searched["max_epochs"].corners())) if "max_epochs" in searched else configure({}).max_epochs
    )
    sampler = make_sampler(opts.sampler, space, opts.sampler_seed)
    pruner = make_pruner(opts.pruner, opts.pruner_startup_trials, max_epochs)
    study = open_study(storage, name, space, opts.metric, direction, sampler, pruner)
    print(f"Sweep: study {name} in {shown(url)}, trials in {opts.log_dir}/version_N")
    trials = opts.trials
    if trials is None and opts.sampler == "grid":  # the whole grid
        trials = math.prod(len(values) for values in space.grid().values())
    run_sweep(study, Objective(space, configure, opts.metric, direction), trials, opts.timeout)
    return write_results(study, opts.log_dir, url, prog)


def report(opts: Namespace, prog: str) -> int:
    """``--report``: show and write the results of a study, running nothing."""
    url = opts.storage
    if url is None:
        url = default_storage(opts.log_dir)
        if not Path(opts.log_dir, STORAGE_NAME).is_file():
            raise UsageError(
                f"--report: no {Path(opts.log_dir) / STORAGE_NAME} (give the sweep's --log-dir or --storage)"
            )
    storage = open_storage(url, opts.heartbeat)
    study = load_existing_study(storage, opts.study or (Path(opts.space).stem if opts.space else None))
    announce_stale_trials(study)
    return write_results(study, opts.log_dir, url, prog)


def main(argv: Sequence[str] | None = None, prog: str = "sweep.py") -> int:
    """``sweep``'s entry point, shaped like the other commands' (``get_parser`` + ``main``)."""
    return sweep_main(argv, prog)
