"""Loggers chosen by ``--logger``: CSV beside TensorBoard by default, MLflow (its local store in the log dir,
and a real tracking server the test starts), W&B offline in the run folder, and the one-line error for an
extra that is not installed.

What each logger holds is read back through its own client (``MlflowClient``) or from the files it writes.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import torch

from lit_mnist.cli.train import train_main
from tests.conftest import RunningServer

#: ``run_args``: 2 epochs of 16 optimizer steps (500 tiny training images, batch 32); steps count from 0.
EPOCH_ENDS = [15, 31]
#: Scalars every logger keeps under TensorBoard's names.
SCALARS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc")
FIGURES = ("curves.png", "confusion_matrix.png")
EXPERIMENT = "lit_mnist"
RUN = "version_0"

# mlflow 3.17's SQLite store (mlflow/store/tracking/sqlalchemy_store.py) uses the ``noload`` loader strategy,
# which SQLAlchemy 2.1 deprecates on import; a matter between those two packages, not of lit_mnist.
SQLALCHEMY_NOLOAD = "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"


def _finished(log_dir: Path, version: int = 0) -> tuple[Path, dict[str, Any]]:
    run = log_dir / f"version_{version}"
    return run, json.loads((run / "results.json").read_text())


def _csv_column(path: Path, column: str) -> list[tuple[int, float]]:
    """The ``(step, value)`` rows of ``metrics.csv`` (Lightning's CSVLogger) that hold ``column``."""
    with open(path, newline="") as f:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(f) if row.get(column)]


def _hparams(best_checkpoint: str) -> dict[str, Any]:
    """The module's and the datamodule's hyperparameters, as the best checkpoint holds them."""
    ckpt = torch.load(best_checkpoint, map_location="cpu", weights_only=True)
    return {**ckpt["hyper_parameters"], **ckpt["datamodule_hyper_parameters"]}


def check_mlflow_run(tracking_uri: str, results: dict[str, Any], downloads: Path) -> None:
    """The MLflow run ``version_0`` of experiment ``lit_mnist``, read back with MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{RUN}'")
    assert [run.info.run_name for run in runs] == [RUN]
    (run,) = runs
    run_id = run.info.run_id
    assert results["mlflow_run_id"] == run_id
    assert run.info.status == "FINISHED"

    metrics = run.data.metrics  # the last value of each
    assert set(SCALARS) - set(metrics) == set(), f"TensorBoard's scalars missing in MLflow: {sorted(metrics)}"
    assert metrics["test/acc"] == pytest.approx(results["test_acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(results["test_loss"], abs=1e-6)
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == EPOCH_ENDS

    params = run.data.params
    hparams = _hparams(results["best_checkpoint"])
    assert set(hparams) - set(params) == set(), f"hyperparameters missing in MLflow: {sorted(params)}"
    assert float(params["lr"]) == pytest.approx(hparams["lr"])
    assert int(params["batch_size"]) == hparams["batch_size"] == 32
    assert params["optimizer"] == hparams["optimizer"]

    artifacts = list(_artifact_files(client, run_id))
    names = {PurePosixPath(path).name for path in artifacts}
    assert set(FIGURES) <= names, artifacts
    best = Path(results["best_checkpoint"])
    (best_artifact,) = [path for path in artifacts if PurePosixPath(path).name == best.name]
    downloads.mkdir(parents=True, exist_ok=True)
    fetched = Path(client.download_artifacts(run_id, best_artifact, str(downloads)))
    assert fetched.read_bytes() == best.read_bytes()  # the best checkpoint itself


def _artifact_files(client: Any, run_id: str, path: str | None = None) -> Iterator[str]:
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from _artifact_files(client, run_id, info.path)
        else:
            yield info.path


def test_default_loggers_write_metrics_csv_beside_tensorboard(run_args: list[str], tmp_path: Path) -> None:
    assert train_main(run_args) == 0
    run, results = _finished(tmp_path / "logs")
    assert list(run.glob("events.out.tfevents.*"))
    metrics = run / "metrics.csv"
    assert metrics.is_file()
    assert [value for _, value in _csv_column(metrics, "test/acc")] == [
        pytest.approx(results["test_acc"], abs=1e-6)
    ]
    assert [value for _, value in _csv_column(metrics, "test/loss")] == [
        pytest.approx(results["test_loss"], abs=1e-6)
    ]
    assert [step for step, _ in _csv_column(metrics, "val/acc")] == EPOCH_ENDS  # TensorBoard's steps
    assert "mlflow_run_id" not in results


@pytest.mark.filterwarnings(SQLALCHEMY_NOLOAD)
def test_mlflow_local_store_in_the_log_dir(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from lit_mnist.loggers import local_mlflow_uri

    cwd = tmp_path / "cwd"  # MLflow's own default is ./mlruns: nothing may land in the working folder
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    log_dir = tmp_path / "logs"
    assert train_main([*run_args, "--logger", "tensorboard", "csv", "mlflow"]) == 0
    run, results = _finished(log_dir)
    assert (run / "metrics.csv").is_file()
    uri = local_mlflow_uri(log_dir)
    assert str(log_dir.resolve()) in uri
    check_mlflow_run(uri, results, tmp_path / "downloads")
    best = Path(results["best_checkpoint"]).name
    stored = [path for path in log_dir.rglob(best) if path.parent != run / "checkpoints"]
    assert stored, f"the checkpoint artifact is not stored inside {log_dir}"
    assert list(cwd.iterdir()) == []


@pytest.mark.filterwarnings(SQLALCHEMY_NOLOAD)
def test_mlflow_tracking_server_receives_the_run(run_args: list[str], tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    server = tmp_path / "server"
    server.mkdir()
    command = lambda port: [  # noqa: E731
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{server / 'mlflow.db'}",
        "--artifacts-destination", str(server / "artifacts"),  # served: clients upload through the server
    ]  # fmt: skip
    log_dir = tmp_path / "logs"
    with RunningServer(
        command, "/health", tmp_path / "mlflow-server.log", timeout=300, on_error=pytest.skip
    ) as url:
        assert (
            train_main([*run_args, "--logger", "tensorboard", "csv", "mlflow", "--mlflow-tracking-uri", url])
            == 0
        )
        run, results = _finished(log_dir)
        assert (run / "metrics.csv").is_file()
        check_mlflow_run(url, results, tmp_path / "downloads")
    best = Path(results["best_checkpoint"]).name
    assert list((server / "artifacts").rglob(best)), (
        "the checkpoint did not reach the server's artifact store"
    )
    # with a tracking URI there is no local store
    assert sorted(path.name for path in log_dir.iterdir()) == [RUN]


def test_csv_logger_alone_keeps_the_run_folder(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--logger", "csv"]) == 0
    log_dir = tmp_path / "logs"
    run, results = _finished(log_dir)
    assert sorted(path.name for path in log_dir.iterdir()) == [RUN]
    assert not list(run.glob("events.out.tfevents.*"))
    assert _csv_column(run / "metrics.csv", "test/acc")
    best = Path(results["best_checkpoint"])
    assert best.parent == run / "checkpoints" and best.is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for figure in FIGURES:
        assert (run / figure).is_file(), figure


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """W&B offline and silent, its user folders in tmp_path; ``WANDB_DIR`` unset (the run must choose).

    Afterwards: any run left open is finished, W&B's service process stopped, and the ``WANDB_*``
    variables W&B set for itself (``WANDB_SERVICE``) removed.
    """
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # not the user's home
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    before = {name for name in os.environ if name.startswith("WANDB_")}
    yield wandb
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()
    for name in [name for name in os.environ if name.startswith("WANDB_") and name not in before]:
        del os.environ[name]


def test_wandb_offline_writes_each_run_into_its_run_folder(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_offline: Any
) -> None:
    cwd = tmp_path / "cwd"  # W&B's own default is ./wandb
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    log_dir = tmp_path / "logs"
    for version in (0, 1):  # two runs in one process (a notebook, a sweep): each its own W&B run
        assert train_main([*run_args, "--logger", "wandb"]) == 0
        assert wandb_offline.run is None, "train_main left its W&B run open"
        run, results = _finished(log_dir, version)
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, sorted(str(p.relative_to(log_dir)) for p in log_dir.rglob("offline-run-*"))
        assert [p.stat().st_size > 0 for p in offline[0].glob("run-*.wandb")] == [True]
        assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_a_missing_extra_is_one_line_naming_it(
    extra: str,
    run_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, extra, None)  # import mlflow / import wandb now raises ImportError
    with pytest.raises(SystemExit) as info:
        train_main([*run_args, "--logger", "tensorboard", extra])
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f'pip install -e ".[{extra}]"' in lines[0]
    assert not list((tmp_path / "logs").glob("version_*"))  # refused before anything was written


def test_the_extras_named_exist() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for extra in ("mlflow", "wandb"):
        assert any(req.startswith(extra) for req in extras.get(extra, [])), (extra, extras.get(extra))


def test_train_main_leaves_no_tensorboard_writer_running(run_args: list[str]) -> None:
    """The HParams entry written after the test reopens TensorBoard's writer; the run closes it again, so
    nothing writes into the run folder once ``train_main`` has returned (a notebook, a sweep)."""
    before = set(threading.enumerate())
    assert train_main([*run_args, "--max-epochs", "1"]) == 0
    left = [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
    assert left == [], left


def test_mlflow_server_that_does_not_answer_is_refused_at_start(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlflow")
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            train_main([*run_args, "--logger", "csv", "mlflow", "--mlflow-tracking-uri", uri])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"train.py: error: --mlflow-tracking-uri {uri}: no server answers there ("), (
        lines
    )
    assert "start the MLflow server (mlflow server --port 5000) or fix the URI" in lines[0]
    assert not (tmp_path / "logs").exists()  # before any run folder


def test_wandb_online_without_a_key_is_refused_at_start(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("wandb")
    from lit_mnist.loggers import wandb_api_key_configured

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # none there
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_main([*run_args, "--logger", "csv", "wandb"])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "train.py: error: --logger wandb with WANDB_MODE=online needs a W&B API key and none is set "
        "(WANDB_API_KEY, or the api.wandb.ai entry of ~/.netrc that wandb login writes); run wandb login or "
        "set WANDB_API_KEY, or unset WANDB_MODE to log offline (wandb sync later)"
    ]
    assert not (tmp_path / "logs").exists()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_api_key_configured()  # what wandb login writes counts


def test_a_resume_killed_while_it_rewrote_metrics_csv_loses_no_rows(tmp_path: Path) -> None:
    """A resume moves metrics.csv aside and writes its rows again; killed in between, the next resume
    takes them from the file moved aside (metrics.csv.resumed), not from the partial metrics.csv."""
    from lit_mnist.loggers import csv_logger

    run = tmp_path / "version_0"
    run.mkdir()
    rows = [{"epoch": "0", "step": "15", "val/acc": "0.5"}, {"epoch": "1", "step": "31", "val/acc": "0.75"}]
    with open(run / "metrics.csv.resumed", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["epoch", "step", "val/acc"])
        writer.writeheader()
        writer.writerows(rows)
    (run / "metrics.csv").write_text("epoch,step,val/acc\n0,15,")  # cut short by the kill
    csv_logger(tmp_path, 0)
    assert not (run / "metrics.csv.resumed").exists()
    with open(run / "metrics.csv", newline="") as file:
        again = list(csv.DictReader(file))
    assert [(r["epoch"], r["step"], float(r["val/acc"])) for r in again] == [
        ("0", "15", 0.5),
        ("1", "31", 0.75),
    ]


@pytest.mark.parametrize("name", ["a?b=1", "c#d", "e%20f", "g h", "é日"])
def test_the_local_mlflow_store_url_round_trips_its_path(tmp_path: Path, name: str) -> None:
    """A ``?``, ``#``, ``%``, space or non-ASCII letter in --log-dir stays part of the store's path."""
    pytest.importorskip("mlflow")
    from sqlalchemy.engine import make_url

    from lit_mnist.loggers import local_mlflow_uri

    log_dir = tmp_path / name / "logs"
    assert make_url(local_mlflow_uri(log_dir)).database == str(log_dir.resolve() / "mlflow.db")
