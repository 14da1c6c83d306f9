"""lit_mnist: train MNIST-family classifiers with PyTorch Lightning.

The names below are imported when first used (PEP 562), so that ``import lit_mnist.networks`` or
``lit_mnist.augment`` -- plain PyTorch -- does not import Lightning (the benchmark's plain loops use them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_mnist.augment import RandomAffine
    from lit_mnist.callbacks import EpochSpeed, ParameterHistograms, PredictionImages, TrainingCurves
    from lit_mnist.config import RunConfig
    from lit_mnist.data import TensorDataModule, TensorImageDataset
    from lit_mnist.errors import ConfigError
    from lit_mnist.folder import ImageFolderDataModule
    from lit_mnist.folds import FoldsResult, cross_validate
    from lit_mnist.groups import OptimizerStepAxis, StepGroups, StepProgressBar
    from lit_mnist.loggers import MonitoringTensorBoardLogger
    from lit_mnist.mnist import FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule
    from lit_mnist.module import MNISTClassifier
    from lit_mnist.networks import CNN, MLP
    from lit_mnist.run import RunResult, train
    from lit_mnist.stopping import GracefulInterrupt, LastCheckpoint, NonFiniteLossGuard

#: Where each public name lives.
EXPORTS: dict[str, str] = {
    "RunConfig": "lit_mnist.config",
    "RunResult": "lit_mnist.run",
    "train": "lit_mnist.run",
    "cross_validate": "lit_mnist.folds",
    "FoldsResult": "lit_mnist.folds",
    "ConfigError": "lit_mnist.errors",
    "RandomAffine": "lit_mnist.augment",
    "EpochSpeed": "lit_mnist.callbacks",
    "MonitoringTensorBoardLogger": "lit_mnist.loggers",
    "ParameterHistograms": "lit_mnist.callbacks",
    "PredictionImages": "lit_mnist.callbacks",
    "TrainingCurves": "lit_mnist.callbacks",
    "FashionMNISTDataModule": "lit_mnist.mnist",
    "KMNISTDataModule": "lit_mnist.mnist",
    "MNISTDataModule": "lit_mnist.mnist",
    "TensorDataModule": "lit_mnist.data",
    "TensorImageDataset": "lit_mnist.data",
    "ImageFolderDataModule": "lit_mnist.folder",
    "OptimizerStepAxis": "lit_mnist.groups",
    "StepGroups": "lit_mnist.groups",
    "StepProgressBar": "lit_mnist.groups",
    "MNISTClassifier": "lit_mnist.module",
    "CNN": "lit_mnist.networks",
    "MLP": "lit_mnist.networks",
    "GracefulInterrupt": "lit_mnist.stopping",
    "LastCheckpoint": "lit_mnist.stopping",
    "NonFiniteLossGuard": "lit_mnist.stopping",
}

__all__ = [
    "CNN",
    "MLP",
    "ConfigError",
    "EpochSpeed",
    "FashionMNISTDataModule",
    "FoldsResult",
    "GracefulInterrupt",
    "ImageFolderDataModule",
    "KMNISTDataModule",
    "LastCheckpoint",
    "MNISTClassifier",
    "MNISTDataModule",
    "MonitoringTensorBoardLogger",
    "NonFiniteLossGuard",
    "OptimizerStepAxis",
    "ParameterHistograms",
    "PredictionImages",
    "RandomAffine",
    "RunConfig",
    "RunResult",
    "StepGroups",
    "StepProgressBar",
    "TensorDataModule",
    "TensorImageDataset",
    "TrainingCurves",
    "cross_validate",
    "train",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        value = getattr(importlib.import_module(EXPORTS[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
