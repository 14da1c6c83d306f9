"""The environment record: environment.json in every run folder (a failed run's too), in every checkpoint,
what --deterministic forced, the git commit of a checkout, and the warning of a resume elsewhere."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mnist.config import RunConfig
from lit_mnist.environment import collect_environment, cpu_model, git_state, resume_differences
from lit_mnist.run import train

ROOT = Path(__file__).resolve().parents[1]


def test_the_record_holds_plain_values_of_this_process() -> None:
    record = collect_environment()
    assert record == json.loads(json.dumps(record))  # plain values only: JSON and weights_only=True take them
    assert record["torch"] == str(torch.__version__) and type(record["torch"]) is str
    assert record["lightning"] == L.__version__
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["command_line"] == sys.argv
    assert record["cpu"] == cpu_model() and record["cpu"]
    assert record["cpu_count"] == os.cpu_count() and 1 <= record["cpu_affinity"] <= os.cpu_count()
    started = datetime.fromisoformat(record["start_time"])
    assert started.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - started).total_seconds()) < 600
    for key in ("cuda", "cudnn", "gpus", "os", "host", "lit_mnist", "git_commit", "git_dirty"):
        assert key in record


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_of_a_checkout_and_of_a_plain_folder(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a checkout
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(tmp_path), *args], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "notes.txt").write_text("untracked files do not make it dirty\n")
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"git_commit": head, "git_dirty": True}
    # a checkout one level up is another project's: lit_mnist's own folder must be the top
    (tmp_path / "site").mkdir()
    assert git_state(tmp_path / "site") == {"git_commit": None, "git_dirty": None}


def test_resume_differences_name_what_breaks_a_bit_exact_resume() -> None:
    here = {
        "torch": "2.14.1",
        "cuda": "13.0",
        "device_type": "cuda",
        "device_name": "NVIDIA H100",
        "host": "b",
    }
    assert resume_differences({}, here) is None  # a checkpoint without a record says nothing
    same = {"lit_mnist_environment": {**here, "host": "a", "start_time": "2026-01-01T00:00:00+00:00"}}
    assert resume_differences(same, here) is None  # another host or time: not a difference that matters
    other = {
        "lit_mnist_environment": {**here, "torch": "2.13.0", "device_type": "cpu", "device_name": "AMD EPYC"}
    }
    why = resume_differences(other, here)
    assert why is not None and len(why.splitlines()) == 1
    assert "torch 2.13.0 -> 2.14.1" in why and "device kind cpu -> cuda" in why and "not bit for bit" in why


class _FailAtStart(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise RuntimeError("boom")


def test_every_run_folder_and_checkpoint_has_the_record(run_config: RunConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(run_config, max_epochs=1)
    result = train(cfg)
    run = Path(str(result.run_dir))
    record = json.loads((run / "environment.json").read_text())
    assert record["device_type"] == "cpu" and record["world_size"] == 1 and record["precision"] == "32-true"
    assert (
        record["determinism"]["deterministic_algorithms"] is False and record["determinism"]["forced"] == []
    )
    if (ROOT / ".git").exists() and shutil.which("git"):  # the tests run from the source checkout
        assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["lit_mnist_environment"]
        assert saved["torch"] == record["torch"] and saved["device_type"] == "cpu"

    failed_cfg = dataclasses.replace(cfg, log_dir=str(tmp_path / "failed"))
    with pytest.raises(RuntimeError, match="boom"):
        train(failed_cfg, callbacks=[_FailAtStart()])
    failed = json.loads((tmp_path / "failed" / "version_0" / "environment.json").read_text())
    assert failed["command_line"] == sys.argv and failed["device_type"] == "cpu"


@pytest.fixture
def restores_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """--deterministic switches torch's global flags: put them back for the next test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored (removed) at teardown
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def test_a_deterministic_run_says_what_it_forced(run_config: RunConfig, restores_determinism: None) -> None:
    result = train(dataclasses.replace(run_config, max_epochs=1, deterministic=True))
    determinism = json.loads((Path(str(result.run_dir)) / "environment.json").read_text())["determinism"]
    assert determinism["deterministic_algorithms"] is True and determinism["cudnn_benchmark"] is False
    assert determinism["cublas_workspace_config"] == ":4096:8"
    forced = " ".join(determinism["forced"])
    assert (
        "torch.use_deterministic_algorithms" in forced
        and "cuBLAS" in forced
        and "cudnn.benchmark off" in forced
    )


def test_a_resume_elsewhere_warns_in_one_line_and_keeps_the_first_record(
    run_config: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    first = train(dataclasses.replace(run_config, max_epochs=1))
    run = Path(str(first.run_dir))
    last = run / "checkpoints" / "last.ckpt"
    started = json.loads((run / "environment.json").read_text())["start_time"]
    capsys.readouterr()

    train(dataclasses.replace(run_config, max_epochs=2, ckpt_path=str(last)))  # the same machine: silent
    assert "warning" not in capsys.readouterr().err

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    checkpoint["lit_mnist_environment"] |= {"torch": "2.0.0", "device_type": "cuda"}
    torch.save(checkpoint, last)  # as if written with another torch on a GPU
    train(dataclasses.replace(run_config, max_epochs=3, ckpt_path=str(last)))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"--ckpt-path {last}" in warnings[0] and "torch 2.0.0 -> " in warnings[0]
    assert "device kind cuda -> cpu" in warnings[0]
    record = json.loads((run / "environment.json").read_text())
    assert len(record["earlier"]) == 2  # the two processes before this one, the first first
    assert record["earlier"][0]["start_time"] == started
