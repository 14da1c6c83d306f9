"""The ranges of settings that a :class:`~lit_mnist.config.RunConfig` and the classes it builds both check, and the
limits of the libraries below (torch, NumPy, Lightning, MLflow) that a setting must stay within.

One check per range, so that ``RunConfig(lr=-1)``, ``MNISTClassifier(lr=-1)`` and ``--lr -1`` say the same
line. Plain Python: no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from lit_mnist.errors import ConfigError

__all__ = [
    "IMAGE_SIZE_MAX",
    "INT_MAX",
    "MLFLOW_EXPERIMENT_MAX",
    "SEED_MAX",
    "THREADS_MAX",
    "check_augmentation",
    "check_count_or_fraction",
    "check_limits",
    "check_optimizer_settings",
]


def check_count_or_fraction(name: str, value: Any, closed: bool = False) -> None:
    """``value`` is a count (an int >= 1, or >= 0 when ``closed``) or a fraction in (0, 1) (``[0, 1]``).

    The one check of such settings, for RunConfig and the datamodules' constructors.

    Raises:
        ConfigError: naming ``name``.
    """
    low, fraction = (0, 0 <= value <= 1) if closed else (1, 0 < value < 1)
    if isinstance(value, bool) or not (
        (isinstance(value, int) and value >= low) or (isinstance(value, float) and fraction)
    ):
        bounds = "[0, 1]" if closed else "(0, 1)"
        raise ConfigError(name, f"must be a count >= {low} or a fraction in {bounds}, got {value}")


def check_augmentation(degrees: float, translate: float, scale: float) -> None:
    """The ranges of the augmentation settings, for RunConfig and :class:`~lit_mnist.augment.RandomAffine`."""
    if not (math.isfinite(degrees) and 0 <= degrees <= 180):
        raise ConfigError("augment_degrees", f"must be in [0, 180] (degrees), got {degrees}")
    if not (math.isfinite(translate) and 0 <= translate < 1):
        raise ConfigError("augment_translate", f"must be in [0, 1) (a fraction of the size), got {translate}")
    if not (math.isfinite(scale) and 0 <= scale < 1):
        raise ConfigError("augment_scale", f"must be in [0, 1) (a relative zoom), got {scale}")


def check_optimizer_settings(
    optimizer: str, lr: float, momentum: float, betas: Sequence[float], nesterov: bool, weight_decay: float,
    step_size: int, gamma: float, label_smoothing: float,
) -> None:  # fmt: skip
    """The ranges of the optimizer's and schedule's settings, for RunConfig and the LightningModule.

    Raises:
        ConfigError: naming the first invalid setting.
    """
    if not lr > 0:
        raise ConfigError("lr", f"must be > 0, got {lr}")
    if momentum < 0:
        raise ConfigError("momentum", f"must be >= 0, got {momentum}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError("betas", f"must be two numbers in [0, 1), e.g. 0.9 0.999; got {list(betas)}")
    if nesterov and (optimizer != "sgd" or momentum <= 0):
        raise ConfigError("nesterov", "needs --optimizer sgd and --momentum > 0")
    if weight_decay < 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
    if step_size < 1:
        raise ConfigError("step_size", f"must be >= 1, got {step_size}")
    if not 0 < gamma <= 1:
        raise ConfigError("gamma", f"must be in (0, 1], got {gamma}")
    if not 0 <= label_smoothing < 1:
        raise ConfigError("label_smoothing", f"must be in [0, 1), got {label_smoothing}")


#: The largest count or size a setting takes: torch, OpenMP and NumPy read them as C ints.
INT_MAX = 2**31 - 1
#: Lightning's seed_everything takes NumPy's seeds: unsigned 32-bit integers.
SEED_MAX = 2**32 - 1
#: The largest --image-size: a network's input grows with its square (an MLP's first layer on 1024 x 1024 RGB
#: images already holds 400 million weights).
IMAGE_SIZE_MAX = 1024
#: The most threads one process may ask for (OpenMP starts them all).
THREADS_MAX = 1024
#: The longest experiment name MLflow stores.
MLFLOW_EXPERIMENT_MAX = 500


def check_limits(cfg: Any) -> None:
    """A config's numbers and names that the libraries below would refuse with a traceback, or take without a
    word and fail on later.

    Raises:
        ConfigError: naming the setting.
    """
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(
            "seed", f"must be in [0, {SEED_MAX}] (Lightning seeds NumPy with it), got {cfg.seed}"
        )
    for name, limit in (("image_size", IMAGE_SIZE_MAX), ("threads", THREADS_MAX)):
        if (value := getattr(cfg, name)) is not None and value > limit:
            raise ConfigError(name, f"must be at most {limit}, got {value}")
    for f in dataclasses.fields(cfg):
        values = getattr(cfg, f.name)
        for value in values if isinstance(values, tuple) else (values,):
            if (
                f.name != "seed"
                and isinstance(value, int)
                and not isinstance(value, bool)
                and abs(value) > INT_MAX
            ):
                raise ConfigError(f.name, f"must be at most {INT_MAX}, got {value}")
    if not cfg.mlflow_experiment.strip() or len(cfg.mlflow_experiment) > MLFLOW_EXPERIMENT_MAX:
        raise ConfigError(
            "mlflow_experiment",
            f"must be a name of 1 to {MLFLOW_EXPERIMENT_MAX} characters (MLflow's limit), "
            f"got {len(cfg.mlflow_experiment)}: {cfg.mlflow_experiment[:40]!r}",
        )
