"""Every ``--dataset`` name and its datamodule class: the MNIST family's files, and a user's image folder."""

from __future__ import annotations

from lit_mnist.data import DATAMODULES, TensorDataModule
from lit_mnist.folder import ImageFolderDataModule

DATASETS: dict[str, type[TensorDataModule]] = {**DATAMODULES, "folder": ImageFolderDataModule}
