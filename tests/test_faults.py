"""Faults in checkpoints: each answered with one line, nothing lost, no payload ever run."""

import errno
import pickle
from pathlib import Path

import fsspec.implementations.local
import pytest
import torch

from lit_mnist.cli.train import train_main


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def trained(run_args: list[str], tmp_path: Path) -> Path:
    """The checkpoints folder of a finished 1-epoch tiny run."""
    assert train_main([*run_args, "--max-epochs", "1"]) == 0
    return next((tmp_path / "logs").glob("version_*")) / "checkpoints"


def test_truncated_checkpoint(trained: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = trained.parent / "truncated.ckpt"
    bad.write_bytes((trained / "last.ckpt").read_bytes()[:5000])
    line = _usage_error([*run_args, "--ckpt-path", str(bad)], capsys)
    assert f"--ckpt-path {bad} is not a readable lit_mnist checkpoint" in line


def test_file_that_is_not_a_checkpoint(
    tmp_path: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello")
    assert "is not a readable lit_mnist checkpoint" in _usage_error(
        [*run_args, "--ckpt-path", str(bad)], capsys
    )
    other = tmp_path / "tensor.ckpt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "is not a Lightning checkpoint" in _usage_error([*run_args, "--ckpt-path", str(other)], capsys)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "the payload ran"))


def test_malicious_checkpoint_never_runs_its_payload(
    tmp_path: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, tmp_path / "evil2.ckpt")
    for path in (evil, tmp_path / "evil2.ckpt"):
        line = _usage_error([*run_args, "--ckpt-path", str(path)], capsys)
        assert "is not a readable lit_mnist checkpoint" in line
    assert not marker.exists()


def test_failing_save_keeps_the_previous_checkpoint(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills up while the second epoch's checkpoints are written."""
    assert train_main(run_args) == 0
    checkpoints = next((tmp_path / "logs").glob("version_*")) / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}

    def disk_full(self: object, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileOpener, "write", disk_full)
    capsys.readouterr()
    assert train_main([*run_args, "--ckpt-path", "last", "--max-epochs", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "No space left on device" in err[0] and "checkpoints written before are intact" in err[0]
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    assert after == before
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1  # still loadable


def test_out_of_memory_suggests_a_smaller_batch(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device OOM in epoch 1 (simulated: no GPU here) ends with one line naming what to change."""
    from lit_mnist.module import MNISTClassifier

    real_step = MNISTClassifier.training_step

    def step(self: MNISTClassifier, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(MNISTClassifier, "training_step", step)
    capsys.readouterr()
    assert train_main(run_args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "out of memory on cpu during training (epoch 1, step" in line
    assert "at --batch-size 32: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)" in line
    assert "pass a smaller --batch-size (e.g. 16; it is per device)" in line
    assert "--precision bf16-mixed" in line and "--loader torchvision" in line
    # nothing lost: epoch 0's checkpoints are intact and load
    checkpoints = next((tmp_path / "logs").glob("version_*")) / "checkpoints"
    assert f"checkpoints written before are in {checkpoints}" in line
    best = next(checkpoints.glob("epoch00-*.ckpt"))
    assert MNISTClassifier.load_from_checkpoint(best, weights_only=True) is not None
