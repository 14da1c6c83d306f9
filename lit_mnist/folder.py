"""A user's own images as a dataset: a folder with one sub-folder per class (torchvision's ImageFolder layout).

::

    PATH/cat/001.png  PATH/dog/002.jpg  ...              the test set is a seeded held-out fraction
    PATH/train/cat/...  PATH/test/cat/...                 (or PATH/<class>/... beside PATH/test/<class>/...)

Every image is read once, at ``setup``, into ``uint8`` tensors: converted to grayscale or RGB and
resized to ``image_size`` x ``image_size`` (:func:`read_image`, which ``predict`` uses too); from
there on it is a :class:`~lit_mnist.data.TensorDataModule` like any other (seeded validation split,
normalisation computed from the training images, both loaders). A file that cannot be read is named;
the run goes on without such files only with ``skip_bad_images``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS

from lit_mnist.config import check_count_or_fraction
from lit_mnist.data import Loader, TensorDataModule, default_data_dir
from lit_mnist.errors import ConfigError, DataError, ImageError
from lit_mnist.images import read_grayscale, read_rgb

__all__ = [
    "COLORS",
    "Color",
    "ImageFolderDataModule",
    "read_image",
]

Color = Literal["grayscale", "rgb"]
COLORS: tuple[str, ...] = get_args(Color)


def read_image(path: str | Path, image_size: int, color: str = "grayscale") -> Tensor:
    """One image file as the folder dataset holds it: ``uint8`` ``(C, image_size, image_size)``.

    Any size and colour mode; converted to one channel (``grayscale``) or three (``rgb``), then
    resized (bilinear, antialiased; the aspect ratio is not kept).

    Raises:
        ImageError: the file cannot be read or is refused (one line saying why).
    """
    array = read_grayscale(path)[None] if color == "grayscale" else read_rgb(path).transpose(2, 0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if tensor.shape[1:] != (image_size, image_size):
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return tensor.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class ImageFolderDataModule(TensorDataModule):
    """Images in a folder with one sub-folder per class, as a classification dataset.

    The classes are the sub-folders' names, sorted (``PATH/train``'s when there is one); a ``test``
    sub-folder (``PATH/test/<class>/...``) is the test set, else a seeded ``test_size`` of the images
    is held out for it. Files are those with an image extension (torchvision's ``IMG_EXTENSIONS``),
    searched recursively in each class folder.

    Args:
        data_dir: The folder. Defaults to ``$LIT_MNIST_DATA_DIR`` or ``./data``.
        split_seed: Seed of the test (when held out) and validation splits.
        image_size: Height and width every image is resized to.
        color: ``grayscale`` (one channel) or ``rgb`` (three).
        test_size: Without a ``test`` sub-folder: images held out for the test set, a count or a
            fraction in (0, 1).
        skip_bad_images: Train without the image files that cannot be read (each is named in a
            warning); without it, such a file stops the run with its name.
        mean: Normalisation (one value or one per channel); ``None``: computed from the training images.
        std: As ``mean``.
        **others: The other arguments are :class:`TensorDataModule`'s, with its defaults
            (``batch_size``, ``num_workers``, ``val_size``, ``loader``, ``seed``, ``steps_per_batch``,
            ``augment_*``), spelled out in the signature for LightningCLI and the run config; a test
            keeps them equal to the base's.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 0.1,
        split_seed: int = 42,
        loader: Loader = "memory",
        seed: int = 0,
        steps_per_batch: int = 1,
        image_size: int = 28,
        color: Color = "grayscale",
        test_size: int | float = 0.2,
        skip_bad_images: bool = False,
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        augment_degrees: float = 0.0,
        augment_translate: float = 0.0,
        augment_scale: float = 0.0,
    ) -> None:
        if image_size < 1:
            raise ConfigError("image_size", f"must be >= 1, got {image_size}")
        if color not in COLORS:
            raise ConfigError("color", f"must be one of {', '.join(COLORS)}; got {color!r}")
        check_count_or_fraction("test_size", test_size)
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            val_size=val_size,
            split_seed=split_seed,
            loader=loader,
            seed=seed,
            steps_per_batch=steps_per_batch,
            augment_degrees=augment_degrees,
            augment_translate=augment_translate,
            augment_scale=augment_scale,
        )
        self.data_dir = str(data_dir or default_data_dir())
        self.image_size = image_size
        self.color = color
        self.test_size = test_size
        self.skip_bad_images = skip_bad_images
        if mean is not None:
            self.mean = mean if isinstance(mean, int | float) else tuple(mean)
        if std is not None:
            self.std = std if isinstance(std, int | float) else tuple(std)
        self.image_shape = (1 if color == "grayscale" else 3, image_size, image_size)
        self.train_root, self.test_root = self._layout(Path(self.data_dir))
        self.folder_classes = self._class_folders(self.train_root)
        self.classes = tuple(self.folder_classes)
        self.num_classes = len(self.folder_classes)
        self._files: dict[bool, list[tuple[Path, int]]] | None = None

    # ----------------------------------------------------------------------- the files
    @staticmethod
    def _layout(root: Path) -> tuple[Path, Path | None]:
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise DataError(
                f"--data-dir {root} {what}; give a folder with one sub-folder of images per class (PATH/cat/1.png)"
            )
        train = root / "train" if (root / "train").is_dir() else root
        test = root / "test" if (root / "test").is_dir() else None
        return train, test

    def _class_folders(self, root: Path) -> list[str]:
        names = sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in ("train", "test")
        )
        if not names:
            raise DataError(
                f"{root} holds no class folders; put each class's images in a sub-folder of its own "
                f"({root}/cat/1.png, {root}/dog/2.png)"
            )
        return names

    def _images_of(self, root: Path, classes: list[str]) -> list[tuple[Path, int]]:
        files = []
        for index, name in enumerate(classes):
            folder = root / name
            if not folder.is_dir():
                continue
            found = sorted(
                path
                for path in folder.rglob("*")
                if path.suffix.lower() in IMG_EXTENSIONS and path.is_file() and not path.name.startswith(".")
            )
            if not found and root == self.train_root:
                raise DataError(
                    f"{folder} holds no images ({', '.join(IMG_EXTENSIONS)}); add some, or remove the folder"
                )
            files += [(path, index) for path in found]
        return files

    def files(self) -> dict[bool, list[tuple[Path, int]]]:
        """The image files and labels of the training set (``True``) and the test set (``False``).

        Without a ``test`` folder, the test set is a seeded draw of ``test_size`` of all the files (a
        choice of files, made before any is read: a file that cannot be read never moves the split).
        """
        if self._files is None:
            train = self._images_of(self.train_root, self.folder_classes)
            if self.test_root is not None:
                extra = sorted(set(self._class_folders(self.test_root)) - set(self.folder_classes))
                if extra:
                    raise DataError(
                        f"{self.test_root} holds class folders that {self.train_root} does not: "
                        f"{', '.join(extra)}; every test class needs training images"
                    )
                test = self._images_of(self.test_root, self.folder_classes)
            else:
                n = len(train)
                count = (
                    self.test_size if isinstance(self.test_size, int) else max(1, round(n * self.test_size))
                )
                if count >= n:
                    raise ConfigError(
                        "test_size",
                        f"must leave training images: {self.train_root} holds {n}, got {self.test_size}",
                    )
                perm = torch.randperm(
                    n, generator=torch.Generator().manual_seed(self.split_seed + 1)
                ).tolist()
                test = [train[i] for i in sorted(perm[:count])]
                train = [train[i] for i in sorted(perm[count:])]
            self._files = {True: train, False: test}
        return self._files

    def source(self, train: bool, what: str = "images") -> str:
        if train or self.test_root is not None:
            return str(self.train_root if train else self.test_root)
        return f"the test images held out of {self.train_root}"

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        """Read the set's files (each once) into ``uint8`` images and their labels.

        Raises:
            DataError: naming the files that cannot be read (unless ``skip_bad_images``).
        """
        images, labels, bad = [], [], []
        for path, label in self.files()[train]:
            try:
                images.append(read_image(path, self.image_size, self.color))
                labels.append(label)
            except ImageError as err:
                bad.append(f"{path} ({err})")
        if bad and not self.skip_bad_images:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise DataError(
                f"{bad[0]}{more} cannot be read as images; fix or remove {'them' if more else 'it'}, "
                "or pass --skip-bad-images to train without them"
            )
        if bad:
            rank_zero_warn(f"skipped {len(bad)} image files that cannot be read: {'; '.join(bad)}")
        if not images:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8), torch.empty(
                (0,), dtype=torch.int64
            )
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def dataset_record(self) -> dict[str, Any]:
        """The base's record (class names are the folders' names), with the image size and colour."""
        return {**super().dataset_record(), "image_size": self.image_size, "color": self.color}
