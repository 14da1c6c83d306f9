"""Every ``--dataset`` name and its datamodule class: the MNIST family's files, and a user's image folder."""

from __future__ import annotations

from lit_mnist.data import TensorDataModule
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.mnist import DATAMODULES

__all__ = [
    "DATASETS",
]

DATASETS: dict[str, type[TensorDataModule]] = {**DATAMODULES, "folder": ImageFolderDataModule}
