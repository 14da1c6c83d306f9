"""End-to-end training through the CLI: the run folder, resume, reproducibility, the summary."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torchvision import datasets

from lit_mnist import MNISTClassifier, MNISTDataModule, runs
from lit_mnist.cli.train import train_main
from lit_mnist.config import RunConfig
from lit_mnist.errors import UsageError
from lit_mnist.run import train
from lit_mnist.runs import RUN_VERSION_ENV, reserve_version, run_version, share_version
from tests.conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def _run_dir(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "logs").glob("version_*")
    return run


def _evaluate(checkpoint: str | Path, data_dir: Path, val_size: int) -> float:
    """Test accuracy of a checkpoint, computed without Lightning's loops."""
    model = MNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    dm = MNISTDataModule(str(data_dir), val_size=val_size)
    dm.setup("test")
    images, labels = dm.split("test")
    with torch.no_grad():
        return (model(images).argmax(-1) == labels).float().mean().item()


def test_training_writes_a_complete_run(
    run_args: list[str], tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*run_args, "--max-epochs", "3"]) == 0
    out = capsys.readouterr().out
    run = _run_dir(tmp_path)
    assert run.name == "version_0"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "hparams.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["max_epochs"] == 3
    results = json.loads((run / "results.json").read_text())
    assert results["test_acc"] >= 0.9  # the tiny digits are easy: learning happened
    assert 0.9 <= results["val_acc_best"] <= 1.0
    best = Path(results["best_checkpoint"])
    assert best.parent == run / "checkpoints" and best.is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    # the summary
    assert f"Test accuracy: {results['test_acc']:.2%}" in out
    assert str(best) in out
    assert f"tensorboard --logdir {tmp_path / 'logs'}" in out
    # the best checkpoint, reloaded safely, gives the reported test accuracy
    assert _evaluate(best, tiny_data, 100) == pytest.approx(results["test_acc"], abs=1e-6)


def test_resume_last_continues_the_same_run(run_args: list[str], tmp_path: Path) -> None:
    assert train_main(run_args) == 0  # 2 epochs
    run = _run_dir(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    assert before["epoch"] == 1
    assert train_main([*run_args, "--ckpt-path", "last", "--max-epochs", "3"]) == 0
    assert _run_dir(tmp_path) == run  # no new version folder: the run goes on where it was
    after = torch.load(last, map_location="cpu", weights_only=True)
    assert after["epoch"] == 2
    assert after["global_step"] == before["global_step"] * 3 // 2
    assert yaml.safe_load((run / "config.yaml").read_text())["max_epochs"] == 3


def test_resume_equals_uninterrupted_at_epoch_boundary(run_args: list[str], tmp_path: Path) -> None:
    straight = [*run_args, "--log-dir", str(tmp_path / "straight"), "--max-epochs", "3"]
    assert train_main(straight) == 0
    split = [*run_args, "--log-dir", str(tmp_path / "split")]
    assert train_main([*split, "--max-epochs", "2"]) == 0
    assert train_main([*split, "--max-epochs", "3", "--ckpt-path", "last"]) == 0
    a = torch.load(tmp_path / "straight/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_saved_config_repeats_the_run(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--optimizer", "adam", "--lr", "0.003", "--hidden-sizes", "48"]) == 0
    first = _run_dir(tmp_path)
    assert train_main(["--config", str(first / "config.yaml")]) == 0
    second = tmp_path / "logs" / "version_1"
    r1 = json.loads((first / "results.json").read_text())
    r2 = json.loads((second / "results.json").read_text())
    assert r1["test_acc"] == r2["test_acc"]
    assert r1["test_loss"] == r2["test_loss"]
    hp = torch.load(r2["best_checkpoint"], weights_only=True)["hyper_parameters"]
    assert (hp["optimizer"], hp["lr"], hp["hidden_sizes"]) == ("adam", 0.003, [48])


def test_torchvision_loader_path_trains(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--loader", "torchvision", "--max-epochs", "3"]) == 0
    assert json.loads((_run_dir(tmp_path) / "results.json").read_text())["test_acc"] >= 0.9


def test_concurrent_runs_get_distinct_folders(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(lambda _: reserve_version(tmp_path), range(16)))
    assert sorted(versions) == list(range(16))


def test_a_leftover_run_version_variable_does_not_send_a_run_into_a_finished_one(
    run_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished = tmp_path / "logs" / "version_0"
    (finished / "checkpoints").mkdir(parents=True)
    kept = {
        name: f"the finished run's {name}\n"
        for name in ("results.json", "config.yaml", "checkpoints/last.ckpt")
    }
    for name, text in kept.items():
        (finished / name).write_text(text)
    monkeypatch.setenv(RUN_VERSION_ENV, "0")
    shared: list[str | None] = []

    class SeeWhatChildrenRead(L.Callback):
        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            shared.append(os.environ.get(RUN_VERSION_ENV))

    result = train(dataclasses.replace(run_config, max_epochs=1), callbacks=[SeeWhatChildrenRead()])
    assert result.run_dir == str(tmp_path / "logs" / "version_1")
    assert shared == ["1"]  # rank 0 names its own folder for DDP's re-launched processes
    assert json.loads((tmp_path / "logs" / "version_1" / "results.json").read_text())["epochs"] == 1
    assert {name: (finished / name).read_text() for name in kept} == kept
    assert os.environ[RUN_VERSION_ENV] == "0"  # as before the run


def test_run_version_variable_is_read_by_the_other_ranks_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_VERSION_ENV, "abc")
    assert run_version(str(tmp_path), None) == 0  # rank 0 reserves its own folder
    monkeypatch.setattr(runs, "global_rank", lambda: 1)
    with pytest.raises(UsageError, match=f"^\\${RUN_VERSION_ENV}='abc' is not a run folder number") as info:
        run_version(str(tmp_path), None)
    assert "\n" not in str(info.value)
    monkeypatch.setenv(RUN_VERSION_ENV, "3")
    assert run_version(str(tmp_path), None) == 3  # the folder rank 0 named for DDP's re-launched processes
    share_version(7)
    assert os.environ[RUN_VERSION_ENV] == "3"  # other ranks set nothing


def test_missing_data_offline_is_one_clear_error(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    assert train_main([*run_args, "--data-dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "MNIST raw files are missing or damaged in" in err
    assert "6bbc9ace898e44ae57da46a324031adb" in err
    assert "Traceback" not in err


def test_checkpoint_of_another_shape_is_refused(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*run_args, "--max-epochs", "1"]) == 0
    last = _run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_main([*run_args, "--hidden-sizes", "32", "--ckpt-path", str(last)])
    assert info.value.code == 2
    assert "was written with --hidden-sizes 128 64 and this run asks for 32" in capsys.readouterr().err


def test_script_runs_as_a_user_would(tiny_data: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--data-dir",
            str(tiny_data),
            "--val-size",
            "100",
            "--max-epochs",
            "1",
            "--accelerator",
            "cpu",
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Test accuracy: \d+\.\d\d%", result.stdout)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_real_mnist_default_recipe_3_epochs(real_data_dir: Path, tmp_path: Path) -> None:
    """The classic recipe (SGD 0.01, momentum 0.9, batch 64) for 3 epochs: >= 96.5% test accuracy."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--data-dir",
            str(real_data_dir),
            "--max-epochs",
            "3",
            "--accelerator",
            "cpu",
            "--no-progress-bar",
        ],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(re.search(r"Test accuracy: (\d+\.\d\d)%", result.stdout)[1])  # type: ignore[index]
    assert printed >= 96.5
    best = re.search(r"Best checkpoint: (\S+)", result.stdout)[1]  # type: ignore[index]
    # load_from_checkpoint(..., weights_only=True) of the best checkpoint reproduces the printed accuracy
    reloaded = _evaluate(tmp_path / best, real_data_dir, 5000)
    assert round(reloaded * 100, 2) == printed
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    model = MNISTClassifier.load_from_checkpoint(tmp_path / best, weights_only=True)
    (metrics,) = trainer.test(model, datamodule=MNISTDataModule(str(real_data_dir)), verbose=False)
    assert round(metrics["test/acc"] * 100, 2) == printed
