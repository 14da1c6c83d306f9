"""A study's results: the table of trials, the best trial, its config and checkpoint, and Optuna's plots.

Printed at the end of a sweep and by ``--report``, and written to ``LOG_DIR/sweeps/STUDY``:
``trials.csv``, ``best.yaml`` (what ``--config`` takes to repeat the best trial), ``history.png`` and
``importance.png``.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_mnist.runtime import first_line, replace_atomic
from lit_mnist.sweeps.space import Param
from lit_mnist.sweeps.study import ATTR_METRIC, ATTR_SPACE, shown
from lit_mnist.sweeps.trial import format_value

if TYPE_CHECKING:
    import optuna

#: The folder of each study's results in the log folder.
RESULTS_DIR = "sweeps"
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


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


def save_plots(
    study: optuna.Study, folder: Path, unwritten: list[tuple[Path, OSError]]
) -> tuple[list[Path], str]:
    """Optuna's optimisation history and parameter importances as PNG files (matplotlib's Agg canvas).

    A plot that cannot be written is added to ``unwritten`` (:func:`save`).
    Returns the files written and, when the importance plot cannot be drawn yet (fewer than two
    completed trials), why.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no window: before pyplot is used
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.figure import Figure

    plots, missing = _plots(study)
    written = []
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
        if save(path, partial(figure.savefig, format="png", dpi=100), unwritten):
            written.append(path)
        plt.close(figure)
    return written, missing


def _plots(study: optuna.Study) -> tuple[list[tuple[str, Callable[[optuna.Study], Any]]], str]:
    """The plots the study can have, by file name, and why the importance plot is left out (or ``""``)."""
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots: list[tuple[str, Callable[[optuna.Study], Any]]] = [("history.png", plot_optimization_history)]
    if len({t.value for t in complete}) == 1 < len(complete):
        return plots, f"importance.png: every completed trial has the same value, {complete[0].value:.4g}"
    if len(complete) < 2:
        return plots, f"importance.png needs two completed trials, the study has {len(complete)}"
    # fANOVA (scikit-learn's random forest), Optuna 4's default: Optuna 5's default (PED-ANOVA)
    # needs many more trials than a small sweep has, and says so in a warning
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    plots.append(("importance.png", partial(plot_param_importances, evaluator=evaluator)))
    return plots, ""


def write_results(study: optuna.Study, log_dir: str, storage_url: str, prog: str = "sweep.py") -> int:
    """Print the study's table and summary; write ``best.yaml``, ``trials.csv`` and the plots.

    Each file is written whole or not at all (the previous one stays); the files that cannot be written
    (a full disk, a read-only folder) are named in one line on stderr, after what could be printed.
    Returns the exit status: 0 when a trial completed and every file was written, else 1.
    """
    metric = str(study.user_attrs.get(ATTR_METRIC, "value"))
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in STATE_ORDER}
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    print(
        f"\nStudy {study.study_name} ({shown(storage_url)}): {len(trials)} trials"
        f"{': ' + summary if summary else ''}; {study.direction.name.lower()} {metric}"
    )
    if not trials:
        return 1
    rows = table(study, metric)
    print(format_table(rows))
    folder = results_dir(log_dir, study.study_name)
    unwritten: list[tuple[Path, OSError]] = []
    lines = best_lines(study, folder, metric, unwritten)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    if save(folder / "trials.csv", lambda tmp: tmp.write_text(text.getvalue()), unwritten):
        lines.append(("Trials", str(folder / "trials.csv")))
    plots, missing = save_plots(study, folder, unwritten)
    if plots:
        lines.append(("Plots", ", ".join(str(p) for p in plots) + (f"  ({missing})" if missing else "")))
    lines.append(("TensorBoard", f"tensorboard --logdir {log_dir}  (the HParams tab compares the trials)"))
    print()
    for label, line in lines:
        print(f"{label + ':':<17}{line}")
    if unwritten:
        names = ", ".join(path.name for path, _ in unwritten)
        print(
            f"{prog}: error: {names} not written in {folder} ({first_line(unwritten[0][1])}); the results are above and "
            "every trial is in the study's database: free some space and run the sweep with --report to write them",
            file=sys.stderr,
        )
    return 0 if counts["COMPLETE"] > 0 and not unwritten else 1


def save(path: Path, write: Callable[[Path], object], unwritten: list[tuple[Path, OSError]]) -> bool:
    """Write ``path`` whole through ``write(tmp)`` (its folder made first); on an ``OSError`` keep the file as it
    was, add it to ``unwritten`` and return False."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomic(path, write)
    except OSError as err:
        unwritten.append((path, err))
        return False
    return True


def best_lines(
    study: optuna.Study, folder: Path, metric: str, unwritten: list[tuple[Path, OSError]]
) -> list[tuple[str, str]]:
    """The best trial, its config (written to ``best.yaml``) and checkpoint, as ``(label, line)`` pairs."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return [("Best trial", "none: no trial has completed (exit status 1)")]
    best = study.best_trial
    lines = [("Best trial", f"{best.number} ({metric} {best.value:.4g}) in {run_folder(best)}")]
    if config := best.user_attrs.get("config"):
        best_yaml = folder / "best.yaml"
        if save(best_yaml, lambda tmp: tmp.write_text(str(config)), unwritten):
            lines.append(
                ("Best config", f"{best_yaml}  (repeat it: python scripts/train.py --config {best_yaml})")
            )
    if checkpoint := best.user_attrs.get("best_checkpoint"):
        lines.append(("Best checkpoint", str(checkpoint)))
    return lines
