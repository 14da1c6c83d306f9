"""Time to accuracy: each recipe as a whole process, beside the seed's classic loop and a plain PyTorch loop.

Run through ``python scripts/benchmark.py --time-to-accuracy`` (see its ``--help``). For each recipe of
``--recipes`` it runs, one after the other, each in a fresh process timed from start to exit:

* **lit_mnist**: ``python scripts/train.py --recipe NAME --data-dir D --log-dir TMP --no-progress-bar``
  (Python start-up, imports, data, training, validation every epoch, checkpoints, the TensorBoard and
  CSV logs, the final test of the best checkpoint); the accuracy is ``results.json``'s ``test_acc``;
* **plain**: the same recipe as a plain PyTorch loop over in-memory tensors (this file, ``--plain``):
  the same seeded 55,000/5,000 split, normalisation, network (``lit_mnist.networks``), optimizer,
  schedule, label smoothing and augmentation (``lit_mnist.augment``, a seeded table of draws per epoch) -- no
  Lightning, no validation, no checkpoint, no logs; the test set is scored once at the end.

and once, for reference, **the seed's classic loop**: torchvision ``MNIST`` + ``ToTensor``/``Normalize``
+ ``DataLoader(batch_size=64, shuffle=True)``, the MLP 784-128-64-10, SGD 0.01 momentum 0.9, 10 epochs
(this file, ``--classic``). ``--repeats N`` runs every process N times, in turn, and reports medians.
Each recipe's train.py runs (median accuracy, median wall time) are checked against the recipe's target
(``lit_mnist.recipes``: test accuracy, and wall time and epochs where it has them) and the verdict printed.
``--train-flags`` adds train.py flags after ``--recipe NAME`` (for train.py and for the plain loop; only
flags the plain loop follows too, so that both run the same recipe).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_mnist.config import RunConfig  # plain Python: no torch, no Lightning
from lit_mnist.errors import ConfigError
from lit_mnist.stats import EN_DASH, INTERVAL_METHOD, accuracy_interval  # plain Python

ROOT = Path(__file__).resolve().parents[1]
RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------- the children
def _idx(path: Path) -> Any:
    import torch

    data = path.read_bytes()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


def plain_main(cfg: RunConfig, data_dir: str) -> dict[str, Any]:
    """The recipe ``cfg`` (train.py's resolved config) as a plain PyTorch loop; returns test accuracy and times."""
    import torch
    from torch import nn

    from lit_mnist.augment import RandomAffine  # plain PyTorch: `import lit_mnist` pulls in no Lightning
    from lit_mnist.networks import CNN, MLP

    if isinstance(cfg.lr, str) or isinstance(cfg.batch_size, str):
        raise ValueError("the plain loop has no finder: give --lr and --batch-size as numbers")
    start = time.perf_counter()
    raw = Path(data_dir) / "MNIST" / "raw"
    train_x, train_y = _idx(raw / RAW[0]), _idx(raw / RAW[1]).long()
    test_x, test_y = _idx(raw / RAW[2]), _idx(raw / RAW[3]).long()
    mean, std = 0.1307, 0.3081
    perm = torch.randperm(
        len(train_y), generator=torch.Generator().manual_seed(42)
    )  # MNISTDataModule's split
    # images held out for validation, as MNISTDataModule counts them (None: its default)
    held = 5_000 if cfg.val_size is None else cfg.val_size
    held = held if isinstance(held, int) else max(1, round(len(train_y) * held))
    keep = perm[held:]
    x = train_x[keep].unsqueeze(1).float().div_(255).sub_(mean).div_(std)
    y = train_y[keep]
    tx = test_x.unsqueeze(1).float().div_(255).sub_(mean).div_(std)
    torch.manual_seed(cfg.seed)
    if cfg.model == "cnn":
        net: nn.Module = CNN(
            num_classes=10,
            dropout=cfg.dropout,
            channels=cfg.cnn_channels,
            hidden_size=cfg.cnn_hidden_size,
            kernel_sizes=cfg.cnn_kernel_sizes,
            padding=cfg.cnn_padding,
        )
        if cfg.channels_last:  # as MNISTClassifier does
            net.to(memory_format=torch.channels_last)
    else:
        net = MLP(hidden_sizes=cfg.hidden_sizes, num_classes=10, dropout=cfg.dropout)
    params, lr, wd = net.parameters(), cfg.lr, cfg.weight_decay
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd
        )
    elif cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=wd)
    elif cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=wd)
    else:
        optimizer = torch.optim.RMSprop(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    bs, epochs, n = cfg.batch_size, cfg.max_epochs, len(y)
    steps = (n + bs - 1) // bs
    scheduler: Any = None
    if cfg.scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps * epochs, cycle_momentum=cfg.cycle_momentum
        )
    elif cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps * epochs)
    elif cfg.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    augment = RandomAffine(cfg.augment_degrees, cfg.augment_translate, cfg.augment_scale, fill=-mean / std)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ready = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        uniforms = torch.rand(n, augment.draws, generator=torch.Generator().manual_seed(epoch + 7))
        for lo in range(0, n, bs):
            idx = order[lo : lo + bs]
            batch = x.index_select(0, idx)
            if augment.active:
                batch = augment(batch, uniforms[lo : lo + bs])
            loss = criterion(net(batch), y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None and cfg.scheduler != "step":
                scheduler.step()
        if scheduler is not None and cfg.scheduler == "step":
            scheduler.step()
    trained = time.perf_counter()
    net.eval()
    with torch.no_grad():
        correct = sum(
            int((net(tx[i : i + 2000]).argmax(1) == test_y[i : i + 2000]).sum())
            for i in range(0, len(test_y), 2000)
        )
    return {
        "test_acc": correct / len(test_y),
        "test_images": len(test_y),
        "setup_s": ready - start,
        "train_s": trained - ready,
        "test_s": time.perf_counter() - trained,
    }


def classic_main(data_dir: str, epochs: int = 10) -> dict[str, Any]:
    """The seed's classic loop: torchvision MNIST, ToTensor + Normalize, DataLoader(64, shuffle), the MLP, SGD."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    start = time.perf_counter()
    torch.manual_seed(42)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(data_dir, train=True, download=False, transform=transform)
    test = datasets.MNIST(data_dir, train=False, download=False, transform=transform)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=64, shuffle=True)
    ready = time.perf_counter()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            criterion(net(images), labels).backward()
            optimizer.step()
    trained = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=1000):
            correct += int((net(images).argmax(1) == labels).sum())
    return {
        "test_acc": correct / len(test),
        "test_images": len(test),
        "setup_s": ready - start,
        "train_s": trained - ready,
    }


# --------------------------------------------------------------------------- the parent
#: The settings of a run the plain loop of --time-to-accuracy follows (the attributes plain_main reads)
PLAIN_LOOP_KEYS = frozenset(
    ("seed", "val_size", "batch_size", "max_epochs", "model", "hidden_sizes", "dropout", "cnn_channels",
     "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size", "channels_last", "optimizer", "lr", "momentum",
     "nesterov", "betas", "weight_decay", "scheduler", "cycle_momentum", "step_size", "gamma",
     "label_smoothing", "augment_degrees", "augment_translate", "augment_scale")
)  # fmt: skip
#: The settings that change how a run is shown or grouped, not what it trains
NOT_TRAINING_KEYS = frozenset(("progress_bar", "log_every_n_steps", "steps_per_batch"))
#: The settings the benchmark gives train.py itself
BENCHMARK_KEYS = frozenset(("data_dir", "log_dir", "recipe"))


def recipe_config(name: str, flags: Sequence[str] = ()) -> RunConfig:
    """The config train.py runs for ``--recipe NAME`` followed by ``flags`` (a usage error exits, as in train.py)."""
    from lit_mnist.cli.flags import parse_run

    return parse_run(["--recipe", name, *flags], "train.py")


def _train_flags_config(name: str, flags: Sequence[str], text: str) -> RunConfig:
    """:func:`recipe_config`, its usage errors as a ``ValueError`` of one line; no second ``--config`` file."""
    from lit_mnist.cli.flags import config_from, parse_namespace
    from lit_mnist.recipes import RECIPES, recipe_path

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            namespace = parse_namespace(["--recipe", name, *flags], "train.py")
            config = config_from(namespace)
    except ConfigError as err:
        raise ValueError(f"--train-flags {text!r} with --recipe {name}: {err.flag} {err.message}") from None
    except SystemExit as exit_:
        if not exit_.code:
            raise ValueError(
                f"--train-flags {text!r}: it ends train.py before training (--help, --print-config, "
                "--recipe list); leave that out"
            ) from None
        lines = said.getvalue().strip().splitlines() or ["refused"]
        message = lines[-1].removeprefix("train.py: error: ")
        raise ValueError(f"--train-flags {text!r} with --recipe {name}: {message}") from None
    recipe_files = {str(recipe_path(recipe)) for recipe in RECIPES}  # --recipe NAME reads one of these
    if any(str(path) not in recipe_files for path in namespace.get("config") or ()):
        raise ValueError("--train-flags: --config is set by the benchmark itself; leave it out")
    return config


def check_train_flags(text: str, recipes: list[str]) -> tuple[str, ...]:
    """``--train-flags``' string split as a shell would, checked against every recipe's config.

    Only settings both the train.py run and the plain loop follow may change (``PLAIN_LOOP_KEYS``,
    ``NOT_TRAINING_KEYS``, and the CPU: the plain loop runs on one), so the two rows stay the same recipe.

    Raises:
        ValueError: with one line naming the flag and what to do.
    """
    from lit_mnist.cli.flags import flag

    try:
        flags = tuple(shlex.split(text))
    except ValueError as err:
        raise ValueError(f"--train-flags {text!r}: {err}; quote it as one string") from None
    for name in recipes:
        recipe, given = recipe_config(name), _train_flags_config(name, flags, text)
        for key, value in given.flag_changes(recipe).items():
            if key in BENCHMARK_KEYS:
                raise ValueError(
                    f"--train-flags: {flag(key)} is set by the benchmark itself; leave it out "
                    "(give the data folder as the benchmark's --data-dir)"
                )
            if key == "compile":
                raise ValueError(
                    "--train-flags: --compile: use the benchmark's --with-compile (a row of its own)"
                )
            if value == "auto" and key in ("lr", "batch_size"):
                raise ValueError(
                    f"--train-flags: {flag(key)} auto: the plain loop has no finder; give a number (the one "
                    "train.py --lr-find prints)"
                )
            on_cpu = (key == "accelerator" and value == "cpu") or (key == "devices" and str(value) == "1")
            if key not in PLAIN_LOOP_KEYS | NOT_TRAINING_KEYS and not on_cpu:
                raise ValueError(
                    f"--train-flags: {flag(key)} changes what the plain loop cannot follow, so the two rows would "
                    "not run the same recipe; give only the network, optimizer, schedule, augmentation, batch "
                    "size, epochs, seed or --val-size (and --accelerator cpu --devices 1)"
                )
    return flags


def _timed(cmd: list[str], cwd: str, timeout: float) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIT_MNIST_RUN")}
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    return time.perf_counter() - start, result


def _child(cmd: list[str], cwd: str, timeout: float) -> tuple[float, dict[str, Any]]:
    wall, result = _timed(cmd, cwd, timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... exited {result.returncode}: {result.stderr.strip()[-500:]}"
        )
    return wall, json.loads(result.stdout.strip().splitlines()[-1])


def _first_epoch_extra(run_dir: Path) -> float | None:
    """How much longer a run's first epoch took than the median of the others (``perf/epoch_time_s``)."""
    import csv

    try:
        with open(run_dir / "metrics.csv", newline="") as file:
            epochs = [
                float(r["perf/epoch_time_s"]) for r in csv.DictReader(file) if r.get("perf/epoch_time_s")
            ]
    except OSError:
        return None
    return epochs[0] - statistics.median(epochs[1:]) if len(epochs) > 1 else None


def _compile_seconds(compiled: Path, plain: Path) -> float | None:
    """A ``--compile`` run's compile time: its first epoch's extra time less the same run's without it."""
    extra, warm_up = _first_epoch_extra(compiled), _first_epoch_extra(plain)
    return extra - warm_up if extra is not None and warm_up is not None else None


def _interval(accuracy: float, sizes: list[Any]) -> list[float] | None:
    """The Wilson interval of ``accuracy`` over the runs' test set (every run's the same size), or None."""
    known = {n for n in sizes if isinstance(n, int) and n > 0}
    return list(accuracy_interval(accuracy, known.pop())) if len(known) == 1 else None


def run(
    recipes: list[str],
    data_dir: str,
    repeats: int,
    json_path: str | None,
    with_compile: bool = False,
    timeout: float = 3600,
    train_flags: tuple[str, ...] = (),
) -> int:
    """Run the table's processes ``repeats`` times in turn; print the table; write the JSON. Returns 0.

    ``with_compile``: each recipe's train.py also with ``--compile``, its compile time apart.
    ``train_flags``: train.py flags put after ``--recipe NAME`` (in train.py and in the plain loop's recipe).
    Each recipe's train.py runs -- their median accuracy and median wall time, taken apart -- are checked
    against its target (``Recipe.verdict``); a missed target is reported, not an error: times on a shared
    machine move with its load.
    """
    from lit_mnist.recipes import RECIPES

    here = str(Path(__file__).resolve())
    data_dir = str(Path(data_dir).resolve())  # the processes run in a temporary folder
    rows: dict[str, dict[str, list[Any]]] = {}

    compile_s: dict[str, list[float]] = {}

    def add(key: str, wall: float, payload: dict[str, Any]) -> None:
        row = rows.setdefault(key, {"wall_s": [], "test_acc": [], "train_s": [], "test_images": []})
        row["test_images"].append(payload.get("test_images"))
        row["wall_s"].append(wall)
        row["test_acc"].append(payload["test_acc"])
        row["train_s"].append(payload.get("train_s"))

    def train_py(name: str, logs: Path, extra: list[str]) -> tuple[float, dict[str, Any]]:
        wall, result = _timed(
            [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", name, "--data-dir", data_dir,
             "--log-dir", str(logs), "--no-progress-bar", *extra],
            tmp,
            timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"train.py --recipe {name} {' '.join(extra)} exited {result.returncode}: {result.stderr[-500:]}"
            )
        return wall, json.loads((logs / "version_0" / "results.json").read_text())

    # what train.py and the plain loop run
    cfgs = {name: recipe_config(name, train_flags) for name in recipes}
    with tempfile.TemporaryDirectory(prefix="lit_mnist_tta_") as tmp:
        for repeat in range(repeats):
            print(f"repeat {repeat + 1} of {repeats}: classic loop", file=sys.stderr, flush=True)
            wall, payload = _child([sys.executable, here, "--classic", data_dir], tmp, timeout)
            add("seed's classic loop (10 epochs)", wall, payload)
            for name in recipes:
                print(
                    f"repeat {repeat + 1} of {repeats}: {name}, lit_mnist then plain",
                    file=sys.stderr,
                    flush=True,
                )
                base_logs = Path(tmp) / f"{name}-{repeat}"  # lit_mnist without --compile
                wall, results = train_py(name, base_logs, list(train_flags))
                add(f"{name}: lit_mnist train.py", wall, results)
                if with_compile:
                    logs = Path(tmp) / f"{name}-compile-{repeat}"
                    wall, results = train_py(name, logs, [*train_flags, "--compile"])
                    add(f"{name}: lit_mnist train.py --compile", wall, results)
                    seconds = _compile_seconds(logs / "version_0", base_logs / "version_0")
                    if seconds is not None:
                        compile_s.setdefault(name, []).append(seconds)
                wall, payload = _child(
                    [sys.executable, here, "--plain", json.dumps(cfgs[name].to_dict()), data_dir],
                    tmp,
                    timeout,
                )
                add(f"{name}: plain PyTorch loop", wall, payload)
    table = {
        key: {
            "wall_s": statistics.median(v["wall_s"]),
            "test_acc": statistics.median(v["test_acc"]),
            "train_s": statistics.median([t for t in v["train_s"] if t is not None])
            if any(v["train_s"])
            else None,
            "test_acc_ci": _interval(statistics.median(v["test_acc"]), v["test_images"]),
            "runs": v,
        }
        for key, v in rows.items()
    }
    width = max(len(k) for k in table)
    print(f"{'run (whole process, median of ' + str(repeats) + ')':<{width}}  wall s  test acc     95% CI     training s")
    for key, row in table.items():
        train = f"{row['train_s']:.1f}" if row["train_s"] is not None else "-"
        ci = row["test_acc_ci"]
        shown = f"{ci[0] * 100:.2f}{EN_DASH}{ci[1] * 100:.2f}" if ci is not None else "-"
        print(f"{key:<{width}}  {row['wall_s']:6.1f}  {row['test_acc'] * 100:7.2f}%  {shown:>13}  {train:>10}")
    print(f"95% CI: the {INTERVAL_METHOD} of the median test accuracy, over the test images")
    targets: dict[str, dict[str, Any]] = {}
    for name in recipes:
        ours, plain = table[f"{name}: lit_mnist train.py"], table[f"{name}: plain PyTorch loop"]
        print(f"{name}: lit_mnist / plain wall time {ours['wall_s'] / plain['wall_s']:.2f}")
        recipe = RECIPES[name]
        met = recipe.verdict(ours["test_acc"], ours["wall_s"], cfgs[name].max_epochs)
        targets[name] = {
            "target": recipe.target,
            "min_test_acc": recipe.min_test_acc,
            "max_wall_s": recipe.max_wall_s,
            "max_epochs": recipe.max_epochs,
            "met": met,
        }
        reached = f"{ours['test_acc'] * 100:.2f}% in {ours['wall_s']:.1f} s"
        if train_flags:
            reached += f", with {' '.join(train_flags)}"
        if met is None:
            print(f"{name}: no target to check ({recipe.target}); lit_mnist train.py reached {reached}")
        else:
            verdict = "met" if met else "MISSED"
            print(f"{name}: target {recipe.target} {verdict}: lit_mnist train.py reached {reached}")
        if with_compile:
            compiled = table[f"{name}: lit_mnist train.py --compile"]
            shown = f"{statistics.median(compile_s[name]):.1f} s" if name in compile_s else "- (one epoch)"
            print(
                f"{name}: --compile / without wall time {compiled['wall_s'] / ours['wall_s']:.2f}; "
                f"compile time {shown} (first epoch's extra time over the median epoch, less the same without)"
            )
    if json_path:
        report = {
            "repeats": repeats,
            "train_flags": list(train_flags),
            "table": table,
            "compile_s": compile_s,
            "targets": targets,
        }
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plain"]:
        # The same start-up and exit as scripts/train.py's (lit_mnist.startup): the garbage collector off
        # for the imports, the objects frozen before the exit. The seed's loop (--classic) has neither.
        from lit_mnist.startup import exit_code, quiet_gc_imports

        with quiet_gc_imports():
            import torch  # imported here as train.py imports it, under quiet_gc_imports
        print(json.dumps(plain_main(RunConfig.from_dict(json.loads(sys.argv[2])), sys.argv[3])))
        exit_code(0)
    elif sys.argv[1:2] == ["--classic"]:
        print(json.dumps(classic_main(sys.argv[2])))
    else:
        print("run it through: python scripts/benchmark.py --time-to-accuracy (see --help)", file=sys.stderr)
        sys.exit(2)
