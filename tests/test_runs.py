"""``lit-mnist runs``: a log folder with a finished, a stopped (resumable), a failed and a running run; the
settings that differ, sorting, JSON and CSV, ``--diff``; hundreds of folders read without torch."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml

from lit_mnist.cli import main as lit_mnist_main
from lit_mnist.cli.runs import main as runs_main
from lit_mnist.config import RunConfig
from lit_mnist.errors import Interrupted
from lit_mnist.run import train
from lit_mnist.runlist import list_runs
from lit_mnist.runtime import lock_run


class _TermAtStep(L.Callback):
    """Sends this process SIGTERM inside the second epoch: the run saves last.ckpt and stops."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 20:  # 16 steps an epoch
            os.kill(os.getpid(), signal.SIGTERM)


class _FailBeforeTraining(L.Callback):
    """Fails in the sanity check, before training starts: nothing to resume, no config.yaml yet."""

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise RuntimeError("boom")


class _FailInSecondEpoch(L.Callback):
    """Fails once the first epoch's last.ckpt is saved: a run that ended in an error, with a checkpoint."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("late boom")


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """version_0 finished (lr 0.01), version_1 stopped by SIGTERM (lr 0.05), version_2 failed early."""
    logs = tmp_path_factory.mktemp("runs") / "logs"
    cfg = RunConfig(
        data_dir=str(tiny_data), val_size=100, batch_size=32, accelerator="cpu", devices=1, max_epochs=1,
        progress_bar=False, log_every_n_steps=5, log_dir=str(logs),
    )  # fmt: skip
    train(cfg)
    with pytest.raises(Interrupted):
        train(dataclasses.replace(cfg, lr=0.05, max_epochs=2), callbacks=[_TermAtStep()])
    with pytest.raises(RuntimeError, match="boom"):
        train(dataclasses.replace(cfg, hidden_sizes=[32]), callbacks=[_FailBeforeTraining()])
    return logs


def test_the_table_shows_each_runs_status_and_what_differs(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runs_main([str(log_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, finished, stopped, failed = lines[:4]
    assert header.split()[:3] == ["version", "started", "status"] and "settings that differ" in header
    results = json.loads((log_dir / "version_0" / "results.json").read_text())
    assert finished.split()[:1] == ["version_0"] and " finished " in finished
    assert f"{results['test_acc']:.2%} (" in finished and " mnist " in finished and " mlp " in finished
    assert "lr=0.01" in finished and "max_epochs=1" in finished and "hidden_sizes" not in finished
    assert " stopped " in stopped and "lr=0.05" in stopped and "max_epochs=2" in stopped
    assert " failed " in failed and "lr=" not in failed  # it ended before it wrote its config.yaml
    assert "seed=" not in finished  # the same in every run: not shown
    assert "95% Wilson score interval" in "\n".join(lines[4:])


def test_json_and_csv_carry_the_same_runs(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runs_main([str(log_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["status"]) for r in records] == [
        ("version_0", "finished"), ("version_1", "stopped"), ("version_2", "failed"),
    ]  # fmt: skip
    done = records[0]
    low, high = done["test_acc_ci"]
    assert low <= done["test_acc"] <= high and done["epochs"] == 1 and done["val_acc_best"] is not None
    stopped = records[1]  # stopped inside its second epoch: one epoch validated, in its metrics.csv
    assert stopped["test_acc"] is None and stopped["epochs"] == 1 and 0 <= stopped["val_acc_best"] <= 1
    assert set(done["settings"]) == {"lr", "max_epochs"}
    assert all(r["start_time"] for r in records)  # from each run's environment.json

    assert runs_main([str(log_dir), "--csv", "--sort", "lr"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(row["version"], row["lr"]) for row in rows] == [
        ("version_0", "0.01"),
        ("version_1", "0.05"),
        ("version_2", ""),
    ]
    assert rows[0]["test_acc_low"] and rows[1]["status"] == "stopped"  # a run without the setting goes last


def test_sorting_puts_the_best_accuracy_first_and_refuses_an_unknown_key(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runs_main([str(log_dir), "--sort", "test_acc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == "version_0"  # the only one tested
    with pytest.raises(SystemExit) as exit_info:
        runs_main([str(log_dir), "--sort", "colour"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-mnist runs: error: --sort colour: not a column or setting") and "\n" not in err


def test_a_run_whose_lock_is_held_is_running(log_dir: Path) -> None:
    run = log_dir / "version_1"
    with lock_run(run):
        assert {r.name: r.status for r in list_runs(log_dir)}["version_1"] == "running"
    assert {r.name: r.status for r in list_runs(log_dir)}["version_1"] == "stopped"  # the lock went with it


def test_diff_shows_config_and_environment_differences(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lit_mnist_main(["runs", str(log_dir), "--diff", "0", str(log_dir / "version_1")]) == 0
    out = capsys.readouterr().out
    config = out.split("config.yaml: ", 1)[1].split("\n\n")[0]
    assert config.startswith("2 differences")
    assert re.search(r"^  lr +0\.01  ->  0\.05$", config, re.M) and re.search(
        r"^  max_epochs +1  ->  2$", config, re.M
    )
    environment = out.split("environment.json: ", 1)[1]
    assert "start_time" in environment and "torch " not in environment  # one machine, one torch
    with pytest.raises(SystemExit) as exit_info:
        runs_main([str(log_dir), "--diff", "0", "9"])
    assert exit_info.value.code == 2
    assert "--diff 9: " in capsys.readouterr().err


def test_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        ([str(tmp_path / "none")], "is not a folder"),
        ([str(tmp_path), "--json", "--csv"], "give --json or --csv, not both"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            runs_main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert runs_main([str(tmp_path)]) == 0  # an empty folder: no runs, said so
    assert "No runs in" in capsys.readouterr().out


def _synthetic_run(run: Path, index: int) -> None:
    """A run folder as training writes it, without training: config.yaml, results.json, environment.json."""
    (run / "checkpoints").mkdir(parents=True)
    config = {**RunConfig().to_dict(), "lr": 0.01 * (1 + index % 3)}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "environment.json").write_text(
        json.dumps({"start_time": f"2026-01-01T00:{index % 60:02d}:00+00:00"})
    )
    if index % 2 == 0:
        results = {"test_acc": 0.97, "val_acc_best": 0.975, "epochs": 10, "test_images": 10_000}
        (run / "results.json").write_text(json.dumps(results))
    else:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not read")


def test_hundreds_of_runs_nested_ones_too_are_read_without_torch(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for i in range(300):
        _synthetic_run(logs / f"version_{i}", i)
    for fold in range(3):  # a parent folder holding one run per fold
        _synthetic_run(logs / "folds_0" / f"fold_{fold}", fold)
    (logs / "version_300").mkdir()  # a run that stopped before writing anything
    code = (
        "import sys, json\nfrom lit_mnist.cli.runs import main\n"
        f"assert main([{str(logs)!r}, '--json']) == 0\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    assert len(records) == 304
    names = [r["version"] for r in records]
    assert names[:3] == ["folds_0/fold_0", "folds_0/fold_1", "folds_0/fold_2"] and names[-1] == "version_300"
    assert names.index("version_10") == names.index("version_9") + 1  # numbers in order, not as text
    statuses = {r["version"]: r["status"] for r in records}
    assert statuses["version_0"] == "finished" and statuses["version_1"] == "stopped"
    assert statuses["version_300"] == "failed"
    assert records[3]["test_acc_ci"] == pytest.approx([0.9665, 0.9732], abs=1e-4)  # from test_images
    assert set(records[3]["settings"]) == {"lr"}


def test_a_run_that_failed_after_a_checkpoint_is_failed_not_stopped(tiny_data: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cfg = RunConfig(
        data_dir=str(tiny_data), val_size=100, batch_size=32, accelerator="cpu", devices=1, max_epochs=2,
        progress_bar=False, log_every_n_steps=5, log_dir=str(logs),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="late boom"):
        train(cfg, callbacks=[_FailInSecondEpoch()])
    run = logs / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "error.txt").read_text().splitlines()[0] == "RuntimeError: late boom"
    assert [(r.name, r.status) for r in list_runs(logs)] == [("version_0", "failed")]
