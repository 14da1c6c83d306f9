"""K-fold cross-validation: stratified seeded folds, K runs and a final model, resume, folder data, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import lit_mnist as lm
from lit_mnist.cli.flags import parse_run
from lit_mnist.cli.train import train_main
from lit_mnist.errors import ConfigError, UsageError
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.folds import FOLDS_NAME, folds_folder
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.splits import stratified_folds
from lit_mnist.stopping import GracefulInterrupt
from tests.conftest import shrunk_args
from tests.test_folder import write_folder

ROOT = Path(__file__).resolve().parents[1]


def _folds_args(data_dir: Path, log_dir: Path, *more: str) -> list[str]:
    """The shrunken run's flags without --val-size (the folds choose the validation images)."""
    args = shrunk_args(data_dir, log_dir, max_epochs=1)
    at = args.index("--val-size")
    return [*args[:at], *args[at + 2 :], "--logger", "csv", *more]


def _check_stratified(labels: torch.Tensor, folds: list[torch.Tensor]) -> None:
    every = torch.cat(folds)
    assert sorted(every.tolist()) == list(range(len(labels)))  # disjoint and covering
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in labels.unique():
        share = int((labels == c).sum()) / len(folds)
        for fold in folds:
            assert abs(int((labels[fold] == c).sum()) - share) < 1, (int(c), share)


# --------------------------------------------------------------------------- the folds
@pytest.mark.parametrize("k", [2, 5, 7])
def test_folds_are_stratified_disjoint_and_covering(tiny_data: Path, k: int) -> None:
    dm = MNISTDataModule(str(tiny_data), folds=k, fold=1)
    images, labels = dm.load(train=True)
    folds = stratified_folds(labels, k, seed=42)
    _check_stratified(labels, folds)
    dm.setup("fit")
    # the datamodule validates on fold 1 and trains on the others; the test set is the test files, whole
    assert torch.equal(dm.pixels("val"), images.reshape(-1, *dm.image_shape)[folds[1]])
    assert sorted(dm.split("train")[1].tolist()) == sorted(labels[torch.cat(folds[:1] + folds[2:])].tolist())
    assert len(dm.split("val")[1]) + len(dm.split("train")[1]) == 600 and len(dm.split("test")[1]) == 200


def test_the_same_seed_gives_the_same_folds_and_another_seed_others(tiny_data: Path) -> None:
    labels = MNISTDataModule(str(tiny_data)).load(train=True)[1]
    first, again, other = (stratified_folds(labels, 5, seed) for seed in (42, 42, 7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # the datamodules of two runs with other run seeds validate on the same images
    dms = [MNISTDataModule(str(tiny_data), folds=5, fold=3, seed=seed) for seed in (1, 2)]
    for dm in dms:
        dm.setup("fit")
    assert torch.equal(dms[0].pixels("val"), dms[1].pixels("val"))


def test_folder_dataset_folds_are_stratified(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pics", per_class=9, test_folder=True)
    vals, test = [], None
    for k in range(3):
        dm = ImageFolderDataModule(str(root), folds=3, fold=k, image_size=8)
        dm.setup("fit")
        labels = dm.split("val")[1]
        assert labels.bincount().tolist() == [3, 3, 3]
        assert len(dm.split("train")[1]) == 18
        vals.append(dm.pixels("val"))
        test = dm.pixels("test") if test is None else test
        assert torch.equal(dm.pixels("test"), test)  # the test folder, whatever the fold
    every = {bytes(image.numpy()) for image in torch.cat(vals)}
    assert len(every) == 27  # the three folds' validation images are the 27 training images, once each


@pytest.mark.parametrize(
    ("settings", "flag", "message"),
    [
        ({"folds": 1}, "--folds", "must be 0 (one run) or a number of folds >= 2, got 1"),
        ({"fold": 0}, "--fold", "give --folds K (K >= 2) with it"),
        ({"folds": 3, "fold": 3}, "--fold", "must be from 0 to 2 (--folds 3), got 3"),
        ({"folds": 3, "val_size": 100}, "--val-size", "is chosen by --folds"),
        (
            {"folds": 3, "ckpt_path": "last"},
            "--ckpt-path",
            "goes on where it stopped when the same command runs",
        ),
        ({"folds": 3, "lr": "auto"}, "--lr", "auto would search each fold's own"),
        ({"folds": 3, "early_stopping_patience": 2}, "--early-stopping-patience", "add --no-folds-final"),
        (
            {"val_size": 0, "early_stopping_patience": 2},
            "--early-stopping-patience",
            "holds out no validation",
        ),
    ],
)
def test_bad_fold_settings_are_one_line(settings: dict[str, object], flag: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        lm.RunConfig(**settings)  # type: ignore[arg-type]
    assert info.value.flag == flag and message in info.value.message


def test_more_folds_than_a_class_has_images_is_one_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="must be at most 60, the training images of class"):
        stratified_folds(MNISTDataModule(str(tiny_data)).load(train=True)[1], 61, seed=42)
    with pytest.raises(SystemExit) as exit_info:
        train_main(_folds_args(tiny_data, tmp_path / "logs", "--folds", "61"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.py: error: --folds must be at most 60, the training images of class")
    with pytest.raises(UsageError, match=r"lit_mnist\.cross_validate"):
        lm.train(lm.RunConfig(folds=3, data_dir=str(tiny_data)))


# --------------------------------------------------------------------------- the runs
class _Fits(L.Callback):
    """Each fit's fold (None: the final model) and the epoch it started at."""

    def __init__(self) -> None:
        self.fits: list[tuple[int | None, int]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule: lm.TensorDataModule = trainer.datamodule  # type: ignore[attr-defined]
        self.fits.append((datamodule.fold, trainer.current_epoch))


def test_cross_validation_resumes_a_stopped_fold_keeps_finished_ones_and_sums_up(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _folds_args(tiny_data, tmp_path / "logs", "--folds", "2", "--max-epochs", "2")
    folder = folds_folder(parse_run(args))
    started: list[tuple[int | None, int]] = []

    def sigterm_in_fold_1_epoch_1(self: GracefulInterrupt, trainer: L.Trainer, *args: object) -> None:
        fold = trainer.datamodule.fold  # type: ignore[attr-defined]
        if (fold, trainer.current_epoch) not in started:
            started.append((fold, trainer.current_epoch))
            if (fold, trainer.current_epoch) == (1, 1):
                os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_train_batch_end", sigterm_in_fold_1_epoch_1, raising=False)
        assert train_main(args) == 128 + signal.SIGTERM
    assert started == [(0, 0), (0, 1), (1, 0), (1, 1)]
    err = capsys.readouterr().err
    assert "train.py: SIGTERM stopped fold 1 of the cross-validation (training, epoch 1" in err
    assert f"saved {folder / 'fold_1/version_0/checkpoints/last.ckpt'}" in err
    assert "Go on with the same command" in err
    summary = json.loads((folder / FOLDS_NAME).read_text())
    assert summary["status"] == "running" and [run["fold"] for run in summary["runs"]] == [0]
    kept = (folder / "fold_0/version_0/results.json").stat().st_mtime_ns

    fits = _Fits()
    cv = lm.cross_validate(parse_run(args), callbacks=[fits])  # the same settings: the same folder, going on
    assert fits.fits == [(1, 1), (None, 0)]  # fold 0 kept, fold 1 resumed in epoch 1, then the final model
    assert (folder / "fold_0/version_0/results.json").stat().st_mtime_ns == kept
    assert cv.folder == str(folder) and [run.epochs for run in cv.runs] == [2, 2]
    saved = [json.loads((folder / f"fold_{k}/version_0/results.json").read_text()) for k in (0, 1)]
    accs = [run["val_acc_best"] for run in saved]
    assert cv.val_accs == tuple(accs)
    assert cv.mean == pytest.approx(statistics.fmean(accs)) and cv.std == pytest.approx(
        statistics.stdev(accs)
    )
    final = cv.final
    assert final is not None and final.run_dir == str(folder / "final/version_0")
    assert final.val_acc_best is None and final.config.val_size == 0  # all the training images, no validation
    assert final.test_images == 200 and final.test_acc_ci is not None
    assert final.test_acc_ci[0] <= final.test_acc <= final.test_acc_ci[1]
    summary = json.loads((folder / FOLDS_NAME).read_text())
    assert summary["status"] == "finished" and summary["val_acc_mean"] == pytest.approx(cv.mean)
    assert summary["val_acc_std"] == pytest.approx(cv.std) and summary["final"]["test_acc"] == final.test_acc

    capsys.readouterr()
    assert train_main(args) == 0  # the same command: everything is finished, the summary is printed again
    out = capsys.readouterr().out
    assert "Fold 0 is finished" in out and "Fold 1 is finished" in out and "starts in" not in out
    assert f"Validation accuracy: {cv.mean:.2%} ± {cv.std:.2%}" in out
    assert f"test accuracy {final.test_acc:.2%} (95% Wilson score interval" in out
    assert f"Summary: {folder / FOLDS_NAME}" in out
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [folder.name]


def test_a_folder_dataset_cross_validates(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pics", per_class=8)
    cfg = lm.RunConfig(
        dataset="folder", data_dir=str(root), image_size=8, test_size=6, folds=3, batch_size=4, max_epochs=1,
        accelerator="cpu", devices=1, progress_bar=False, log_every_n_steps=1, logger=("csv",),
        log_dir=str(tmp_path / "logs"),
    )  # fmt: skip
    cv = lm.cross_validate(cfg)
    assert len(cv.runs) == 3 and all(run.val_acc_best is not None for run in cv.runs)
    assert cv.final is not None and cv.final.test_images == 6
    assert Path(cv.folder, FOLDS_NAME).is_file()


def test_a_sweep_trial_with_folds_optimises_the_folds_mean(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason='the sweep extra is not installed: pip install -e ".[sweep]"')
    import optuna
    import yaml

    from lit_mnist.cli.sweep import sweep_main

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"lr": [0.05]}, "fixed": {"folds": 2, "folds_final": False}}))
    logs = tmp_path / "logs"
    args = _folds_args(tiny_data, logs)
    args = args[: args.index("--devices")] + args[args.index("--devices") + 2 :]  # the sweep's own: 1
    assert sweep_main(["--space", str(space), "--trials", "1", *args]) == 0
    study = optuna.load_study(study_name="space", storage=f"sqlite:///{logs / 'sweeps.db'}")
    summary = json.loads((logs / "version_0" / FOLDS_NAME).read_text())
    assert [run["fold"] for run in summary["runs"]] == [0, 1] and summary["final"] is None
    assert study.best_value == pytest.approx(summary["val_acc_mean"])


def test_two_process_ddp_cross_validation_writes_each_folder_once(tiny_data: Path, tmp_path: Path) -> None:
    """``strategy ddp`` launches the script again in a second process: both go through the same folds."""
    args = _folds_args(tiny_data, tmp_path / "logs", "--folds", "2", "--devices", "2", "--strategy", "ddp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = (tmp_path / "logs").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["final", "fold_0", "fold_1", FOLDS_NAME]
    for run in ("fold_0", "fold_1", "final"):
        assert [p.name for p in (folder / run).iterdir()] == ["version_0"]
        assert (folder / run / "version_0" / "results.json").is_file()
    assert result.stdout.count("Validation accuracy:") == 1  # one summary, from rank 0
    summary = json.loads((folder / FOLDS_NAME).read_text())
    assert summary["status"] == "finished" and summary["final"]["test_images"] == 200


def test_a_run_with_no_validation_images_tests_its_last_epoch(run_config: lm.RunConfig) -> None:
    result = lm.train(dataclasses.replace(run_config, val_size=0, max_epochs=1, logger=("csv",)))
    assert result.val_acc_best is None
    assert result.best_checkpoint is not None and Path(result.best_checkpoint).name == "epoch00.ckpt"
    assert result.last_checkpoint is not None and Path(result.last_checkpoint).is_file()


class _FailFirstFit(L.Callback):
    """Fails the first fit it sees, in its sanity check: before any checkpoint exists."""

    def __init__(self) -> None:
        self.failed = False

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("fold 0 broke")


def test_a_fold_that_failed_before_its_first_checkpoint_starts_anew_beside_the_failed_attempt(
    tiny_data: Path, tmp_path: Path
) -> None:
    args = _folds_args(tiny_data, tmp_path / "logs", "--folds", "2", "--no-folds-final")
    folder = folds_folder(parse_run(args))
    with pytest.raises(RuntimeError, match="fold 0 broke"):
        lm.cross_validate(parse_run(args), callbacks=[_FailFirstFit()])
    assert (folder / "fold_0/version_0/error.txt").read_text().startswith("RuntimeError: fold 0 broke")

    cv = lm.cross_validate(parse_run(args))  # again: fold 0 starts in a clean folder
    assert [run.epochs for run in cv.runs] == [1, 1]
    (failed,) = [p for p in (folder / "fold_0").iterdir() if p.name.startswith("failed_")]
    assert (failed / "error.txt").is_file() and not (failed / "results.json").exists()
    assert not (folder / "fold_0/version_0/error.txt").exists()
    assert (folder / "fold_0/version_0/results.json").is_file()
