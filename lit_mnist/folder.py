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

import functools
import hashlib
import os
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal, get_args

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from lit_mnist.data import Loader, TensorDataModule, default_data_dir
from lit_mnist.errors import ConfigError, DataError, ImageError
from lit_mnist.images import IMAGE_FORMATS, ImageSource, read_grayscale, read_rgb
from lit_mnist.ranges import check_count_or_fraction
from lit_mnist.runtime import printable

__all__ = [
    "COLORS",
    "Color",
    "ImageFolderDataModule",
    "image_extensions",
    "read_image",
]

Color = Literal["grayscale", "rgb"]
COLORS: tuple[str, ...] = get_args(Color)


def read_image(path: ImageSource, image_size: int, color: str = "grayscale") -> Tensor:
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
    is held out for it. Files are those with the extension of an image format ``predict`` reads
    (:func:`image_extensions`), searched recursively in each class folder; every other file (and a
    hidden one, or one outside the class folders) is named in a warning, one per reason, with a count.

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
            ``augment_*``, ``folds``, ``fold``), spelled out in the signature for LightningCLI and the
            run config; a test keeps them equal to the base's.
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
        folds: int = 0,
        fold: int | None = None,
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
            folds=folds,
            fold=fold,
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
        # each folder's files, before the split: what the fingerprint hashes
        self._listed: dict[str, tuple[Path, list[tuple[Path, int]]]] = {}
        self._sizes: dict[Path, int] = {}  # each image file's size, from the listing's stat
        self._fingerprint: dict[str, Any] | None = None

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
        """The class folders of ``root``, sorted: its sub-folders but hidden ones (and, in ``--data-dir``
        itself, ``train`` and ``test``)."""
        split_names = ("train", "test") if root == Path(self.data_dir) else ()
        names = sorted(
            entry.name
            for entry in os.scandir(root)
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in split_names
        )
        if not names:
            raise DataError(
                f"{root} holds no class folders; put each class's images in a sub-folder of its own "
                f"({root}/cat/1.png, {root}/dog/2.png)"
            )
        return names

    def _images_of(self, root: Path, classes: list[str]) -> list[tuple[Path, int]]:
        """The image files of ``root``'s class folders with their labels (sorted by path in each class);
        every other entry of ``root`` is named in a warning, one per reason (:func:`_warn_skipped`)."""
        files: list[tuple[Path, int]] = []
        skipped = _outside_classes(root, Path(self.data_dir))
        for index, name in enumerate(classes):
            folder = root / name
            if not folder.is_dir():
                continue
            found = _scan(folder, skipped)
            if not found and root == self.train_root:
                raise DataError(
                    f"{folder} holds no images ({', '.join(image_extensions())}); add some, or remove the folder"
                )
            files += [(path, index) for path in found]
            self._sizes.update(found)
        _warn_skipped(root, skipped)
        return files

    def files(self) -> dict[bool, list[tuple[Path, int]]]:
        """The image files and labels of the training set (``True``) and the test set (``False``).

        Without a ``test`` folder, the test set is a seeded draw of ``test_size`` of all the files (a
        choice of files, made before any is read: a file that cannot be read never moves the split).
        A file with an extension of no image format ``predict`` reads (:func:`image_extensions`), a hidden
        one, or one outside the class folders is not read: each kind is named in one warning with a count.
        """
        if self._files is None:
            train = self._images_of(self.train_root, self.folder_classes)
            self._listed = {"training images": (self.train_root, list(train))}
            if self.test_root is not None:
                extra = sorted(set(self._class_folders(self.test_root)) - set(self.folder_classes))
                if extra:
                    raise DataError(
                        f"{self.test_root} holds class folders that {self.train_root} does not: "
                        f"{', '.join(map(printable, extra))}; every test class needs training images"
                    )
                test = self._images_of(self.test_root, self.folder_classes)
                self._listed["test images"] = (self.test_root, list(test))
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

    def fingerprint(self) -> dict[str, Any]:
        """The image files' relative paths and sizes, hashed: what tells these files from others.

        ``{"digest": ..., "parts": {"training images": part, "test images": part}}`` (the second with a
        ``test`` folder only); a part is ``{"digest": sha256 of its sorted "class/file size" lines,
        "files": count, "bytes": total, "per_class": {class: count}}``. Made from the listing
        :meth:`files` makes (sizes from the same ``stat``): no file is read; made once, as that listing is.
        """
        self.files()
        if self._fingerprint is not None:
            return self._fingerprint
        parts: dict[str, Any] = {}
        for part, (root, files) in self._listed.items():
            lines = sorted(f"{path.relative_to(root).as_posix()}\t{self._sizes[path]}\n" for path, _ in files)
            per_class = dict.fromkeys(self.folder_classes, 0)
            for _, label in files:
                per_class[self.folder_classes[label]] += 1
            parts[part] = {
                "digest": hashlib.sha256("".join(lines).encode(errors="surrogateescape")).hexdigest(),
                "files": len(files),
                "bytes": sum(self._sizes[path] for path, _ in files),
                "per_class": per_class,
            }
        digests = "".join(f"{name} {part['digest']}\n" for name, part in parts.items())
        self._fingerprint = {"digest": hashlib.sha256(digests.encode()).hexdigest(), "parts": parts}
        return self._fingerprint

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
                bad.append(f"{printable(str(path))} ({err})")
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


# --------------------------------------------------------------------------- what is read, what is not
@functools.cache
def image_extensions() -> tuple[str, ...]:
    """The file name endings of the formats ``predict`` reads (:data:`lit_mnist.images.IMAGE_FORMATS`), as PIL
    registers them (``.png``, ``.jpg``, ``.jpeg``, ``.gif``, ``.webp``, ``.tif``, ``.bmp``, ``.ppm``, ...):
    a folder dataset reads every file ``predict`` would."""
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS))


def _scan(folder: Path, skipped: dict[str, list[Path]]) -> dict[Path, int]:
    """The image files under ``folder`` (recursively; hidden sub-folders are not entered) with their sizes,
    in sorted order; every other file is added to ``skipped`` under the reason it is not read."""
    found: dict[Path, int] = {}
    extensions = image_extensions()
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in dirnames:
            if name.startswith("."):
                skipped.setdefault(_HIDDEN, []).append(here / name)
            elif (here / name).is_symlink():  # os.walk does not enter it (a link may loop)
                skipped.setdefault("a link to a folder, which is not followed", []).append(here / name)
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            path = here / name
            if name.startswith("."):
                skipped.setdefault(_HIDDEN, []).append(path)
            elif (suffix := path.suffix.lower()) not in extensions:
                why = f"{suffix} is not" if suffix else "a file without an extension is not"
                skipped.setdefault(f"{why} an image format predict reads", []).append(path)
            else:
                try:
                    stat = path.stat()
                except OSError:  # a broken link, removed meanwhile
                    stat = None
                if stat is None or not S_ISREG(stat.st_mode):
                    skipped.setdefault("not a regular file (a broken link, a socket, ...)", []).append(path)
                else:
                    found[path] = stat.st_size
    return dict(sorted(found.items()))


_HIDDEN = "hidden (its name starts with a dot)"


def _outside_classes(root: Path, data_dir: Path) -> dict[str, list[Path]]:
    """What ``root`` (and ``data_dir`` around it) holds beside its class folders, by the reason it is not read."""
    skipped: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            skipped.setdefault(_HIDDEN, []).append(path)
        elif not entry.is_dir():
            skipped.setdefault("outside the class folders", []).append(path)
    if root == data_dir / "train":  # what lies beside it is not read
        for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
            if entry.name not in ("train", "test"):
                why = _HIDDEN if entry.name.startswith(".") else "beside train/ and test/, the folders read"
                skipped.setdefault(why, []).append(Path(entry.path))
    return skipped


#: The warnings :func:`_warn_skipped` gave in this process: a run builds more than one datamodule of the
#: same folder (the step-group plan, the finders), and each thing skipped is said once.
_SAID: set[str] = set()


def _warn_skipped(root: Path, skipped: dict[str, list[Path]]) -> None:
    """One warning per reason: ``skipped 3 files in ROOT: .txt is not an image format predict reads (a/x.txt, ...)``."""
    for why, paths in skipped.items():
        shown = [printable(str(p.relative_to(root) if p.is_relative_to(root) else p)) for p in paths[:3]]
        more = f", and {len(paths) - 3} more" if len(paths) > 3 else ""
        kinds = sorted({"folder" if p.is_dir() else "file" for p in paths})
        noun = " and ".join(kind if len(paths) == 1 else kind + "s" for kind in kinds)
        message = f"skipped {len(paths)} {noun} in {printable(str(root))}: {why} ({', '.join(shown)}{more})"
        if message not in _SAID:
            _SAID.add(message)
            rank_zero_warn(message)
