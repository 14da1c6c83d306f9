"""The loggers of a run, chosen by name: TensorBoard, CSV, MLflow, Weights & Biases.

Each is Lightning's own logger with :class:`~lit_mnist.groups.OptimizerStepAxis` mixed in, so that
with step groups every value is written at its optimizer step in every logger. TensorBoard and CSV
write into the run folder ``LOG_DIR/version_N``; MLflow into a local store inside ``LOG_DIR`` unless a
tracking URI is given (a shared server): ``sqlite:///LOG_DIR/mlflow.db`` and ``LOG_DIR/mlartifacts``; W&B into the run folder, offline unless the user has an API key.
mlflow and wandb are optional extras of the package.

Names outside ``__all__`` serve lit_mnist's own modules (the commands, the run) and may change.
"""

from __future__ import annotations

import csv
import http.client
import importlib
import netrc
import os
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lit_mnist.errors import UsageError
from lit_mnist.groups import OptimizerStepAxis
from lit_mnist.runtime import first_line

__all__ = [
    "LOGGERS",
    "LoggerName",
    "MonitoringTensorBoardLogger",
    "StepCSVLogger",
    "StepMLFlowLogger",
    "StepWandbLogger",
    "build_loggers",
]

LoggerName = Literal["tensorboard", "csv", "mlflow", "wandb"]
LOGGERS: tuple[str, ...] = get_args(LoggerName)
#: The package each optional logger needs, installed with ``pip install -e ".[NAME]"``.
_EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
_MLFLOW_EXPERIMENT = "lit_mnist"
WANDB_PROJECT = "lit_mnist"


class MonitoringTensorBoardLogger(OptimizerStepAxis, TensorBoardLogger):
    """``TensorBoardLogger`` whose ``log_graph=True`` writes the model graph once, without warnings.

    With step groups (:class:`~lit_mnist.groups.StepGroups` binds it) it writes every value at its
    optimizer step (:class:`~lit_mnist.groups.OptimizerStepAxis`).

    Lightning calls ``log_graph`` at the start of every ``fit`` / ``test``; TensorBoard traces the
    model with ``torch.jit.trace``, which torch 2.14 deprecates (a ``FutureWarning`` every run) and
    whose walk over the module touches a deprecated torchmetrics property. Those warnings say nothing
    a user can act on, so they are silenced here, for the tracing only. The graph is written once.
    """

    _graph_logged = False

    def log_graph(self, model: L.LightningModule, input_array: Tensor | None = None) -> None:  # type: ignore[override]
        if self._graph_logged:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=FutureWarning
            )
            warnings.filterwarnings(
                "ignore", message=r"This property will be removed in 2\.0\.0", category=DeprecationWarning
            )
            super().log_graph(model, input_array)
        self._graph_logged = True  # (nothing was written if the logger was made with log_graph=False)


class StepCSVLogger(OptimizerStepAxis, CSVLogger):  # type: ignore[misc]  # CSVLogger narrows log_metrics
    """Lightning's ``CSVLogger`` (``metrics.csv``, ``hparams.yaml``), writing at optimizer steps.

    It also appends to a ``metrics.csv`` that another process wrote (``ddp_spawn`` runs fit and test in
    processes of their own, each with a fresh copy of the writer): the writer is told the columns
    already in the file, so that a new column makes it rewrite the file with all of them.
    """

    @rank_zero_only
    def save(self) -> None:
        writer = self.experiment
        path = Path(writer.metrics_file_path)
        if path.is_file() and not writer.metrics_keys:
            with open(path, newline="") as file:
                writer.metrics_keys.extend(next(csv.reader(file), []))
        super().save()


class StepMLFlowLogger(OptimizerStepAxis, MLFlowLogger):
    """Lightning's ``MLFlowLogger``, writing at optimizer steps."""


class StepWandbLogger(OptimizerStepAxis, WandbLogger):
    """Lightning's ``WandbLogger``, writing at optimizer steps."""


def check_installed(names: Sequence[str]) -> None:
    """Raise :class:`UsageError` naming the extra to install for a logger whose package is missing."""
    for name in names:
        if name in _EXTRAS:
            try:
                importlib.import_module(_EXTRAS[name])
            except ImportError:
                raise UsageError(
                    f'--logger {name} needs the {_EXTRAS[name]} package: pip install -e ".[{name}]" '
                    f"(or pip install {_EXTRAS[name]})"
                ) from None


#: The values W&B takes for WANDB_MODE.
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def check_reachable(names: Sequence[str], mlflow_tracking_uri: str | None, timeout: float = 5.0) -> None:
    """Before training: the MLflow server answers, and W&B online has an API key; else :class:`UsageError`.

    Cheap: one HTTP ``GET /health`` (any HTTP answer counts; only no answer within ``timeout`` seconds is
    refused), and for W&B a look at ``WANDB_API_KEY`` and the ``~/.netrc`` entry ``wandb login`` writes.
    Without it both fail at the first metric logged, after the data were read and the model built.
    """
    if (
        "mlflow" in names
        and mlflow_tracking_uri
        and urlsplit(mlflow_tracking_uri).scheme in ("http", "https")
    ):
        url = mlflow_tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                pass
        except urllib.error.HTTPError:  # a server answered (a proxy, an older MLflow): it is there
            pass
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise UsageError(
                f"--mlflow-tracking-uri {mlflow_tracking_uri}: no server answers there ({reason}); start the "
                "MLflow server (mlflow server --port 5000) or fix the URI, or leave the flag out for a local "
                "store in --log-dir"
            ) from None
    mode = os.environ.get("WANDB_MODE")
    if "wandb" in names and mode is not None and mode not in WANDB_MODES:
        raise UsageError(
            f"the environment variable WANDB_MODE={mode!r} is not a W&B mode; set it to one of "
            f"{', '.join(WANDB_MODES)}, or unset it to log offline"
        )
    if "wandb" in names:
        check_wandb_locations()
    if "wandb" in names and not wandb_offline() and not wandb_api_key_configured():
        raise UsageError(
            "--logger wandb with WANDB_MODE=online needs a W&B API key and none is set (WANDB_API_KEY, or the "
            "api.wandb.ai entry of ~/.netrc that wandb login writes); run wandb login or set WANDB_API_KEY, "
            "or unset WANDB_MODE to log offline (wandb sync later)"
        )


def check_wandb_locations() -> None:
    """``WANDB_BASE_URL`` is an http(s) URL with a host, and ``NETRC`` not a folder, when set (a ``NETRC`` that
    names no file holds no key, as ``~/.netrc`` missing does).

    Raises:
        UsageError: one line naming the variable.
    """
    if (url := os.environ.get("WANDB_BASE_URL")) is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"the environment variable WANDB_BASE_URL={url!r} is not an http(s) URL of a W&B server; "
                "fix it (e.g. https://api.wandb.ai) or unset it"
            )
    if (path := os.environ.get("NETRC")) is not None and os.path.isdir(path):
        raise UsageError(
            f"the environment variable NETRC={path!r} names a folder; point it at your .netrc file, or unset it "
            "(W&B then reads ~/.netrc)"
        )


def wandb_api_key_configured() -> bool:
    """Whether W&B has an API key: ``WANDB_API_KEY``, or an entry for its host in ``$NETRC`` / ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc (or none readable): no key there
        return False


def build_loggers(
    names: Sequence[str],
    log_dir: str | Path,
    version: int | None,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment: str = _MLFLOW_EXPERIMENT,
    log_graph: bool = True,
) -> list[Logger]:
    """The loggers ``names`` for the run ``LOG_DIR/version_N``, in the order given.

    ``log_graph``: TensorBoard's model graph (traced with ``torch.jit.trace``, which a compiled network
    does not support: ``--compile`` turns it off).

    Raises:
        UsageError: a logger's package is not installed.
    """
    check_installed(names)
    run = f"version_{version}"
    loggers: list[Logger] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":  # the model graph, once and quietly; no hp_metric placeholder
            loggers.append(
                MonitoringTensorBoardLogger(
                    save_dir=str(log_dir),
                    name="",
                    version=version,
                    default_hp_metric=False,
                    log_graph=log_graph,
                )
            )
        elif name == "csv":
            loggers.append(csv_logger(log_dir, version))
        elif name == "mlflow":
            loggers.append(
                StepMLFlowLogger(
                    experiment_name=mlflow_experiment,
                    run_name=run,
                    tracking_uri=mlflow_tracking_uri or local_mlflow_uri(log_dir),
                    # a new experiment's artifacts beside the local store (a server decides its own)
                    artifact_location=None
                    if mlflow_tracking_uri
                    else (Path(log_dir).resolve() / "mlartifacts").as_uri(),
                    # the best checkpoint and the figures are logged as artifacts at the end of the run
                    log_model=False,
                )
            )
        elif name == "wandb":
            run_dir = Path(log_dir) / run
            run_dir.mkdir(parents=True, exist_ok=True)
            loggers.append(
                StepWandbLogger(
                    name=run,
                    project=WANDB_PROJECT,
                    save_dir=str(run_dir),
                    offline=wandb_offline(),
                    log_model=False,
                )
            )
    return loggers


def csv_logger(log_dir: str | Path, version: int | None) -> StepCSVLogger:
    """The CSV logger of the run, its ``metrics.csv`` kept across a resume.

    Lightning's CSV writer deletes a ``metrics.csv`` it finds in a folder that is not empty when it
    starts (with a warning). A resumed run's file is moved aside first, its rows written again by the
    new writer, and the copy removed only once they are saved (put back if saving fails).
    """
    logger = StepCSVLogger(save_dir=str(log_dir), name="", version=version)
    if getattr(rank_zero_only, "rank", 0) != 0:  # only rank 0 writes (and may move) the file
        return logger
    path = Path(logger.log_dir) / "metrics.csv"
    kept = path.with_name("metrics.csv.resumed")
    rows = []
    if path.is_file() and not kept.is_file():
        os.replace(path, kept)
    # else a resume killed while it wrote the rows again (before training): the file moved aside is
    # the whole history, and metrics.csv at most a part of it
    if kept.is_file():
        with open(kept, newline="") as file:
            rows = list(csv.DictReader(file))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        logger.experiment  # noqa: B018  (the writer starts now, before anything else writes into the folder)
    try:
        for row in rows:
            values = {
                key: _number(value) for key, value in row.items() if key != "step" and value not in ("", None)
            }
            logger.log_metrics(values, step=int(row["step"]))
        if rows:
            logger.save()
    except OSError:
        os.replace(kept, path)
        raise
    kept.unlink(missing_ok=True)
    return logger


def _number(text: str) -> float:
    """A CSV cell as it was logged: ``"2"`` an int (the epoch), ``"0.97"`` a float."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def local_mlflow_uri(log_dir: str | Path) -> str:
    """The MLflow store inside the log folder: the SQLite database ``LOG_DIR/mlflow.db`` (no server needed).

    MLflow 3 refuses its older file store by default; its artifacts go to ``LOG_DIR/mlartifacts``.
    Built with SQLAlchemy's quoting: a ``?``, ``#`` or ``%`` in LOG_DIR stays part of the path.
    """
    from sqlalchemy.engine import URL

    database = str(Path(log_dir).resolve() / "mlflow.db")
    return URL.create("sqlite", database=database).render_as_string(hide_password=False)


def wandb_offline() -> bool:
    """Whether W&B runs offline: unless the user has set ``WANDB_API_KEY`` or ``WANDB_MODE=online``."""
    return os.environ.get("WANDB_MODE") != "online" and not os.environ.get("WANDB_API_KEY")


def log_artifacts(loggers: Sequence[Logger], files: Sequence[tuple[str, str]]) -> None:
    """Attach files to the run of every logger that keeps artifacts (MLflow): ``(folder, path)`` pairs."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            client: Any = logger.experiment
            for folder, path in files:
                client.log_artifact(logger.run_id, path, artifact_path=folder)


def finish_runs(loggers: Sequence[Logger], succeeded: bool) -> None:
    """Close what a finished ``train`` leaves open (rank 0), so that nothing writes after it returns.

    Lightning finalizes the loggers at the end of ``fit`` and of ``test``; the HParams entry written
    after the test reopens TensorBoard's writer (a new event file and a writer thread), which is closed
    here. Lightning's ``WandbLogger`` leaves the W&B run open (its ``finalize`` only uploads
    checkpoints): a second ``train_main`` in a notebook or a sweep would otherwise write into the first.
    """
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    # A logger that cannot close (a full disk, a server gone) costs a warning, never the run's own result
    # or error: this runs in a ``finally``.
    for logger in loggers:
        if isinstance(logger, (TensorBoardLogger, CSVLogger)):
            try:
                logger.finalize("success" if succeeded else "failed")
            except Exception as err:
                print(
                    f"warning: the {type(logger).__name__} could not close: {first_line(err)}",
                    file=sys.stderr,
                )
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            try:
                wandb.run.finish(exit_code=0 if succeeded else 1)
            except Exception as err:
                print(f"warning: the W&B run could not be finished: {first_line(err)}", file=sys.stderr)
