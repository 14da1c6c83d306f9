"""What training and the commands that use trained models both need, none of it about flags.

The accelerator and precision names the commands accept, the check that a GPU asked for is there,
writing a file so that a reader never sees half of it, and a Trainer that prints nothing but the
result it is asked for.
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_mnist.errors import UsageError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = (
    "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64",
)  # fmt: skip
#: Lightning's short forms, passed on as the names it recommends.
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
#: The logger Lightning's Trainer reports its set-up through (GPU available, tips, CUDA devices).
LIGHTNING_LOGGER = "lightning.pytorch"


def check_accelerator(accelerator: str) -> None:
    """Refuse a GPU accelerator on a machine where torch sees none.

    Raises:
        UsageError: one line naming ``--accelerator`` and what to use instead.
    """
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--accelerator {accelerator}: no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its class name when empty), at most ``limit`` characters."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


# --------------------------------------------------------------------------- atomic files
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder) through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    A reader sees the old file or the whole new one, never a partial write; the temporary file is
    removed when ``write`` fails.
    """
    # Not mkstemp: its files are private (0600); this one gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- a quiet Trainer
@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Only warnings and errors from Lightning's logger inside the block.

    For commands whose output is the result: the Trainer's start-up notes (GPU available, tips,
    CUDA_VISIBLE_DEVICES, Tensor Core advice) are logged at INFO while the Trainer is built and when
    it starts a run, so both need the block. The logger's level is restored on the way out.
    """
    logger = logging.getLogger(LIGHTNING_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            ignore_upstream_deprecations()
            yield
    finally:
        logger.setLevel(level)


#: Deprecation warnings that Lightning's own code raises under newer torch: not the user's business.
UPSTREAM_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)  # lightning 2.6.6, torch 2.14


def ignore_upstream_deprecations() -> None:
    """Filter :data:`UPSTREAM_DEPRECATIONS` (in the current ``warnings.catch_warnings`` block, if any)."""
    for message in UPSTREAM_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing ..." advertisements for its cloud products."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_ADVERTISEMENTS = _NoAdvertisements()


def hide_advertisements() -> None:
    """Keep Lightning's advertisements out of the terminal (its other start-up notes stay)."""
    for name in (LIGHTNING_LOGGER, f"{LIGHTNING_LOGGER}.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NO_ADVERTISEMENTS not in logger.filters:
            logger.addFilter(_NO_ADVERTISEMENTS)


def quiet_trainer(accelerator: str = "auto", precision: str = "32-true", **overrides: Any) -> L.Trainer:
    """A one-device Trainer that writes nothing: no logger, no checkpoints, no progress bar, no summary.

    Built inside :func:`quiet_lightning`; run its ``test``/``predict`` inside it too to keep the
    run's start-up notes out of the output.

    Args:
        accelerator: Lightning's accelerator name (``auto``, ``cpu``, ``gpu``, ...).
        precision: One of :data:`PRECISIONS`; the short forms are passed on as Lightning's names.
        **overrides: Any other ``L.Trainer`` argument (``callbacks``, ``devices``, ...).
    """
    settings: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": 1,
        "precision": PRECISION_ALIASES.get(precision, precision),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **overrides,
    }
    with quiet_lightning():
        return L.Trainer(**settings)
