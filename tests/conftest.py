"""Shared fixtures: a tiny MNIST written in the real IDX format, and the flags of a shrunken run."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from lit_mnist.config import RunConfig
from lit_mnist.data import DATA_DIR_ENV
from lit_mnist.runtime import THREADS_ENV, cpu_share

REAL_DATA = os.environ.get(DATA_DIR_ENV)
#: A subprocess's time-out on the real MNIST: a guard against a hang, sized for a machine loaded by other
#: jobs (speed is measured by scripts/benchmark.py, never by a test).
HANG_GUARD_S = 2400


def pytest_configure(config: pytest.Config) -> None:
    """Each test process gets its share of the CPUs, and so does every run it starts (they read
    OMP_NUM_THREADS): pytest-xdist's workers with torch's default threads each would ask for every core,
    and OpenMP threads that wait for a core spin on it."""
    import torch

    if config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no tests; each worker sets its own share
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault(THREADS_ENV, str(max(1, cpu_share() // workers)))
    torch.set_num_threads(int(os.environ[THREADS_ENV]))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an uncompressed IDX file, the format of MNIST's raw files."""
    magic = 0x00000800 | array.ndim  # 0x08: unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(f">{1 + array.ndim}I", magic, *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` learnable 28x28 images: class k is a bright bar in rows 2k+4..2k+7 over noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        start = int(rng.integers(0, 8))
        images[i, 2 * k + 4 : 2 * k + 8, start : start + 20] = 255
    return images, labels.astype(np.uint8)


def write_tiny_mnist(root: Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST") -> Path:
    """Write a tiny dataset as ``root/<folder>/raw/*-ubyte``, the layout torchvision reads."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with a tiny MNIST (600 train, 200 test); read-only by convention: copy to modify."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_data"))


def shrunk_args(data_dir: Path, log_dir: Path, max_epochs: int = 2) -> list[str]:
    """Flags that shrink a run: CPU, a tiny dataset, 100 validation images, batch 32."""
    return [
        "--data-dir", str(data_dir),
        "--val-size", "100",
        "--batch-size", "32",
        "--accelerator", "cpu",
        "--devices", "1",
        "--max-epochs", str(max_epochs),
        "--no-progress-bar",
        "--log-every-n-steps", "5",
        "--log-dir", str(log_dir),
    ]  # fmt: skip


@pytest.fixture
def run_args(tiny_data: Path, tmp_path: Path) -> list[str]:
    """:func:`shrunk_args` on the tiny dataset, logs in tmp_path."""
    return shrunk_args(tiny_data, tmp_path / "logs")


def shrunk_config(data_dir: Path, log_dir: Path, max_epochs: int = 2) -> RunConfig:
    """:func:`shrunk_args` as a config, for tests that call the library (copy it with dataclasses.replace)."""
    return RunConfig(
        data_dir=str(data_dir), val_size=100, batch_size=32, accelerator="cpu", devices=1, max_epochs=max_epochs,
        progress_bar=False, log_every_n_steps=5, log_dir=str(log_dir),
    )  # fmt: skip


@pytest.fixture
def run_config(tiny_data: Path, tmp_path: Path) -> RunConfig:
    """:func:`shrunk_config` on the tiny dataset, logs in tmp_path."""
    return shrunk_config(tiny_data, tmp_path / "logs")


@pytest.fixture
def real_data_dir() -> Path:
    """The real MNIST root from ``$LIT_MNIST_DATA_DIR``; skips the test when it is not set."""
    if not REAL_DATA or not (Path(REAL_DATA) / "MNIST" / "raw").is_dir():
        pytest.skip(f"set {DATA_DIR_ENV} to a folder holding MNIST/raw to run the real-data tests")
    return Path(REAL_DATA).resolve()  # absolute: some tests run train.py in another working folder


# --------------------------------------------------------------------------- servers a test starts
# (appended here so that the fixtures above stay as they were; the imports serve only what follows)
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from http.client import HTTPException  # noqa: E402
from types import TracebackType  # noqa: E402
from typing import NoReturn  # noqa: E402


class RunningServer:
    """A server the test starts on a free loopback port and always stops (``with RunningServer(...) as url``).

    ``command(port)`` runs in its own process group, its output going to ``log``; entering waits until
    ``GET http://127.0.0.1:PORT<ready>`` answers 200 and gives that base URL. A server that exits first or
    does not answer within ``timeout`` seconds is stopped and reported through ``on_error`` (``pytest.fail``,
    or ``pytest.skip`` where a machine that cannot run the server is not the project's fault) with the end
    of its output. Leaving stops the whole group: SIGTERM, then SIGKILL for what is left.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        ready: str,
        log: Path,
        timeout: float = 60.0,
        on_error: Callable[[str], NoReturn] = pytest.fail,
    ) -> None:
        self.command, self.ready, self.log = command, ready, log
        self.timeout, self.on_error = timeout, on_error
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        with socket.socket() as sock:  # a port free now; the server binds it a moment later
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        argv = [str(arg) for arg in self.command(port)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + self.ready, timeout=5) as response:
                    if response.status == 200:
                        return url
            except (OSError, HTTPException):  # refused, reset, 5xx while starting: not up yet
                pass
            time.sleep(0.25)
        status = self.process.poll()
        what = f"gave no answer in {self.timeout:.0f} s" if status is None else f"exited with status {status}"
        self._stop()
        tail = self.log.read_text(errors="replace")[-4000:]
        self.on_error(f"{' '.join(argv)}: {what} to GET {self.ready}; its output ends:\n{tail}")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the server leads its own process group
        for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL: children that outlive their leader, or a hang
            try:
                os.killpg(group, sig)
            except ProcessLookupError:  # nothing of the group is left
                break
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                continue
        self.process.wait(timeout=20)
        self.process = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real-MNIST trainings (``slow``) first: under ``pytest -n 2`` the longest tests start at once and
    the short ones fill the other worker, instead of a long one starting last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
