"""``runs``: the runs of a log folder as a table (or ``--json``, ``--csv``); ``--diff A B`` compares two.

``lit-mnist runs [LOG_DIR]`` ends up in :func:`main`. It reads only the files runs write
(:mod:`lit_mnist.runlist`) and imports neither torch nor Lightning.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from lit_mnist.cli.common import parse_or_exit, usage_exit
from lit_mnist.runlist import (
    ENVIRONMENT_NAME,
    RUN_FILES,
    RunInfo,
    config_diff,
    differing_settings,
    list_runs,
    local_time,
    natural_key,
    read_run,
    shown,
    with_values,
)
from lit_mnist.stats import INTERVAL_METHOD, format_accuracy

#: ``--sort`` keys beside the settings' names; accuracies sort best first, the others ascending.
COLUMNS = ("version", "start", "status", "dataset", "model", "epochs", "val_acc", "test_acc")


def get_parser(prog: str = "lit-mnist runs") -> ArgumentParser:
    """Flags of ``runs``."""
    parser = ArgumentParser(
        prog=prog,
        description="The runs of a log folder: status, dataset, model, the settings that differ, accuracies.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument(
        "log_dir", nargs="?", default="lightning_logs", metavar="LOG_DIR", help="The log folder."
    )
    parser.add_argument(
        "--sort",
        type=str,
        default="version",
        metavar="KEY",
        help=f"Order by one of {', '.join(COLUMNS)} or a setting's name (e.g. lr); accuracies best first.",
    )
    parser.add_argument("--json", action="store_true", help="Print the runs as JSON.")
    parser.add_argument("--csv", action="store_true", help="Print the runs as CSV.")
    parser.add_argument(
        "--diff",
        nargs=2,
        type=str,
        default=None,
        metavar="RUN",
        help="Show two runs' config and environment differences: run folders, or version numbers "
        "(3 = LOG_DIR/version_3).",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "lit-mnist runs") -> int:
    """``lit-mnist runs [LOG_DIR] [--sort KEY] [--json | --csv] [--diff A B]``. Returns the exit status."""
    cfg = parse_or_exit(get_parser(prog), argv, prog, positionals=("log_dir",))
    log_dir = Path(cfg.log_dir)
    if cfg.json and cfg.csv:
        usage_exit(prog, "give --json or --csv, not both")
    if cfg.diff:
        return print_diff(log_dir, cfg.diff, prog)
    if not log_dir.is_dir():
        usage_exit(prog, f"{log_dir} is not a folder; give the --log-dir the runs were written to")
    runs = list_runs(log_dir)
    settings = differing_settings(runs)
    runs = sort_runs(runs, cfg.sort, settings, prog)
    records = with_values(runs, settings)
    if cfg.json:
        print(json.dumps(records, indent=2))
    elif cfg.csv:
        sys.stdout.write(as_csv(records, settings))
    elif not runs:
        print(f"No runs in {log_dir} (no folder holds {', '.join(RUN_FILES)} or checkpoints/)")
    else:
        print(as_table(runs, settings))
        print(
            f"\nTest accuracy with its {INTERVAL_METHOD}. stopped: resume it with --ckpt-path "
            "RUN/checkpoints/last.ckpt (a fold: run the same --folds command); failed: see RUN/error.txt; "
            "running: a process holds RUN/.lock"
        )
    return 0


def sort_runs(runs: list[RunInfo], key: str, settings: Sequence[str], prog: str) -> list[RunInfo]:
    """``runs`` by ``key`` (a column or a setting), runs without a value last."""
    getters: dict[str, Any] = {
        "version": lambda r: natural_key(r.name),
        "start": lambda r: r.start_time,
        "status": lambda r: r.status,
        "dataset": lambda r: r.dataset,
        "model": lambda r: r.model,
        "epochs": lambda r: r.epochs,
        "val_acc": lambda r: r.val_acc_best,
        "test_acc": lambda r: r.test_acc,
    }
    known = {k for run in runs for k in run.config}
    if key not in getters and key not in known:
        usage_exit(
            prog,
            f"--sort {key}: not a column or setting; give one of {', '.join(COLUMNS)} or a setting (e.g. lr)",
        )
    get = getters.get(key, lambda r: r.config.get(key))
    best_first = key in ("val_acc", "test_acc")
    present = [r for r in runs if get(r) is not None]
    absent = [r for r in runs if get(r) is None]
    try:
        ordered = sorted(present, key=get, reverse=best_first)
    except TypeError:  # values of mixed types (a number in one config, a word in another)
        ordered = sorted(present, key=lambda r: str(get(r)), reverse=best_first)
    return ordered + absent


def as_table(runs: Sequence[RunInfo], settings: Sequence[str]) -> str:
    """The text table: one row per run, the differing settings in the last column."""
    header = [
        "version",
        "started",
        "status",
        "dataset",
        "model",
        "epochs",
        "best val acc",
        "test acc (95% CI)",
    ]
    rows = [
        [
            run.name,
            local_time(run.start_time),
            run.status,
            shown(run.dataset),
            shown(run.model),
            shown(run.epochs),
            f"{run.val_acc_best:.2%}" if run.val_acc_best is not None else "-",
            format_accuracy(run.test_acc, run.test_acc_ci) if run.test_acc is not None else "-",
        ]
        for run in runs
    ]
    rows = [[cell.replace("95% CI ", "") for cell in row] for row in rows]
    if settings:
        header.append("settings that differ")
        for row, run in zip(rows, runs, strict=True):
            row.append(
                " ".join(f"{key}={shown(run.config.get(key))}" for key in settings) if run.config else ""
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def as_csv(records: Sequence[dict[str, Any]], settings: Sequence[str]) -> str:
    """The runs as CSV: the columns, the interval's ends, then one column per differing setting."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [
        "version",
        "path",
        "start_time",
        "status",
        "dataset",
        "model",
        "epochs",
        "val_acc_best",
        "test_acc",
    ]
    writer.writerow([*columns, "test_acc_low", "test_acc_high", *settings])
    for record in records:
        low, high = record["test_acc_ci"] or ("", "")
        values = [
            shown(record["settings"][key]) if record["settings"][key] is not None else "" for key in settings
        ]
        writer.writerow([*("" if record[c] is None else record[c] for c in columns), low, high, *values])
    return buffer.getvalue()


# --------------------------------------------------------------------------- --diff
def resolve_run(arg: str, log_dir: Path, prog: str) -> Path:
    """A ``--diff`` argument as a run folder: a version number (``LOG_DIR/version_N``) or a folder."""
    candidates = [log_dir / f"version_{arg}"] if arg.isdigit() else [Path(arg), log_dir / arg]
    for path in candidates:
        if path.is_dir() and any((path / name).is_file() for name in RUN_FILES):
            return path
    tried = " or ".join(str(p) for p in candidates)
    usage_exit(prog, f"--diff {arg}: {tried} is not a run folder (it holds none of {', '.join(RUN_FILES)})")


def print_diff(log_dir: Path, pair: Sequence[str], prog: str) -> int:
    """Print the config and environment differences of two runs; one line where there are none."""
    first, second = (read_run(resolve_run(arg, log_dir, prog), log_dir) for arg in pair)
    print(f"{first.path}  ->  {second.path}")
    for title, a, b in (
        ("config.yaml", first.config, second.config),
        (ENVIRONMENT_NAME, _latest(first.environment), _latest(second.environment)),
    ):
        if not a and not b:
            print(f"\n{title}: in neither run")
            continue
        changes = config_diff(a, b)
        print(
            f"\n{title}: "
            + (f"{len(changes)} difference{'s' if len(changes) != 1 else ''}" if changes else "the same")
        )
        width = max((len(key) for key, _, _ in changes), default=0)
        for key, old, new in changes:
            print(f"  {key:<{width}}  {_value(old)}  ->  {_value(new)}")
    accuracies = [
        format_accuracy(r.test_acc, r.test_acc_ci) if r.test_acc is not None else r.status
        for r in (first, second)
    ]
    print(f"\ntest accuracy: {accuracies[0]}  ->  {accuracies[1]}")
    return 0


def _latest(environment: dict[str, Any]) -> dict[str, Any]:
    """The record of the process that ran the run last (a resumed run keeps the earlier ones apart)."""
    return {key: value for key, value in environment.items() if key != "earlier"}


def _value(value: Any) -> str:
    return (
        "(absent)"
        if value is None
        else json.dumps(value)
        if isinstance(value, list | dict | bool)
        else str(value)
    )
