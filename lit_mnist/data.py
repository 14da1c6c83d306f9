"""The LightningDataModule base of images held as tensors (:class:`TensorDataModule`).

:class:`TensorDataModule` is the whole data path but the source: a subclass's ``load(train)`` returns
the ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels of the training or the test set (from files,
a torchvision dataset, numpy arrays, anything), and the base checks them, builds the seeded train /
validation split, normalises (with the class's ``mean``/``std``, or those of the training images),
and serves them through the in-memory loader (sharded under DDP, resumable mid-epoch) or, with
``loader="torchvision"``, through per-sample ``transforms`` and a ``DataLoader`` built from the very
same tensors.

The MNIST family's files (IDX, MD5s, download) are :mod:`lit_mnist.mnist`'s; a user's image folder
is :mod:`lit_mnist.folder`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lit_mnist.augment import RandomAffine
from lit_mnist.errors import ConfigError, DataError, UsageError
from lit_mnist.groups import check_steps_per_batch
from lit_mnist.loader import InMemoryBatchLoader
from lit_mnist.ranges import check_count_or_fraction
from lit_mnist.splits import split_indices

__all__ = [
    "DATA_DIR_ENV",
    "LOADERS",
    "Loader",
    "TensorDataModule",
    "TensorImageDataset",
    "default_data_dir",
    "pixel_stats",
]

#: The environment variable that names the default data folder.
DATA_DIR_ENV = "LIT_MNIST_DATA_DIR"
Loader = Literal["memory", "torchvision"]
LOADERS: tuple[str, ...] = get_args(Loader)


def default_data_dir() -> str:
    """The data folder used when none is given: ``$LIT_MNIST_DATA_DIR``, else ``./data``.

    Raises:
        UsageError: one line naming the variable when it names a file, not a folder.
    """
    value = os.environ.get(DATA_DIR_ENV)
    if value and os.path.exists(value) and not os.path.isdir(value):
        raise UsageError(
            f"the environment variable {DATA_DIR_ENV}={value} names a file, not a folder; point it at the folder "
            "holding <Dataset>/raw (it may be empty), or pass --data-dir"
        )
    return value or "data"


class TensorImageDataset(Dataset):
    """The images and labels of one split as a map-style dataset for the ``torchvision`` loader.

    Item ``i`` is ``(transform(image), label)``: the ``uint8`` image as a PIL image (mode ``L`` for one
    channel, ``RGB`` for three, ``RGBA`` for four), as torchvision's own datasets hand it to their
    transforms, and the label as an ``int``.

    Args:
        images: ``uint8`` ``(N, C, H, W)`` with C of 1, 3 or 4.
        labels: ``(N,)`` class indices.
        transform: Applied to each PIL image (e.g. augmentation, ``ToTensor``, ``Normalize``).
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Any) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3, 4):
            raise ValueError(
                f"images must be uint8 (N, C, H, W) with 1, 3 or 4 channels, got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images.cpu()
        self.labels = labels.cpu()
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        array = self.images[index].permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        label = self.labels[index]  # a class index, or a target vector (another head)
        return self.transform(image), int(label) if label.dim() == 0 else label


class TensorDataModule(L.LightningDataModule):
    """Images held as tensors: a subclass says where they come from, the base does the rest.

    A subclass sets the class attributes below and implements :meth:`load`, which returns the images
    and labels of the training set (``train=True``) or the test set (``train=False``). The base then
    checks them (shape, counts, label range, non-empty splits: one line naming the source and the
    fix, a :class:`~lit_mnist.errors.DataError`), holds out a seeded validation split of the training
    set (the same on every DDP rank, independent of the run's seed), normalises, and serves the
    splits through :class:`~lit_mnist.loader.InMemoryBatchLoader` (``loader="memory"``) or a
    ``DataLoader`` over :class:`TensorImageDataset` with :meth:`transform` (``loader="torchvision"``,
    for per-sample augmentation). Both loaders are built from the same tensors, so they serve the same
    ``(image, label)`` pairs.

    ``setup("fit")`` loads the test set too, so that a problem with it stops the run before training.

    Args:
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (``torchvision`` loader only).
        val_size: Images of the training set held out for validation: a count (an int >= 1), or a
            fraction of the training set (a float in (0, 1)); 0: none (no validation split).
        split_seed: Seed of the train/validation split and of the folds (fixed, independent of the
            run's seed).
        loader: ``"memory"``: each split held once as a normalised tensor on the training device,
            batches by shuffled index slices; ``"torchvision"``: the classic per-sample
            ``transforms`` + ``DataLoader`` path (for augmentation).
        seed: Seed of the shuffling of the training batches (the in-memory loader mixes in the epoch).
        steps_per_batch: 1 (the default): one training batch of ``batch_size`` per Lightning batch,
            as Lightning's documentation describes. ``K > 1`` (in-memory loader only): each training
            batch Lightning sees is a *step group*, a list of ``K`` consecutive batches of
            ``batch_size``, for a module built with the same ``steps_per_batch`` that takes their
            ``K`` optimizer steps in one ``training_step`` (see :mod:`lit_mnist.groups`); ``K`` must
            divide the training batches per epoch. Validation and test batches are never grouped.
            Not a hyperparameter (not saved with the datamodule's).
        augment_degrees: Training augmentation (in-memory loader): largest random rotation of each
            training image, in degrees. 0 (with the two below): no augmentation.
        augment_translate: Largest random shift of each training image, as a fraction of its size.
        augment_scale: Largest random zoom in or out of each training image (0.1: 90% to 110%).
            The three are applied per sample on whole batches on the training device
            (:class:`~lit_mnist.augment.RandomAffine`), drawn from the seed and the epoch, so a
            resumed run sees the same images. Validation and test images are never augmented.
        folds: With ``fold``: the number K of folds of the training set (:func:`~lit_mnist.splits.stratified_folds`).
        fold: Validate on fold ``fold`` (0 to K-1) of the K folds and train on the others, in place
            of the ``val_size`` split. ``None``: the ``val_size`` split.

    Example::

        class DigitsDataModule(TensorDataModule):
            num_classes, image_shape = 10, (1, 8, 8)

            def load(self, train):
                images, labels = my_arrays(train)  # uint8 (N, 8, 8) and ints (N,)
                return images, labels
    """

    #: Number of classes; labels must lie in ``[0, num_classes)``.
    num_classes: int = 10
    #: ``(C, H, W)`` of every image :meth:`load` returns.
    image_shape: tuple[int, int, int] = (1, 28, 28)
    #: Mean and standard deviation of the training images after scaling to [0, 1]: one value, or one
    #: per channel. ``None``: computed from the training split (after the validation split is held out).
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    #: Name of each class (``None``: the class indices as names).
    classes: tuple[str, ...] | None = None

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 0.1,
        split_seed: int = 42,
        loader: Loader = "memory",
        seed: int = 0,
        steps_per_batch: int = 1,
        augment_degrees: float = 0.0,
        augment_translate: float = 0.0,
        augment_scale: float = 0.0,
        folds: int = 0,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {num_workers}")
        if val_size != 0:  # 0: no validation split
            check_count_or_fraction("val_size", val_size)
        if fold is not None and not 0 <= fold < folds:
            raise ConfigError("fold", f"must be from 0 to {folds - 1} (folds={folds}), got {fold}")
        if loader not in LOADERS:
            raise ConfigError("loader", f"must be one of {', '.join(LOADERS)}; got {loader!r}")
        check_steps_per_batch(steps_per_batch, loader=loader)
        self.augment = RandomAffine(augment_degrees, augment_translate, augment_scale)
        if self.augment.active and loader != "memory":
            raise ConfigError(
                "loader",
                f"must be memory for augmentation (--augment-*: on whole batches on the device); got {loader!r}",
            )
        # as the module's: how a run steps, not data. The subclasses' own arguments are saved too.
        self.save_hyperparameters(ignore=["steps_per_batch"])
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.folds, self.fold = folds, fold
        self.loader = loader
        self.seed = seed
        self.steps_per_batch = steps_per_batch
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}  # normalised images, labels
        self._pixels: dict[str, Tensor] = {}  # the uint8 images of each split (the torchvision loader's)
        self._datasets: dict[str, Any] = {}

    # ----------------------------------------------------------------------- the source
    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        """The images and labels of the training set (``train=True``) or the test set.

        Returns:
            ``uint8`` images ``(N, C, H, W)`` (pixels as stored, 0..255; ``(N, H, W)`` when
            :attr:`image_shape` has one channel) and integer labels ``(N,)`` in ``[0, num_classes)``;
            torch tensors or numpy arrays. The training set is split into train/val after this.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load(train) (see TensorDataModule)")

    def source(self, train: bool, what: str = "images") -> str:
        """Where the ``what`` (``"images"`` or ``"labels"``) of a set come from, for error messages."""
        return f"{type(self).__name__}.load(train={train})"

    @property
    def class_names(self) -> list[str]:
        """The name of each class: :attr:`classes`, else ``"0"``, ``"1"``, ..."""
        names = [str(c) for c in self.classes] if self.classes else []
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    # ----------------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        """Load, check and split the data needed for ``stage`` (once per process).

        ``fit`` (and ``None``) loads the test set as well, so that its problems are found before
        training; ``test`` and ``predict`` load only the test set when the normalisation is known.

        Raises:
            DataError: one line naming the source (file, folder or ``load``) and the fix.
            ConfigError: ``val_size`` leaves no training images; a class has fewer images than ``folds``.
        """
        needs_stats = self.mean is None or self.std is None
        if (stage in (None, "fit", "validate") or needs_stats) and "train" not in self._splits:
            images, labels = self._checked(*self.load(train=True), train=True)
            indices = split_indices(labels, self.val_size, self.split_seed, self.folds, self.fold)
            for split, idx in indices.items():
                self._pixels[split] = images[idx]
            if needs_stats:
                self.mean, self.std = pixel_stats(self._pixels["train"])
            for split, idx in indices.items():
                self._splits[split] = (self.normalise(self._pixels[split]), labels[idx])
        if stage in (None, "fit", "test", "predict") and "test" not in self._splits:
            images, labels = self._checked(*self.load(train=False), train=False)
            self._pixels["test"] = images
            self._splits["test"] = (self.normalise(images), labels)

    def _checked(self, images: Any, labels: Any, train: bool) -> tuple[Tensor, Tensor]:
        """``load``'s result as ``uint8`` ``(N, C, H, W)`` and ``int64`` ``(N,)`` tensors, or a DataError."""
        where, labels_where = self.source(train, "images"), self.source(train, "labels")
        split = "training" if train else "test"
        images = _as_tensor(images, where, "images")
        labels = _as_tensor(labels, labels_where, "labels")
        if images.dim() == 3 and self.image_shape[0] == 1:
            images = images.unsqueeze(1)
        if images.dtype != torch.uint8:
            raise DataError(
                f"{where} gave {images.dtype} images; give uint8 pixels 0..255 "
                "(from floats in [0, 1]: (x * 255).round().to(torch.uint8))"
            )
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise DataError(
                f"{where} gave images of shape {tuple(images.shape[1:])} (C, H, W) and {type(self).__name__}"
                f".image_shape is {tuple(self.image_shape)}; set image_shape to the images' shape, or resize them"
            )
        if labels.dim() >= 2 and not labels.is_complex():
            # a target vector per image (a regression value (N, 1), multi-label 0/1s (N, K)): the head's
            # loss reads them; only that there is one per image, and finite, is checked here
            if len(images) != len(labels):
                raise DataError(
                    f"{where} holds {len(images)} images and {labels_where} {len(labels)} targets; every image "
                    "needs exactly one"
                )
            if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
                raise DataError(f"{labels_where} holds NaN or infinite targets; give finite values")
            if len(labels) == 0:
                raise DataError(f"the {split} set is empty: {where} holds no images; give it at least one")
            return images.contiguous(), labels
        if (
            labels.dim() != 1
            or labels.is_floating_point()
            or labels.is_complex()
            or labels.dtype == torch.bool
        ):
            raise DataError(
                f"{labels_where} gave {labels.dtype} labels of shape {tuple(labels.shape)}; give integer "
                "class indices, one per image (N,), or a target vector per image (N, K) for another head"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{where} holds {len(images)} images and {labels_where} {len(labels)} labels; every image needs "
                "exactly one label: replace the shorter file with one of the same set"
            )
        if len(labels) == 0:
            raise DataError(f"the {split} set is empty: {where} holds no images; give it at least one")
        labels = labels.long()
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise DataError(
                f"{labels_where} holds label {int(labels[index])} (image {index}, {int(bad.sum())} such labels) "
                f"outside [0, {self.num_classes}) of {type(self).__name__}.num_classes = {self.num_classes}; "
                "fix the labels, or set num_classes to cover them"
            )
        return images.contiguous(), labels

    def normalise(self, images: Tensor) -> Tensor:
        """``uint8`` images as the model's float32 input: ``(x / 255 - mean) / std``, per channel.

        The same arithmetic as ``transforms.ToTensor`` then ``transforms.Normalize``, to the bit.
        """
        channels = images.shape[1]
        mean = torch.tensor(_per_channel(self.mean, channels), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(_per_channel(self.std, channels), dtype=torch.float32).view(1, -1, 1, 1)
        return images.float().div_(255).sub_(mean).div_(std)

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The normalised images and labels of ``"train"``, ``"val"`` or ``"test"`` (after ``setup``)."""
        return self._splits[name]

    def pixels(self, name: str) -> Tensor:
        """The ``uint8`` images of ``"train"``, ``"val"`` or ``"test"`` (after ``setup``), in ``split``'s order."""
        return self._pixels[name]

    def dataset_record(self) -> dict[str, Any]:
        """What a checkpoint records of the dataset: class names, normalisation, classes, image shape, and
        the :meth:`fingerprint` of its files when the class gives one.

        Plain values only (checkpoints are read with ``weights_only=True``); the normalisation is known
        after ``setup`` when the class gives none.
        """
        record: dict[str, Any] = {
            "classes": self.class_names,
            "mean": _plain_stat(self.mean),
            "std": _plain_stat(self.std),
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }
        if (fingerprint := self.fingerprint()) is not None:
            record["fingerprint"] = fingerprint
        return record

    def fingerprint(self) -> dict[str, Any] | None:
        """What tells this dataset's files from other files of the same classes (``None``: nothing does).

        A subclass that reads files returns ``{"digest": str, "parts": {name: {"digest": str, ...}}}``:
        one digest of everything, and one per part (a folder, a file) with plain counts beside it, so that
        a resume or an evaluation on other files says which part differs and by how much
        (:func:`lit_mnist.checkpoints.data_change`).
        """
        return None

    # ------------------------------------------------------------------- dataloaders
    def train_dataloader(self) -> Any:
        loader = self._dataloader("train", shuffle=True)
        if isinstance(loader, InMemoryBatchLoader):  # the one that serves step groups
            check_steps_per_batch(self.steps_per_batch, batches_per_epoch=loader.num_batches)
        return loader

    def val_dataloader(self) -> Any:
        return self._dataloader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        return self._dataloader("test", shuffle=False)

    def predict_dataloader(self) -> Any:
        """The test images (with their labels, which ``predict_step`` ignores)."""
        return self._dataloader("test", shuffle=False)

    def _dataloader(self, split: str, shuffle: bool) -> Any:
        if self.loader == "torchvision":
            if split not in self._datasets:
                _, labels = self._splits[split]
                self._datasets[split] = TensorImageDataset(self._pixels[split], labels, self.transform())
            return DataLoader(
                self._datasets[split],
                batch_size=self.batch_size,
                shuffle=shuffle,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
        images, targets = self._splits[split]
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
            device = self.trainer.strategy.root_device
            if images.device != device:
                images, targets = images.to(device), targets.to(device)
                self._splits[split] = (images, targets)
        return InMemoryBatchLoader(
            images,
            targets,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            steps_per_batch=self.steps_per_batch if split == "train" else 1,
            augment=self.train_augment() if split == "train" else None,
        )

    def train_augment(self) -> RandomAffine | None:
        """The augmentation of the training batches (None without): pixels from outside an image are black."""
        if not self.augment.active:
            return None
        channels = self.image_shape[0]
        mean, std = _per_channel(self.mean, channels), _per_channel(self.std, channels)
        self.augment.fill = [-m / s for m, s in zip(mean, std, strict=True)]  # black, normalised
        return self.augment

    def transform(self) -> transforms.Compose:
        """The per-sample transform of the ``torchvision`` loader (on PIL images): ``ToTensor`` then ``Normalize``.

        Override it to augment; keep ``ToTensor`` and ``Normalize(self.mean, self.std)`` last.
        """
        channels = self.image_shape[0]
        return transforms.Compose(
            [
                transforms.ToTensor(),
                transforms.Normalize(_per_channel(self.mean, channels), _per_channel(self.std, channels)),
            ]
        )


def pixel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images ``(N, C, H, W)`` scaled to [0, 1].

    A channel that is constant everywhere gets a standard deviation of 1 (nothing to scale).
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    squares = torch.zeros(channels, dtype=torch.int64)
    for chunk in images.split(4096):  # exact integer sums, a chunk of int64 at a time
        values = chunk.transpose(0, 1).reshape(channels, -1).long()
        total += values.sum(dim=1)
        squares += values.square().sum(dim=1)
    count = images.numel() // channels
    mean = total.double() / count
    std = (squares.double() / count - mean.square()).clamp_(min=0).sqrt_()
    std = torch.where(std > 0, std, torch.full_like(std, 255.0))
    return tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in std)


def _per_channel(value: float | Sequence[float] | None, channels: int) -> tuple[float, ...]:
    if value is None:
        raise RuntimeError("the normalisation is not known before setup() (mean/std are None)")
    values = (float(value),) * channels if isinstance(value, int | float) else tuple(float(v) for v in value)
    if len(values) != channels:
        raise ConfigError(
            "mean", f"and std need one value or one per channel ({channels}), got {len(values)}"
        )
    return values


def _plain_stat(value: float | Sequence[float] | None) -> float | list[float] | None:
    """A mean or std as a checkpoint records it: one float for one value, else a list."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    values = [float(v) for v in value]
    return values[0] if len(values) == 1 else values


def _as_tensor(value: Any, where: str, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise DataError(
        f"{where} gave {what} of type {type(value).__name__}; give a torch tensor or a numpy array"
    )


#: The MNIST family lives in lit_mnist.mnist; these names are still found here, for code and LightningCLI
#: configs that name them so (imported when asked for: this module does not import lit_mnist.mnist).
_MOVED = ("MNISTDataModule", "FashionMNISTDataModule", "KMNISTDataModule", "DATAMODULES")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("lit_mnist.mnist"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
