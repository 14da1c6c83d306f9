"""Lightning's Tuner before a run: the learning-rate finder and the batch-size finder.

Each builds the run's model and data with one step per batch (as the Tuner needs) and a plain Trainer
in this process, and returns what it found; :func:`run_finders` returns a new config with the values
in place of ``auto``. The model is thrown away after: the run builds its own from the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L

from lit_mnist.build import build_datamodule, build_model
from lit_mnist.config import BATCH_SIZE_AUTO_MAX, RunConfig, parse_devices
from lit_mnist.errors import RunError
from lit_mnist.module import MNISTClassifier
from lit_mnist.runtime import PRECISION_ALIASES

__all__ = ["find_batch_size", "find_lr", "run_finders"]


@contextmanager
def _tuning(cfg: RunConfig, what: str) -> Iterator[tuple[MNISTClassifier, Any, L.Trainer]]:
    """The run's model and data with one step per batch, and a Trainer with no loggers, checkpoints,
    bars or summary, whose temporary files go to a temporary folder; the finders' notes are quieted."""
    if cfg.lr == "auto":
        cfg = dataclasses.replace(cfg, lr=1e-3)  # the module needs a number; the finders do not train with it
    datamodule = build_datamodule(cfg, 1)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, datamodule, 1)
    with tempfile.TemporaryDirectory(prefix=f"lit_mnist_{what}_") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        yield (
            model,
            datamodule,
            L.Trainer(
                accelerator=cfg.accelerator,
                devices=parse_devices(cfg.devices),  # one (checked), the one the run trains on
                precision=PRECISION_ALIASES.get(cfg.precision, cfg.precision),  # type: ignore[arg-type]
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp,
                max_epochs=cfg.max_epochs,  # the finders take their own numbers of steps
            ),
        )


def find_lr(cfg: RunConfig) -> tuple[float, Any]:
    """Lightning's learning-rate finder (``Tuner.lr_find``) on the run's data and model: ``(suggestion, plot)``.

    Raises:
        RunError: when the finder has no suggestion (the loss never fell, or too few steps).
    """
    from lightning.pytorch.tuner import Tuner

    with _tuning(cfg, "lr_find") as (model, datamodule, trainer):
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion) or suggestion <= 0:
        raise RunError(
            "the learning-rate finder found no rate where the loss falls fastest; give --lr a number"
        )
    return float(suggestion), finder.plot(suggest=True)  # type: ignore[union-attr]


def find_batch_size(cfg: RunConfig, max_val: int | None = None) -> int:
    """Lightning's batch-size finder on the run's data and model: the batch size to train with.

    ``Tuner.scale_batch_size`` in ``"power"`` mode: from 2, doubled after every 3 training steps that
    fit in the device's memory; Lightning stops at ``max_val`` (default :data:`BATCH_SIZE_AUTO_MAX`),
    which it returns without a try, or at the first power of 2 that reaches the training split's size.

    Raises:
        RunError: when the finder returns no batch size.
    """
    from lightning.pytorch.tuner import Tuner

    with _tuning(dataclasses.replace(cfg, batch_size=2), "batch_size") as (model, datamodule, trainer):
        found = Tuner(trainer).scale_batch_size(
            model, datamodule=datamodule, mode="power", init_val=2, max_val=max_val or BATCH_SIZE_AUTO_MAX
        )
    if not found:
        raise RunError("the batch-size finder found no batch size that fits; give --batch-size a number")
    return int(found)


def run_finders(cfg: RunConfig) -> tuple[RunConfig, Any]:
    """The config with the finders' values in place of ``auto``, and the learning-rate plot (or None).

    The batch size first: the learning rate depends on it. ``lr_find`` alone prints the suggestion
    and keeps the given rate.
    """
    if cfg.batch_size == "auto":
        cfg = dataclasses.replace(cfg, batch_size=find_batch_size(cfg))
        print(f"Batch-size finder: --batch-size {cfg.batch_size}, used", flush=True)
    if not (cfg.lr_find or cfg.lr == "auto"):
        return cfg, None
    found, plot = find_lr(cfg)
    print(
        f"Learning-rate finder: suggests --lr {found:.3g}" + (", used" if cfg.lr == "auto" else ""),
        flush=True,
    )
    if cfg.lr == "auto":
        cfg = dataclasses.replace(
            cfg, lr=float(f"{found:.3g}")
        )  # config.yaml records the rate it trained with
    return cfg, plot
