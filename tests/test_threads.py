"""Each run's share of the CPUs: ``--threads``, OMP_NUM_THREADS, and the default from the affinity."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_mnist import train
from lit_mnist.runtime import THREADS_ENV, cpu_share
from tests.conftest import shrunk_args, shrunk_config

ROOT = Path(__file__).resolve().parents[1]
SHARE = "from lit_mnist.config import RunConfig; from lit_mnist.plan import set_threads; print(set_threads(RunConfig(accelerator='cpu')))"


def _share(env: dict[str, str], *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-c", SHARE], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def test_the_share_is_the_affinity_at_most() -> None:
    assert 1 <= cpu_share() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset (util-linux) on this machine")
def test_a_process_pinned_to_one_cpu_defaults_to_one_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    done = _share(env, "taskset", "-c", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"


def test_omp_num_threads_is_the_default_and_threads_wins(tiny_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, THREADS_ENV: "3"}
    assert _share(env).stdout.split()[-1] == "3"
    before = torch.get_num_threads()
    try:
        train(dataclasses.replace(shrunk_config(tiny_data, tmp_path / "logs", max_epochs=1), threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("env_value", "flags", "message"),
    [
        ("abc", [], "the environment variable OMP_NUM_THREADS='abc' must be a whole number of threads >= 1"),
        ("0", [], "OMP_NUM_THREADS='0' must be a whole number of threads >= 1"),
        (None, ["--threads", "0"], "train.py: error: --threads must be >= 1, got 0"),
    ],
)
def test_bad_thread_counts_are_one_line(
    env_value: str | None, flags: list[str], message: str, tiny_data: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    if env_value is not None:
        env[THREADS_ENV] = env_value
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *shrunk_args(tiny_data, tmp_path / "logs"), *flags],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "logs").exists()
