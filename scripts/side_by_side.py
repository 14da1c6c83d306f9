"""Runs beside other work: one training run alone and two side by side, with torch's threads and with shares.

Run through ``python scripts/benchmark.py --side-by-side`` (see its ``--help``). Each case starts whole
``python scripts/train.py`` processes (a 1-epoch classic run on the data of ``--data-dir`` and ``--val-size``, CSV logger only,
no progress bar), with ``OMP_NUM_THREADS`` removed from their environment, and times each from start to
exit: its wall-clock seconds and the CPU seconds it used (user + system, ``os.wait4``):

* **alone**: one run, the threads of its default (``--threads`` not given);
* **two, default**: two runs at once, each with the default threads (each asks for every CPU it may use);
* **two, shares**: two runs at once, each with ``--threads`` set to half of this process's CPU share.

``--busy N`` keeps N busy-loop processes running through every case (other jobs on the machine).
The cases run in turn, their order reversed every other round; ``--repeats`` rounds; medians are printed,
and the ratios of the two side-by-side cases (default / shares) for wall and CPU seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lit_mnist.runtime import THREADS_ENV, cpu_share

ROOT = Path(__file__).resolve().parents[1]
CASES = ("alone", "two, default", "two, shares")


def _spin() -> None:
    while True:
        pass


def _start(
    data_dir: str, val_size: int, log_dir: Path, threads: int | None
) -> tuple[subprocess.Popen[bytes], float]:
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "--data-dir", data_dir, "--max-epochs", "1", "--val-size", str(val_size),
            "--accelerator", "cpu", "--no-progress-bar", "--logger", "csv", "--log-dir", str(log_dir)]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    start = time.perf_counter()
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), start


def _case(name: str, data_dir: str, val_size: int, tmp: Path) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each run of case ``name``."""
    count, threads = (
        (1, None) if name == "alone" else (2, None if name == "two, default" else max(1, cpu_share() // 2))
    )
    started = [
        _start(data_dir, val_size, tmp / f"{name}-{i}-{time.monotonic_ns()}", threads) for i in range(count)
    ]
    times = []
    for proc, start in started:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            assert proc.stderr is not None
            raise RuntimeError(f"{name}: train.py failed: {proc.stderr.read().decode()[-500:]}")
        times.append((wall, usage.ru_utime + usage.ru_stime))
    return times


def run(data_dir: str, val_size: int, repeats: int, busy: int) -> int:
    """Run the cases ``repeats`` times in turn beside ``busy`` busy loops; print medians and ratios."""
    spinners = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
    try:
        with tempfile.TemporaryDirectory(prefix="lit_mnist_side_by_side_") as tmp:
            for i in range(repeats):
                for name in CASES if i % 2 == 0 else reversed(CASES):
                    seen[name] += _case(name, data_dir, val_size, Path(tmp))
    finally:
        for spinner in spinners:
            spinner.terminate()
    _print(seen, repeats, busy)
    return 0


def _print(seen: dict[str, list[tuple[float, float]]], repeats: int, busy: int) -> None:
    load = os.getloadavg()[0]
    print(f"CPU share of this process: {cpu_share()}; busy loops beside: {busy}; rounds: {repeats}; "
          f"load average at the end: {load:.1f}")  # fmt: skip
    print(f"{'case':<16}{'runs':>5}{'wall s (median)':>18}{'CPU s (median)':>17}")
    medians: dict[str, Any] = {}
    for name, times in seen.items():
        wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        medians[name] = (wall, cpu)
        print(f"{name:<16}{len(times):>5}{wall:>18.1f}{cpu:>17.1f}")
    default, shares = medians["two, default"], medians["two, shares"]
    print(
        f"two side by side, default / shares: wall {default[0] / shares[0]:.2f}x, CPU {default[1] / shares[1]:.2f}x"
    )
    print(f"two side by side (shares) / alone: wall {shares[0] / medians['alone'][0]:.2f}x")
