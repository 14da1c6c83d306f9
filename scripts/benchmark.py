"""Benchmark one training epoch of the classic MNIST MLP: plain PyTorch loops against lit_mnist.

What it compares -- the same data (the seeded 55,000-image train split of the MNIST training set)
and the same recipe (MLP 784-128-64-10 with ReLU, cross-entropy, SGD lr 0.01 momentum 0.9):

  (a) the classic PyTorch loop: torchvision ``MNIST(transform=ToTensor + Normalize)`` via ``Subset``,
      ``DataLoader(batch_size=64, shuffle=True)``, then zero_grad / forward / loss / backward / step;
  (b) the same plain loop over pre-normalised in-memory tensors, batches by ``index_select`` of a
      ``torch.randperm`` drawn each epoch (what ``lit_mnist.loader.InMemoryBatchLoader`` does);
  (c) lit_mnist's fast path, as ``scripts/train.py`` runs it: ``Trainer.fit`` of ``MNISTClassifier`` and
      ``MNISTDataModule(loader="memory")`` with step groups of 10 optimizer steps per Lightning batch
      (``steps_per_batch=10`` on both, ``lit_mnist.groups``) at batch 64, training only
      (``limit_val_batches=0``), no logger, checkpoints, progress bar or model summary;
  (c1) as (c) with plain Lightning: the library's defaults, one optimizer step per batch (automatic
      optimization) -- what a Lightning user who takes the module and datamodule as they are gets;
  (d) as (c) at batch 2048 (groups of 1: 27 steps per epoch have no common divisor with 10), against the
      compute floor of that epoch (below);
  (e) as (c) with validation (5,000 images) every epoch;
  (f) the run ``scripts/train.py`` builds from its default flags (``lit_mnist.build.build_trainer`` of the
      default ``RunConfig``, step groups as it plans them):
      TensorBoard logger, LR monitor, speed scalars, prediction/misclassified/confusion-matrix images,
      the curves, the NaN guard, signal handling, best and last checkpoints (in a temporary folder)
      -- against (e), what monitoring, logging and checkpointing cost a run;
  (g) the plain loop of (b) at batch 2048: what PyTorch alone does against the floor of (d).

How it times:

* Each case runs in its own process (``multiprocessing`` spawn), so the peak resident set size
  (``getrusage(RUSAGE_SELF).ru_maxrss``, read at the end of the case) belongs to that case alone:
  imports, data and training. (a) and (b) import torch and torchvision but not Lightning. On a GPU
  the case also reports ``torch.cuda.max_memory_allocated``.
* The processes start together and set their cases up; then their epochs run **one at a time, in
  turn**: epoch ``i`` of every case runs in cycle ``i`` (the cases in order in even cycles, in reverse
  in odd ones: a b c d e f, f e d c b a, ...), each process waiting for the parent's go before an
  epoch and reporting back when it waits again (a Trainer's work between epochs is inside its turn,
  never beside another case's epoch). Cycle 0 is a warm-up; ``--repeats`` cycles are timed (default 3).
* A ratio of seconds (c/b, a/c, f/e) is the median of its per-epoch pairs: the two sides' epochs ran
  seconds apart in the same cycle, so a shared machine whose speed swings over minutes moves both.
  d/floor pairs each epoch of (d) with the GEMM rate measured right after it, in the same process.
  Peak RSS c/b is one value per round.
* ``--rounds N`` repeats all of it with fresh processes (a process can be fast or slow for its
  whole life on a shared machine); the pairs of all rounds are pooled, as are the table's seconds.
* Seconds are ``time.perf_counter`` around one epoch; on a GPU ``torch.cuda.synchronize`` runs before
  each clock read.
* (a) and (b): the clock covers the whole epoch, the shuffle and the batch fetching included.
* (c) to (f): one ``Trainer`` with ``max_epochs = 1 + repeats`` (epoch 0 is the warm-up); a
  Callback reads the clock in ``on_train_epoch_start`` and ``on_train_epoch_end``, so the Trainer's
  construction, ``prepare_data``/``setup`` (file checks, parsing, normalising), moving the data to the
  device and the end-of-epoch metric reduction are outside it; the epoch's ``randperm``, batch
  fetching and every per-step hook are inside it, as in (b). In (e) and (f) the epoch's validation,
  the images drawn after it and the checkpoints saved after it are inside it too.
* The floor of (d): the GEMM FLOPs one epoch executes divided by a GEMM rate measured in (d)'s own
  process right after each of its epochs (outside the clock), by timing ``torch.mm`` on exactly the
  matrices one training step multiplies at batch 2048 (median of 5 rounds after a warm-up). Per
  sample, with layers (784, 128), (128, 64), (64, 10): forward ``2 * sum(in * out)`` = 218,368 FLOPs; backward = weight
  gradients ``2 * sum(in * out)`` plus input gradients of layers 2 and 3 ``2 * (128*64 + 64*10)``
  (autograd computes no gradient for the images) = 236,032; total 454,400 FLOPs per sample (the
  rule of thumb "backward = 2 x forward" would give 655,104). Bias, ReLU, loss and optimizer work
  is elementwise and not counted. A square ``mm`` rate (1024, or 4096 on a GPU) is reported for context.
* floor3f: the same with the rule of thumb, 3 x forward = 655,104 FLOPs per sample -- the convention
  of the usual estimate (~39 GFLOP forward+backward per epoch of 60,000 images).

Ratios and their targets: c/b <= 1.30 (seconds; the fast path on Lightning's public API), a/c >= 6
(seconds), d/floor and d/floor3f <= 1.5 (seconds), peak RSS c/b <= 1.2; f/e <= 1.1 (seconds: monitoring
must not slow training noticeably). Shown without a target: c1/b (plain
Lightning against plain PyTorch), d/g (Lightning at batch 2048 against plain PyTorch) and g/floor
(plain PyTorch against the floor).

Usage::

    python scripts/benchmark.py --data-dir /path/holding/MNIST --json bench.json
    python scripts/benchmark.py --data-dir /path/holding/MNIST --rounds 2 --repeats 5   # more pairs
    python scripts/benchmark.py --cases b,c --repeats 5 --threads 1
    git worktree add /tmp/base HEAD   # start-up: this tree against another checkout
    python scripts/benchmark.py --start-up --against /tmp/base --data-dir /path/holding/MNIST --repeats 5

Other modes (``--time-to-accuracy``, ``--start-up``, ``--augment``, ``--channels-last``): see ``--help``.

``--limit-batches N`` caps the batches of every epoch (smoke tests only: the numbers then mean little).
Bad flags or a data folder without ``MNIST/raw`` end with one line and exit status 2; a failed case
ends with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import queue
import resource
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from multiprocessing import get_context
from typing import Any

# The same data as lit_mnist.mnist.MNISTDataModule (case (c) checks these against it): the light
# processes (a) and (b) must not import lit_mnist, whose package imports Lightning.
DATA_DIR_ENV = "LIT_MNIST_DATA_DIR"
MEAN, STD = 0.1307, 0.3081
SPLIT_SEED = 42
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
LAYERS = ((784, 128), (128, 64), (64, 10))
LR, MOMENTUM = 0.01, 0.9
CASES = {
    "a": ("torchvision MNIST + DataLoader, plain loop", 64),
    "b": ("in-memory tensors, randperm slices, plain loop", 64),
    "c": ("lit_mnist Trainer.fit, step groups (fast path)", 64),
    "c1": ("lit_mnist Trainer.fit, plain Lightning", 64),
    "d": ("lit_mnist Trainer.fit, loader=memory", 2048),
    "e": ("(c) + validation each epoch", 64),
    "f": ("(e) as train.py runs it: TB, monitoring, ckpts", 64),
    "g": ("(b) at batch 2048: plain PyTorch against (d)", 2048),
}
#: each ratio's target (None: shown for context, no target)
TARGETS: dict[str, tuple[str, float] | None] = {
    "c/b": ("<=", 1.30),
    "c1/b": None,
    "a/c": (">=", 6.0),
    "d/floor": ("<=", 1.5),
    "d/floor3f": ("<=", 1.5),
    "d/g": None,
    "g/floor": None,
    "rss c/b": ("<=", 1.2),
    "f/e": ("<=", 1.1),
}


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def get_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = _OneLineParser(
        prog="benchmark.py",
        description="Time one MNIST training epoch: classic PyTorch, in-memory PyTorch, lit_mnist.",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV) or "data",
        help=f"Folder holding MNIST/raw (default: ${DATA_DIR_ENV}, else ./data). Never written to.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto", help="Device.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Timed epochs per case and round, after one warm-up; the cases' epochs run in turn, so each "
        "ratio of seconds gets this many pairs per round (its median is reported).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Run it all this many times, each time in fresh processes; the pairs of all rounds are pooled.",
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"Comma-separated subset of {','.join(CASES)}."
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads in every case (default: torch's)."
    )
    parser.add_argument(
        "--val-size", type=int, default=5_000, help="Training images held out (the train split is the rest)."
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write all numbers as JSON.")
    parser.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="Instead of epochs: time each recipe of --recipes as a whole scripts/train.py process and as a plain "
        "PyTorch loop, beside the seed's classic loop (10 epochs), with their test accuracies "
        "(scripts/time_to_accuracy.py). --repeats runs each process that many times (medians).",
    )
    parser.add_argument(
        "--recipes",
        default="classic,mlp-best,cnn-fast,cnn-best",
        help="Comma-separated recipes for --time-to-accuracy (python scripts/train.py --recipe list).",
    )
    parser.add_argument(
        "--train-flags",
        default="",
        metavar="FLAGS",
        help="With --time-to-accuracy: train.py flags put after --recipe NAME, for train.py and the plain loop "
        "(one string, split as a shell would: --train-flags '--seed 1 --max-epochs 5'). Not --data-dir, "
        "--log-dir, --recipe or --config: the benchmark sets those. With --start-up --against: flags added "
        "to the 1-epoch run.",
    )
    parser.add_argument(
        "--with-compile",
        action="store_true",
        help="With --time-to-accuracy: also run each recipe's train.py with --compile (torch.compile of the "
        "network), its compile time shown apart (the first epoch's extra time, less the same without --compile).",
    )
    parser.add_argument(
        "--start-up",
        action="store_true",
        help="Instead of epochs: time scripts/train.py's start-up and exit, fresh processes that import what a run "
        "imports and exit, with lit_mnist.startup (the garbage collector off for the imports, frozen before the "
        "exit) and without, alternating; --repeats pairs (medians).",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=None,
        metavar="TREE",
        help="With --start-up: also time whole processes of scripts/train.py --help and of a 1-epoch run "
        "(--max-epochs 1 --no-progress-bar, the data of --data-dir, then --train-flags), of this tree and of TREE "
        "(another checkout, e.g. git worktree add /tmp/base HEAD; run with PYTHONPATH=TREE; the flag may be "
        "repeated), in turn; --repeats rounds (medians, and the median of each round's TREE / this tree).",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="Instead of epochs: time per-sample random affine augmentation of a batch of 128 MNIST-sized images "
        "(+-10 deg, +-10%% shift and zoom): lit_mnist's RandomAffine against kornia's (if installed) and "
        "torchvision v2's (one draw per batch), in turn; --repeats rounds of 20 calls (medians).",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="Instead of epochs: time training steps (Adam, random batches) of the default CNN (batch 128) and of "
        "cnn-fast's (batch 256) with their convolution weights channels-last and contiguous, in turn; "
        "--repeats rounds of 20 steps (medians, images/s).",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="Instead of epochs: whole 1-epoch scripts/train.py runs on the CPU, one alone and two at once (each "
        "with its default threads, then each with --threads half this process's CPU share), in turn; --repeats "
        "rounds (medians of wall and CPU seconds; scripts/side_by_side.py).",
    )
    parser.add_argument(
        "--busy", type=int, default=0, help="With --side-by-side: busy-loop processes running beside every case."
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="Benchmark lit-mnist serve instead (requests/s, latency): benchmark.py --serve --help for its flags.",
    )
    parser.add_argument("--limit-batches", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def layout_speed(repeats: int, device: str) -> int:
    """``--channels-last``: images/s of training steps of two CNNs, built by MNISTClassifier with
    ``channels_last`` on and off, the layouts in turn (the order swapped every other round); the medians and
    their ratio, channels-last / contiguous."""
    import torch
    import yaml

    from lit_mnist.module import MNISTClassifier
    from lit_mnist.recipes import recipe_path

    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    fast = yaml.safe_load(recipe_path("cnn-fast").read_text())
    networks = {
        "default CNN, batch 128": ({}, 128),
        "cnn-fast's CNN, batch 256": (
            {k: fast[k] for k in ("cnn_channels", "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size")},
            int(fast["batch_size"]),
        ),
    }
    print(f"training steps on {dev} (Adam, random batches), {repeats} rounds of 20 steps after 3, medians")
    print(f"{'':28}{'contiguous':>14}{'channels-last':>16}{'ratio':>8}")
    for name, (flags, batch) in networks.items():
        torch.manual_seed(0)
        x = torch.randn(batch, 1, 28, 28, device=dev)
        y = torch.randint(0, 10, (batch,), device=dev)
        steps = {}
        for layout in ("contiguous", "channels-last"):
            net = MNISTClassifier(model="cnn", channels_last=layout == "channels-last", **flags).net.to(dev)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def step(net: Any = net, opt: Any = opt, x: Any = x, y: Any = y) -> None:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

            for _ in range(3):
                step()
            steps[layout] = step
        rates: dict[str, list[float]] = {layout: [] for layout in steps}
        order = list(steps)
        for r in range(repeats):
            for layout in order if r % 2 == 0 else order[::-1]:
                _sync(dev)
                start = time.perf_counter()
                for _ in range(20):
                    steps[layout]()
                _sync(dev)
                rates[layout].append(20 * batch / (time.perf_counter() - start))
        med = {layout: statistics.median(v) for layout, v in rates.items()}
        print(
            f"{name:28}{med['contiguous']:10,.0f} i/s{med['channels-last']:12,.0f} i/s"
            f"{med['channels-last'] / med['contiguous']:7.2f}x"
        )
    return 0


def augment_speed(repeats: int, device: str) -> int:
    """``--augment``: milliseconds per batch of 128 for each augmentation, rounds in turn (order reversed every
    other round), and each one's median against lit_mnist's."""
    import torch
    from torchvision.transforms import v2

    from lit_mnist.augment import RandomAffine

    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    fill = -0.1307 / 0.3081  # the normalised black background
    x = torch.randn(128, 1, 28, 28, device=dev)
    ours = RandomAffine(10.0, 0.1, 0.1, fill=fill)
    cases: dict[str, Any] = {
        "lit_mnist RandomAffine (per sample)": lambda: ours(x, torch.rand(128, ours.draws, device=dev)),
    }
    try:
        import kornia.augmentation as kornia_aug
    except ImportError:
        print("kornia is not installed (pip install kornia): its row is left out")
    else:
        kornia_affine = kornia_aug.RandomAffine(
            degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), padding_mode="fill",
            fill_value=torch.tensor([fill], device=dev), p=1.0,
        )  # fmt: skip
        cases["kornia RandomAffine (per sample)"] = lambda: kornia_affine(x)
    tv_affine = v2.RandomAffine(  # bilinear, as the other two (v2's default is nearest)
        degrees=10.0,
        translate=(0.1, 0.1),
        scale=(0.9, 1.1),
        fill=fill,
        interpolation=v2.InterpolationMode.BILINEAR,
    )
    cases["torchvision v2 RandomAffine (one draw per batch)"] = lambda: tv_affine(x)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for run in cases.values():  # warm-up
        for _ in range(5):
            run()
    ms: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            for _ in range(20):
                cases[name]()
            sync()
            ms[name].append((time.perf_counter() - start) / 20 * 1000)
    base = statistics.median(ms[names[0]])
    print(f"augmentation of a batch of 128 (1x28x28) on {dev}, {repeats} rounds of 20 calls, medians")
    for name in names:
        median = statistics.median(ms[name])
        print(f"{name:50}{median:8.2f} ms{median / base:8.2f}x lit_mnist's")
    return 0


#: What a process of --start-up runs: what a train.py run imports (the command, then the library it calls),
#: as scripts/train.py does it or plainly.
_START_UP = {
    "with lit_mnist.startup": (
        "import time; t = time.perf_counter()\n"
        "from lit_mnist.startup import exit_code, quiet_gc_imports\n"
        "with quiet_gc_imports():\n"
        "    from lit_mnist.cli.train import main\n"
        "    import lit_mnist.run\n"
        "print(time.perf_counter() - t)\n"
        "exit_code(0)\n"
    ),
    "plain imports": (
        "import time; t = time.perf_counter()\n"
        "from lit_mnist.cli.train import main\n"
        "import lit_mnist.run\n"
        "print(time.perf_counter() - t)\n"
    ),
}
#: The whole processes --start-up --against times: a name -> scripts/train.py's arguments.
_COMMANDS = {
    "train.py --help": ["--help"],
    "train.py --max-epochs 1": ["--max-epochs", "1", "--no-progress-bar"],
}


def start_up(
    repeats: int,
    json_path: str | None,
    against: Sequence[str] = (),
    data_dir: str = "data",
    train_flags: tuple[str, ...] = (),
) -> int:
    """``--start-up``: the two ways of _START_UP in turn (the order swapped every other pair), each a fresh
    process; prints the median import time (measured inside) and whole process time (start to exit).
    With ``against`` (other checkouts), then :data:`_COMMANDS` of this tree and of those (:func:`whole_commands`)."""
    import subprocess
    from pathlib import Path

    times: dict[str, dict[str, list[float]]] = {name: {"import": [], "process": []} for name in _START_UP}
    names = list(_START_UP)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _START_UP[name]], capture_output=True, text=True, timeout=300
            )
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(
                    f"benchmark.py: error: {name}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr
                )
                return 1
            times[name]["import"].append(float(done.stdout.split()[-1]))
            times[name]["process"].append(wall)
    print(f"start-up of scripts/train.py: {repeats} pairs, medians")
    print(f"{'':26}{'imports s':>10}{'process s':>11}{'exit and interpreter s':>24}")
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    for name in names:
        m = med[name]
        print(f"{name:26}{m['import']:10.2f}{m['process']:11.2f}{m['process'] - m['import']:24.2f}")
    ratio = statistics.median(
        p / q
        for p, q in zip(
            times["plain imports"]["process"], times["with lit_mnist.startup"]["process"], strict=True
        )
    )
    print(f"plain / with lit_mnist.startup, whole process: {ratio:.2f} (median of the pairs)")
    report: dict[str, Any] = {"times": times, "ratio": ratio}
    if against:
        try:
            report["commands"] = whole_commands(repeats, against, data_dir, train_flags)
        except RuntimeError as err:
            print(f"benchmark.py: error: {err}", file=sys.stderr)
            return 1
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def whole_commands(
    repeats: int, against: Sequence[str], data_dir: str, train_flags: tuple[str, ...]
) -> dict[str, Any]:
    """Each of :data:`_COMMANDS` as a whole process (start to exit), of this tree and of each ``against``
    tree, in turn (the order reversed every other round), each tree's ``scripts/train.py`` with
    ``PYTHONPATH`` at the tree; prints the medians of the wall time and of the CPU time (user + system,
    of the process and what it waited for: less moved by a busy machine than the wall time) and, for
    each other tree, the median of its rounds' ratios, that tree / this tree.

    Raises:
        RuntimeError: one line, when a tree imports another ``lit_mnist`` or a command fails.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    trees = {"this tree": root} | {str(tree): Path(tree).resolve() for tree in against}
    labels, data = list(trees), str(Path(data_dir).resolve())

    def env(tree: Path) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith("LIT_MNIST_RUN")}
        return kept | {"PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}

    times: dict[str, dict[str, list[float]]] = {cmd: {label: [] for label in trees} for cmd in _COMMANDS}
    cpu: dict[str, dict[str, list[float]]] = {cmd: {label: [] for label in trees} for cmd in _COMMANDS}
    with tempfile.TemporaryDirectory(prefix="lit_mnist_start_up_") as tmp:
        for label, tree in trees.items():  # each tree's scripts import that tree's lit_mnist
            where = subprocess.run(
                [sys.executable, "-c", "import lit_mnist; print(lit_mnist.__file__)"],
                capture_output=True, text=True, cwd=tmp, env=env(tree), timeout=300,
            )  # fmt: skip
            if not where.stdout.strip().startswith(str(tree / "lit_mnist")):
                found = where.stdout.strip() or where.stderr.strip()[-200:]
                raise RuntimeError(f"{label}: python imports lit_mnist from {found}")
        print(
            f"whole processes of scripts/train.py in {', '.join(labels)} ({root}): {repeats} rounds in turn"
        )
        for i in range(repeats):
            for cmd, args in _COMMANDS.items():
                for label in labels if i % 2 == 0 else labels[::-1]:
                    argv = [sys.executable, str(trees[label] / "scripts" / "train.py"), *args]
                    if args != ["--help"]:  # a run: the data, and a log folder of its own
                        logs = Path(tmp) / f"{labels.index(label)}-{i}"
                        argv += ["--data-dir", data, "--log-dir", str(logs), *train_flags]
                    used, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                    done = subprocess.run(
                        argv, capture_output=True, text=True, cwd=tmp, env=env(trees[label]), timeout=1800
                    )
                    times[cmd][label].append(time.perf_counter() - start)
                    now = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu[cmd][label].append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
                    if done.returncode != 0:
                        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                        raise RuntimeError(f"{cmd} of {label} exited {done.returncode}: {last}")
    width = max(len(label) for label in labels) + 2
    ratios: dict[str, dict[str, dict[str, float]]] = {"wall_s": {}, "cpu_s": {}}
    for kind, seconds in (("wall_s", times), ("cpu_s", cpu)):
        what = "wall" if kind == "wall_s" else "CPU"
        print(f"{'medians, ' + what + ' s':26}" + "".join(f"{label:>{width}}" for label in labels))
        for cmd, t in seconds.items():
            ratios[kind][cmd] = {
                label: statistics.median(b / a for a, b in zip(t["this tree"], t[label], strict=True))
                for label in labels[1:]
            }
            print(f"{cmd:26}" + "".join(f"{statistics.median(t[label]):{width}.2f}" for label in labels))
            print(
                f"{'  / this tree':26}{'':{width}}"
                + "".join(f"{ratios[kind][cmd][x]:{width}.2f}" for x in labels[1:])
            )
    print(
        "(CPU: user + system time of the process and of what it waited for; / this tree: the median of the rounds' ratios)"
    )
    return {
        "this": str(root),
        "against": list(against),
        "train_flags": list(train_flags),
        "times": times,
        "cpu_times": cpu,
        "ratios": ratios["wall_s"],
        "cpu_ratios": ratios["cpu_s"],
    }


def main(args: argparse.Namespace) -> int:
    """Run the selected cases, each in a fresh process; print the table; write the JSON. Returns the exit status."""
    prog = "benchmark.py"
    modes = [flag for flag, on in (("--augment", args.augment), ("--start-up", args.start_up),
                                    ("--channels-last", args.channels_last),
                                    ("--time-to-accuracy", args.time_to_accuracy),
                                    ("--side-by-side", args.side_by_side)) if on]  # fmt: skip
    if len(modes) > 1:
        print(f"{prog}: error: {' and '.join(modes)} are separate runs; give one of them", file=sys.stderr)
        return 2
    try:
        cases = _check_args(
            args, needs_data=not (args.augment or (args.start_up and not args.against) or args.channels_last)
        )
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    for flag, given in (("--with-compile", args.with_compile), ("--train-flags", args.train_flags)):
        if given and not args.time_to_accuracy and not (flag == "--train-flags" and args.against):
            print(f"{prog}: error: {flag} is for --time-to-accuracy's table; give both", file=sys.stderr)
            return 2
    if args.against and not args.start_up:
        print(f"{prog}: error: --against is for --start-up; give both", file=sys.stderr)
        return 2
    if args.busy and not args.side_by_side:
        print(f"{prog}: error: --busy is for --side-by-side; give both", file=sys.stderr)
        return 2
    if args.augment:
        return augment_speed(args.repeats, args.device)
    if args.side_by_side:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import side_by_side

        try:
            return side_by_side.run(args.data_dir, args.val_size, args.repeats, max(0, args.busy))
        except RuntimeError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
    if args.start_up:
        import shlex

        try:
            flags = tuple(shlex.split(args.train_flags))
        except ValueError as err:
            print(
                f"{prog}: error: --train-flags {args.train_flags!r}: {err}; quote it as one string",
                file=sys.stderr,
            )
            return 2
        return start_up(args.repeats, args.json, args.against or (), args.data_dir, flags)
    if args.channels_last:
        return layout_speed(args.repeats, args.device)
    if args.time_to_accuracy:
        from lit_mnist.recipes import RECIPES

        recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
        if not recipes or any(r not in RECIPES for r in recipes):
            print(
                f"{prog}: error: --recipes must be a comma-separated subset of {','.join(RECIPES)}; got {args.recipes!r}",
                file=sys.stderr,
            )
            return 2
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import time_to_accuracy

        try:
            train_flags = time_to_accuracy.check_train_flags(args.train_flags, recipes)
        except ValueError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2

        try:
            return time_to_accuracy.run(
                recipes, args.data_dir, args.repeats, args.json, args.with_compile, train_flags=train_flags
            )
        except RuntimeError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
    opts = {
        "data_dir": args.data_dir,
        "device": args.device,
        "repeats": args.repeats,
        "threads": args.threads,
        "val_size": args.val_size,
        "train_size": _idx_count(os.path.join(args.data_dir, "MNIST", "raw", RAW_FILES[0])) - args.val_size,
        "limit_batches": args.limit_batches,
    }
    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for index in range(args.rounds):
        where = f"round {index + 1} of {args.rounds}: " if args.rounds > 1 else ""
        print(
            f"running {where}cases {','.join(cases)}, one process each, epochs in turn ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            rounds.append(_run_round(cases, opts))
        except CaseError as err:
            print(f"{prog}: error: case ({err.case}) failed: {err.detail}", file=sys.stderr)
            return 1
    report = _report(rounds, args, cases)
    report["machine"]["loadavg_1_5_15_before"] = load_before
    report["machine"]["loadavg_1_5_15_after"] = os.getloadavg()
    _print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


# --------------------------------------------------------------------------- parent side
def _check_args(args: argparse.Namespace, needs_data: bool = True) -> list[str]:
    """Check what argparse cannot (the data folder only when ``needs_data``); return the cases in order.
    Raises ``ValueError`` with one line."""
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if not cases or unknown:
        raise ValueError(f"--cases must be a comma-separated subset of {','.join(CASES)}; got {args.cases!r}")
    for flag, value in (
        ("--repeats", args.repeats),
        ("--rounds", args.rounds),
        ("--val-size", args.val_size),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--threads", args.threads), ("--limit-batches", args.limit_batches)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for tree in getattr(args, "against", None) or ():
        if not os.path.isfile(os.path.join(tree, "scripts", "train.py")):
            raise ValueError(
                f"--against {tree}: no scripts/train.py in it; give another checkout, e.g. git worktree add /tmp/base HEAD"
            )
    raw = os.path.join(args.data_dir, "MNIST", "raw")
    missing = [name for name in RAW_FILES if needs_data and not os.path.isfile(os.path.join(raw, name))]
    if missing:
        raise ValueError(
            f"--data-dir {args.data_dir}: {raw} lacks {', '.join(missing)} (uncompressed IDX files); "
            f"pass the folder holding MNIST/raw or set ${DATA_DIR_ENV} (the benchmark never downloads)"
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return sorted(dict.fromkeys(cases))


def _joined_train_flags(argv: list[str]) -> list[str]:
    """``--train-flags X`` as ``--train-flags=X``: argparse would take an X like ``--compile`` for an option."""
    out, rest = [], iter(argv)
    for arg in rest:
        out.append(arg)
        if arg == "--train-flags":
            value = next(rest, None)
            if value is not None:
                out[-1] = f"--train-flags={value}"
    return out


def _idx_count(path: str) -> int:
    """The number of items an IDX file's header announces."""
    with open(path, "rb") as f:
        return int(struct.unpack(">II", f.read(8))[1])


class CaseError(Exception):
    """A case's process raised or died; ``detail`` is one line."""

    def __init__(self, case: str, detail: str) -> None:
        super().__init__(f"({case}) {detail}")
        self.case, self.detail = case, detail


def _run_round(cases: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    """One process per case (spawned, so that its peak RSS is its own); their epochs run one at a time, in turn.

    Every process sets its case up, then waits. The parent lets one case run one epoch, waits until
    that process is waiting again (so the work a Trainer does between epochs is not left running
    beside the next case's epoch), then lets the next case run: epoch ``i`` of every case runs in
    cycle ``i``, in the order of ``cases`` in even cycles and the reverse in odd ones, so the two
    sides of a ratio are timed seconds apart and a linear drift of the machine's speed cancels.
    """
    ctx = get_context("spawn")
    reports: Any = ctx.Queue()
    gates = {case: ctx.Queue() for case in cases}
    procs = {
        case: ctx.Process(target=_case_process, args=(case, opts, gates[case], reports), daemon=True)
        for case in cases
    }
    results: dict[str, Any] = {}
    try:
        for proc in procs.values():
            proc.start()
        waiting = set(cases)
        while waiting:  # every case set up and at its first epoch
            kind, case, payload = _next_report(reports, procs, waiting)
            _raise_on_error(kind, case, payload)
            waiting.discard(case)
        for cycle in range(1 + opts["repeats"]):
            for case in cases if cycle % 2 == 0 else cases[::-1]:
                gates[case].put(cycle)
                kind, sender, payload = _next_report(reports, procs, {case})
                _raise_on_error(kind, sender, payload)
                if kind == "done":
                    results[case] = payload
        missing = [case for case in cases if case not in results]
        if missing:
            raise CaseError(missing[0], f"ran more or fewer epochs than 1 + {opts['repeats']}")
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=10)
    return {case: results[case] for case in cases}  # in the order of the table, not of the last cycle


def _next_report(reports: Any, procs: dict[str, Any], expected: set[str]) -> tuple[str, str, Any]:
    """The next (kind, case, payload) a case process sends; a CaseError if one of ``expected`` died."""
    while True:
        try:
            return reports.get(timeout=1.0)
        except queue.Empty:
            for case in expected:
                if not procs[case].is_alive():
                    code = procs[case].exitcode
                    raise CaseError(case, f"its process died (exit status {code}; out of memory?)") from None


def _raise_on_error(kind: str, case: str, payload: Any) -> None:
    if kind == "error":
        raise CaseError(case, payload)


def _case_process(case: str, opts: dict[str, Any], gate: Any, reports: Any) -> None:
    """A case's process: ``("ready", case, None)`` whenever it waits for the parent's go, then
    ``("done", case, result)`` at the end, or ``("error", case, one line)``."""

    turns: list[list[float]] = []  # wall-clock [start, end] of each turn: from the go to the next report

    def wait_turn() -> None:
        if turns:
            turns[-1].append(time.time())
        reports.put(("ready", case, None))
        gate.get()
        turns.append([time.time()])

    try:
        result = _run_case(case, opts, wait_turn)
    except Exception as err:  # reported to the parent, which prints it as one line
        reports.put(("error", case, " ".join(str(err).split()) or type(err).__name__))
        return
    turns[-1].append(time.time())
    reports.put(("done", case, {**result, "turns": turns}))


def _pairs(results: dict[str, Any]) -> dict[str, list[float]]:
    """The ratios of one round, one value per timed epoch: the two sides ran in the same cycle."""

    def paired(top: str, bottom: str) -> list[float]:
        return [t / b for t, b in zip(results[top]["epoch_s"], results[bottom]["epoch_s"], strict=True)]

    values = {}
    if "b" in results and "c" in results:
        values["c/b"] = paired("c", "b")
        values["rss c/b"] = [results["c"]["peak_rss_mib"] / results["b"]["peak_rss_mib"]]
    if "b" in results and "c1" in results:
        values["c1/b"] = paired("c1", "b")
    if "a" in results and "c" in results:
        values["a/c"] = paired("a", "c")
    if "d" in results:
        floor = results["d"]["floor"]
        floors, floors3f = floor["epoch_floor_s"], floor["epoch_floor_3x_forward_s"]
        values["d/floor"] = [d / f for d, f in zip(results["d"]["epoch_s"], floors, strict=True)]
        values["d/floor3f"] = [d / f for d, f in zip(results["d"]["epoch_s"], floors3f, strict=True)]
        if "g" in results:
            values["d/g"] = paired("d", "g")
            values["g/floor"] = [g / f for g, f in zip(results["g"]["epoch_s"], floors, strict=True)]
    if "e" in results and "f" in results:
        values["f/e"] = paired("f", "e")
    return values


def _pooled(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over all rounds: every timed epoch, their median, the largest peak memory."""
    times = [t for r in per_round for t in r["epoch_s"]]
    median = statistics.median(times)
    result = {
        **per_round[0],
        "epoch_s": times,
        "median_s": median,
        "samples_per_s": per_round[0]["samples_per_epoch"] / median,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in per_round),
        "round_median_s": [r["median_s"] for r in per_round],
        "turns": [turn for r in per_round for turn in r["turns"]],
    }
    if "floor" in per_round[0]:
        floors = [r["floor"] for r in per_round]
        result["floor"] = {
            **floors[0],
            "epoch_floor_s": [t for f in floors for t in f["epoch_floor_s"]],
            "epoch_floor_3x_forward_s": [t for f in floors for t in f["epoch_floor_3x_forward_s"]],
            "floor_3x_forward_s": statistics.median(t for f in floors for t in f["epoch_floor_3x_forward_s"]),
            "floor_s": statistics.median(t for f in floors for t in f["epoch_floor_s"]),
            "gemm_gflops": statistics.median(g for f in floors for g in f["epoch_gemm_gflops"]),
            "square_gflops": statistics.median(f["square_gflops"] for f in floors),
            "round_floor_s": [f["floor_s"] for f in floors],
        }
    return result


def _report(rounds: list[dict[str, Any]], args: argparse.Namespace, cases: list[str]) -> dict[str, Any]:
    """All numbers: machine, settings, cases (pooled over rounds), floor, and the ratios with their targets.

    A ratio of seconds is the median of its paired values: one per timed epoch of every round, the
    two sides from the same cycle (see ``_run_round``); the peak-memory ratio is one value per round.
    """
    per_round = [_pairs(results) for results in rounds]
    ratios: dict[str, Any] = {}
    for name in [n for n in TARGETS if n in per_round[0]]:  # the order of TARGETS
        values = [v for r in per_round for v in r[name]]
        value = statistics.median(values)
        goal = TARGETS[name]
        met = None if goal is None else value <= goal[1] if goal[0] == "<=" else value >= goal[1]
        ratios[name] = {
            "value": value,
            "target": None if goal is None else f"{goal[0]} {goal[1]:g}",
            "met": met,
            "pairs": values,
            "rounds": [statistics.median(r[name]) for r in per_round],
        }
    results = {case: _pooled([r[case] for r in rounds]) for case in rounds[0]}
    first = next(iter(results.values()))
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": first["torch"],
            "device": first["device"],
            "device_name": first["device_name"],
            "threads": first["threads"],
        },
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "settings": {
            "data_dir": args.data_dir,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "warmup_epochs": 1,
            "val_size": args.val_size,
            "limit_batches": args.limit_batches,
            "cases": cases,
            "statistic": "median",
            "schedule": "one process per case; epoch i of every case in cycle i, one case at a time "
            "(cases in order in even cycles, reversed in odd ones)",
        },
        "cases": results,
        "ratios": ratios,
    }


def _print_table(report: dict[str, Any]) -> None:
    machine, cases = report["machine"], report["cases"]
    settings = report["settings"]
    rounds = f" in each of {settings['rounds']} rounds" if settings["rounds"] > 1 else ""
    print(
        f"\nOne training epoch, median of {settings['repeats']} after 1 warm-up{rounds}, the cases' epochs "
        f"in turn; device "
        f"{machine['device_name']}, {machine['threads']} torch threads, torch {machine['torch']}; "
        f"load average {machine['loadavg_1_5_15_before'][0]:.2f} before, {machine['loadavg_1_5_15_after'][0]:.2f} after"
    )
    cuda = machine["device"] == "cuda"
    header = f"{'case':<6}{'what':<48}{'batch':>6}{'samples':>9}{'s/epoch':>10}{'samples/s':>11}{'peak RSS MiB':>14}"
    print(header + (f"{'CUDA peak MiB':>15}" if cuda else ""))
    for case, r in cases.items():
        line = (
            f"{case:<6}{r['what']:<48}{r['batch_size']:>6}{r['samples_per_epoch']:>9}{r['median_s']:>10.3f}"
            f"{r['samples_per_s']:>11,.0f}{r['peak_rss_mib']:>14,.0f}"
        )
        print(line + (f"{r['cuda_peak_mib']:>15,.1f}" if cuda else ""))
    if "d" in cases:
        fl = cases["d"]["floor"]
        print(
            f"{'floor':<6}{'GEMM FLOPs of (d) / measured GEMM rate':<48}{cases['d']['batch_size']:>6}"
            f"{cases['d']['samples_per_epoch']:>9}{fl['floor_s']:>10.3f}"
            f"{cases['d']['samples_per_epoch'] / fl['floor_s']:>11,.0f}"
        )
        print(
            f"      floor: {fl['flops_per_sample']:,} FLOPs/sample, layer-shaped mm at batch "
            f"{fl['gemm_batch']}: {fl['gemm_gflops']:.1f} GFLOP/s "
            f"(square {fl['square_n']} mm: {fl['square_gflops']:.1f} GFLOP/s); floor3f, counting "
            f"3 x forward = {3 * fl['forward_flops_per_sample']:,} FLOPs/sample: {fl['floor_3x_forward_s']:.3f} s"
        )
    if report["ratios"]:
        print(f"\n{'ratio':<10}{'value':>8}  {'target':<9}met  (median of the paired epochs: each pair)")
        for name, r in report["ratios"].items():
            each = " ".join(f"{v:.2f}" for v in r["pairs"])
            met = "-" if r["met"] is None else "yes" if r["met"] else "NO"
            print(f"{name:<10}{r['value']:>8.2f}  {r['target'] or '-':<9}{met:<3}  {each}")


# --------------------------------------------------------------------------- child side (one case)
def _run_case(case: str, opts: dict[str, Any], wait_turn: Any) -> dict[str, Any]:
    """Runs in the case's own process: set up the case, time its epochs (each after ``wait_turn()``),
    read the peak memory."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if opts["threads"] is not None:
        torch.set_num_threads(opts["threads"])
    device = opts["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    what, batch_size = CASES[case]
    runner: Any = {
        "a": _case_classic,
        "b": _case_memory,
        "c": functools.partial(_case_lightning, groups=True),
        "c1": _case_lightning,
        "d": functools.partial(_case_lightning, groups=True),
        "e": functools.partial(_case_lightning, validate=True, groups=True),
        "f": _case_full_run,
        "g": _case_memory,
    }[case]
    gemm_step_s: list[float] = []

    def measure_gemms() -> None:  # the floor's GEMM rate, measured after each epoch of (d), outside its clock
        gemm_step_s.append(_gemm_step_s(torch.device(device)))

    after_epoch = measure_gemms if case == "d" else None
    times, samples, extra = runner(opts, torch.device(device), batch_size, wait_turn, after_epoch)
    median = statistics.median(times)
    result = {
        "what": what,
        "batch_size": batch_size,
        "epoch_s": times,
        "median_s": median,
        "samples_per_epoch": samples,
        "samples_per_s": samples / median,
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        **extra,
    }
    if case == "d":
        result["floor"] = _floor(torch.device(device), samples, gemm_step_s[1:])
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} (CPU, {len(names)} logical cores)"
    except (OSError, IndexError):
        return platform.processor() or platform.machine() or "CPU"


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _epochs(opts: dict[str, Any], n: int, batch_size: int) -> tuple[int, int]:
    """Batches and samples of one epoch of ``n`` samples, ``--limit-batches`` applied."""
    batches = math.ceil(n / batch_size)
    if opts["limit_batches"] is not None:
        batches = min(batches, opts["limit_batches"])
    return batches, min(n, batches * batch_size)


def _train_indices(n: int, val_size: int) -> Any:
    """The train split's indices, as ``MNISTDataModule.setup`` draws them."""
    import torch

    if val_size >= n:
        raise ValueError(f"--val-size must be smaller than the {n} training images, got {val_size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))[val_size:]


def _classic_recipe(device: Any) -> tuple[Any, Any, Any]:
    """The classic network (as ``lit_mnist.networks.MLP()``), its loss and SGD, on ``device``."""
    from torch import nn, optim

    (i1, o1), (i2, o2), (i3, o3) = LAYERS
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(i1, o1), nn.ReLU(), nn.Linear(i2, o2), nn.ReLU(), nn.Linear(i3, o3)
    ).to(device)
    return model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def _time_epochs(run_epoch: Any, repeats: int, device: Any, wait_turn: Any) -> list[float]:
    """One warm-up epoch, then ``repeats`` timed ones (synchronised on a GPU), each on its turn."""
    times = []
    for _ in range(1 + repeats):
        wait_turn()
        _sync(device)
        start = time.perf_counter()
        run_epoch()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def _case_classic(
    opts: dict[str, Any], device: Any, batch_size: int, wait_turn: Any, after_epoch: Any = None
) -> tuple[list[float], int, dict]:
    """(a): torchvision dataset with per-sample transforms, ``DataLoader``, the plain loop."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(opts["data_dir"], train=True, download=False, transform=transform)
    train = Subset(dataset, _train_indices(len(dataset), opts["val_size"]).tolist())
    loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    batches, samples = _epochs(opts, len(train), batch_size)
    model, criterion, optimizer = _classic_recipe(device)

    def run_epoch() -> None:
        model.train()
        for step, (x, y) in enumerate(loader):
            if step == batches:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    return _time_epochs(run_epoch, opts["repeats"], device, wait_turn), samples, {}


def _case_memory(
    opts: dict[str, Any], device: Any, batch_size: int, wait_turn: Any, after_epoch: Any = None
) -> tuple[list[float], int, dict]:
    """(b): the train split normalised once into one tensor on ``device``; randperm index slices."""
    import torch
    from torchvision import datasets

    raw = datasets.MNIST(opts["data_dir"], train=True, download=False)
    index = _train_indices(len(raw.targets), opts["val_size"])
    images = raw.data[index].unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD).to(device)
    targets = raw.targets[index].long().to(device)
    del raw
    n = len(targets)
    batches, samples = _epochs(opts, n, batch_size)
    model, criterion, optimizer = _classic_recipe(device)

    def run_epoch() -> None:
        model.train()
        order = torch.randperm(n, device=device)
        for step in range(batches):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x, y = images.index_select(0, idx), targets.index_select(0, idx)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    return _time_epochs(run_epoch, opts["repeats"], device, wait_turn), samples, {}


def _case_lightning(
    opts: dict[str, Any],
    device: Any,
    batch_size: int,
    wait_turn: Any,
    after_epoch: Any = None,
    validate: bool = False,
    groups: bool = False,
) -> tuple[list[float], int, dict]:
    """(c), (c1), (d), (e): ``Trainer.fit`` of lit_mnist's module and datamodule, timed by a Callback.

    With ``groups``, the group size is what ``scripts/train.py`` picks (``lit_mnist.groups.group_size``
    of 10 and the steps per epoch); 1 means plain Lightning."""
    import inspect
    import logging

    import lightning as L

    from lit_mnist import MNISTClassifier, MNISTDataModule

    split_seed = inspect.signature(MNISTDataModule).parameters["split_seed"].default
    if (MNISTDataModule.mean, MNISTDataModule.std, split_seed) != (MEAN, STD, SPLIT_SEED):
        raise RuntimeError(
            "scripts/benchmark.py's MEAN, STD, SPLIT_SEED no longer match MNISTDataModule's: update them"
        )

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available", no tips

    from lit_mnist.config import RunConfig
    from lit_mnist.groups import StepGroups, group_size

    size = 1
    if groups:
        steps, _ = _epochs({"limit_batches": None}, opts["train_size"], batch_size)
        size = group_size(RunConfig().steps_per_batch, steps, opts["limit_batches"])
    model = MNISTClassifier(steps_per_batch=size)
    datamodule = MNISTDataModule(
        opts["data_dir"],
        batch_size=batch_size,
        val_size=opts["val_size"],
        loader="memory",
        download=False,
        steps_per_batch=size,
    )
    timer = _epoch_timer(device, wait_turn, after_epoch)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1 + opts["repeats"],
        limit_train_batches=(opts["limit_batches"] // size) if opts["limit_batches"] else 1.0,
        limit_val_batches=(opts["limit_batches"] or 1.0) if validate else 0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, StepGroups(size)],
    )
    trainer.fit(model, datamodule=datamodule)
    return _timed_epochs(
        timer, opts, len(datamodule.split("train")[1]), batch_size, {"steps_per_batch": size}
    )


def _case_full_run(
    opts: dict[str, Any], device: Any, batch_size: int, wait_turn: Any, after_epoch: Any = None
) -> tuple[list[float], int, dict]:
    """(f): the Trainer a run of the default config builds (:func:`lit_mnist.build.build_trainer`) -- the
    TensorBoard and CSV loggers, monitoring callbacks (LR monitor, speed, prediction images, confusion
    matrix, curves), NaN guard, signal handling, best and last checkpoints -- in a temporary log folder."""
    import logging
    import tempfile
    from pathlib import Path

    from lit_mnist.build import build_data_and_model, build_trainer
    from lit_mnist.config import RunConfig

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="lit_mnist_bench_") as log_dir:
        limit = opts["limit_batches"]
        cfg = RunConfig(
            data_dir=opts["data_dir"],
            val_size=opts["val_size"],
            batch_size=batch_size,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=1 + opts["repeats"],
            progress_bar=False,
            download=False,
            log_dir=log_dir,
            limit_train_batches=limit,
            limit_val_batches=limit,
        )
        datamodule, model, plan = build_data_and_model(cfg)
        trainer = build_trainer(cfg, Path(log_dir) / "version_0", 0, plan)
        timer = _epoch_timer(device, wait_turn, after_epoch)
        callbacks: list[Any] = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning at init
        callbacks.append(timer)  # after the checkpoints: the epoch's saves are inside the clock
        trainer.fit(model, datamodule=datamodule)
    extra = {"steps_per_batch": plan.size}
    return _timed_epochs(timer, opts, len(datamodule.split("train")[1]), batch_size, extra)


def _epoch_timer(device: Any, wait_turn: Any, after_epoch: Any = None) -> Any:
    """A Callback that waits for the case's turn at the start of every training epoch, then reads the
    clock at its start and end (synchronised on a GPU), then runs ``after_epoch`` (outside the clock).
    Lightning runs an epoch's validation, and the checkpoints saved after it, before
    ``on_train_epoch_end``: with validation on, they are inside the clock."""
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.batches: list[int] = []

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            wait_turn()
            _sync(device)
            self._start = time.perf_counter()
            self._step = trainer.global_step

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            _sync(device)
            self.times.append(time.perf_counter() - self._start)
            self.batches.append(trainer.global_step - self._step)  # optimizer steps (batches of batch_size)
            if after_epoch is not None:
                after_epoch()

    return EpochTimer()


def _timed_epochs(
    timer: Any, opts: dict[str, Any], n: int, batch_size: int, extra: dict[str, Any] | None = None
) -> tuple[list[float], int, dict]:
    """The timed epochs after the warm-up, checked to have run every batch."""
    batches, samples = _epochs(opts, n, batch_size)
    if timer.batches[1:] != [batches] * opts["repeats"]:
        raise RuntimeError(f"Lightning ran {timer.batches} optimizer steps per epoch, expected {batches}")
    return timer.times[1:], samples, {"warmup_s": timer.times[0], **(extra or {})}


def _gemm_step_s(device: Any, batch: int = 2048) -> float:
    """Seconds of the GEMMs of one training step of the network at ``batch`` (median of 5 rounds)."""
    import torch

    (i1, o1), (i2, o2), (i3, o3) = LAYERS

    def r(*shape: int) -> Any:
        return torch.randn(*shape, device=device)

    x, h1, h2 = r(batch, i1), r(batch, o1), r(batch, o2)
    w1, w2, w3 = r(o1, i1), r(o2, i2), r(o3, i3)
    g1, g2, g3 = r(batch, o1), r(batch, o2), r(batch, o3)

    def step_gemms() -> None:  # the mm's of one step, with the transposes autograd uses
        torch.mm(x, w1.t()), torch.mm(h1, w2.t()), torch.mm(h2, w3.t())
        torch.mm(g1.t(), x), torch.mm(g2.t(), h1), torch.mm(g3.t(), h2)
        torch.mm(g3, w3), torch.mm(g2, w2)

    return _rate(step_gemms, device)


def _floor(device: Any, samples: int, step_s: list[float], batch: int = 2048) -> dict[str, Any]:
    """The GEMM floor of one epoch: executed GEMM FLOPs / the rate of the same GEMMs at ``batch``,
    one value per timed epoch from the rate measured right after it (``step_s``: seconds per step)."""
    import torch

    forward = 2 * sum(i * o for i, o in LAYERS)
    (_, _), (i2, o2), (i3, o3) = LAYERS
    backward = forward + 2 * (i2 * o2 + i3 * o3)  # weight grads + input grads of layers 2, 3
    per_sample = forward + backward
    rates = [per_sample * batch / t / 1e9 for t in step_s]
    floors = [per_sample * samples / (rate * 1e9) for rate in rates]
    gemm_gflops = statistics.median(rates)
    square_n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(square_n, square_n, device=device), torch.randn(square_n, square_n, device=device)
    square_s = _rate(lambda: torch.mm(a, b), device)
    return {
        "flops_per_sample": per_sample,
        "forward_flops_per_sample": forward,
        "backward_flops_per_sample": backward,
        "flops_per_epoch": per_sample * samples,
        "gemm_batch": batch,
        "epoch_gemm_gflops": rates,
        "epoch_floor_s": floors,
        "epoch_floor_3x_forward_s": [f * 3 * forward / per_sample for f in floors],
        "gemm_gflops": gemm_gflops,
        "floor_s": statistics.median(floors),
        "floor_3x_forward_s": 3 * forward * samples / (gemm_gflops * 1e9),
        "square_n": square_n,
        "square_gflops": 2 * square_n**3 / square_s / 1e9,
    }


def _rate(fn: Any, device: Any, rounds: int = 5, min_s: float = 0.05) -> float:
    """Median seconds of one call of ``fn`` over ``rounds`` rounds of at least ``min_s`` each, after a warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_s:
        fn()
        calls += 1
        _sync(device)
    per_round = max(calls, 1)
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        _sync(device)
        times.append((time.perf_counter() - start) / per_round)
    return statistics.median(times)


if __name__ == "__main__":
    if "--serve" in sys.argv[1:]:  # the serving benchmark, with flags of its own: scripts/benchmark_serve.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import benchmark_serve

        sys.exit(benchmark_serve.main([arg for arg in sys.argv[1:] if arg != "--serve"]))
    sys.exit(main(get_parser().parse_args(_joined_train_flags(sys.argv[1:]))))
