"""The MNIST family as datamodules: MNIST, Fashion-MNIST and Kuzushiji-MNIST, from their raw IDX files.

:class:`MNISTDataModule` is a :class:`~lit_mnist.data.TensorDataModule` whose ``load`` reads the four
raw files. ``prepare_data`` is the only place that may touch the network (torchvision's
downloader), and only when the raw files are missing or damaged: each file's IDX structure is
checked against its size, and the official release's files against their published MD5s.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from lit_mnist.data import DATA_DIR_ENV, Loader, TensorDataModule, default_data_dir
from lit_mnist.errors import DataError

__all__ = ["DATAMODULES", "FashionMNISTDataModule", "KMNISTDataModule", "MNISTDataModule"]

_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


class MNISTDataModule(TensorDataModule):
    """MNIST as 55,000 train / 5,000 validation / 10,000 test images, normalised.

    A sibling dataset is a subclass that changes the class attributes below (see
    ``FashionMNISTDataModule``); nothing else needs to change. Only this family reads, checks and
    downloads MNIST's raw files; data from elsewhere is a :class:`TensorDataModule`.

    Args:
        data_dir: The ``root`` folder; the raw files live in ``<data_dir>/<DatasetName>/raw``.
            Defaults to ``$LIT_MNIST_DATA_DIR`` or ``./data``.
        download: Download the raw files with torchvision when they are missing or damaged;
            without it, a missing or damaged file stops the run with what to put where.
        val_size: Images of the official training set held out for validation: a count (5,000 by
            default, the usual 55,000 / 5,000 split) or a fraction in (0, 1).
        **others: The other arguments are :class:`~lit_mnist.data.TensorDataModule`'s, with its
            defaults (``batch_size``, ``num_workers``, ``split_seed``, ``loader``, ``seed``,
            ``steps_per_batch``, ``augment_*``, ``folds``, ``fold``). They are spelled out in the signature, which
            LightningCLI and the run config read; a test keeps them equal to the base's.
    """

    dataset_cls: type[datasets.MNIST] = datasets.MNIST
    #: Mean and standard deviation of the training images (after scaling to [0, 1]).
    mean: float | tuple[float, ...] | None = 0.1307
    std: float | tuple[float, ...] | None = 0.3081
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 28, 28)
    #: Height and width of the images in the raw files (the file format's, whatever ``image_shape`` says).
    file_image_hw: tuple[int, int] = (28, 28)
    #: Official number of images in the training and test sets.
    train_count: int = 60_000
    test_count: int = 10_000
    #: MD5 of each extracted raw file of the official release (None: only the IDX structure is checked).
    raw_md5: dict[str, str] | None = {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 5_000,
        split_seed: int = 42,
        loader: Loader = "memory",
        download: bool = True,
        seed: int = 0,
        steps_per_batch: int = 1,
        augment_degrees: float = 0.0,
        augment_translate: float = 0.0,
        augment_scale: float = 0.0,
        folds: int = 0,
        fold: int | None = None,
    ) -> None:
        data_dir = str(data_dir or default_data_dir())
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
        self.data_dir = data_dir
        self.download = download

    @property
    def class_names(self) -> list[str]:
        """torchvision's names of the classes (``"0 - zero"``, ...), else the class indices."""
        names = [str(c) for c in getattr(self.dataset_cls, "classes", None) or []]
        return names if len(names) == self.num_classes else super().class_names

    # ----------------------------------------------------------------- files and integrity
    @property
    def raw_folder(self) -> Path:
        """Where torchvision expects the four uncompressed raw files."""
        return Path(self.data_dir) / self.dataset_cls.__name__ / "raw"

    @property
    def raw_files(self) -> list[str]:
        """Names of the four raw files (images and labels of train and test)."""
        return [Path(url).name.removesuffix(".gz") for url, _ in self.dataset_cls.resources]

    def prepare_data(self) -> None:
        """Make sure the four raw files are present and intact, downloading only what is not.

        Files that are present and pass :meth:`check_integrity` are never touched and nothing goes
        to the network. Missing or corrupted files are downloaded with torchvision into a temporary
        folder beside them, checked, and only then moved into place with an atomic rename, so an
        interrupted download never leaves a half-written file that a later run would trust.

        Raises:
            DataError: saying which files are missing or corrupted, where they go, their MD5s.
        """
        folder = Path(self.data_dir)
        if folder.exists() and not folder.is_dir():
            raise DataError(f"--data-dir {folder} is a file, not a folder; pass a folder (it may be empty).")
        problems = self.find_problems()
        if not problems:
            return
        if not self.download:
            raise DataError(self._problem_message(problems, "downloading is off (--no-download)"))
        try:
            self._download_replacing(list(problems))
        except DataError:
            raise
        except OSError as err:
            if isinstance(err, PermissionError) or err.errno in (errno.EROFS, errno.EACCES, errno.ENOTDIR):
                raise DataError(
                    f"cannot write the dataset into {folder}: {err}. Pass a writable --data-dir."
                ) from None
            raise DataError(
                self._problem_message(problems, f"the download failed: {_first_line(err)}")
            ) from None
        except Exception as err:  # torchvision raises RuntimeError/URLError per mirror
            raise DataError(
                self._problem_message(problems, f"the download failed: {_first_line(err)}")
            ) from None
        self.check_integrity()

    def _download_replacing(self, names: list[str]) -> None:
        """Download all raw files into a temporary folder, check them, then move ``names`` into place."""
        root = Path(self.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            for train in (True, False):
                self.dataset_cls(str(staging), train=train, download=True)
            fresh = staging / self.dataset_cls.__name__ / "raw"
            for name in names:
                if (problem := self._file_problem(fresh / name)) is not None:
                    raise DataError(f"the downloaded {name} is damaged too ({problem}); try again later.")
            self.raw_folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                os.replace(fresh / name, self.raw_folder / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _problem_message(self, problems: dict[str, str], reason: str) -> str:
        md5 = self.raw_md5 or {}
        listing = "\n".join(
            f"  {name}  md5 {md5.get(name, '(not published)')}  ({problem})"
            for name, problem in problems.items()
        )
        return (
            f"{self.dataset_cls.__name__} raw files are missing or damaged in {self.raw_folder} and {reason}.\n"
            f"Put intact copies there, uncompressed (or pass --data-dir / set {DATA_DIR_ENV} to a folder "
            f"holding {self.dataset_cls.__name__}/raw):\n{listing}"
        )

    def find_problems(self) -> dict[str, str]:
        """Each raw file that is missing or damaged, with what is wrong with it."""
        problems = {}
        for name in self.raw_files:
            if (problem := self._file_problem(self.raw_folder / name)) is not None:
                problems[name] = problem
        return problems

    def check_integrity(self) -> None:
        """Check every raw file's IDX header against its size, and the official files' MD5s.

        torchvision verifies only the downloaded archives; a truncated or altered extracted file
        would otherwise be parsed silently. A file whose header claims the official number of
        images must also match the official MD5 (when :attr:`raw_md5` is set); smaller files with
        a valid structure (such as the tests' tiny datasets) pass on their structure alone.

        Raises:
            DataError: naming the bad file, what is wrong, and how to fix it.
        """
        if problems := self.find_problems():
            name, problem = next(iter(problems.items()))
            raise DataError(
                f"{self.raw_folder / name} is damaged: {problem}. Delete it and run again to download it anew, "
                "or copy an intact file there."
            )

    def _file_problem(self, path: Path) -> str | None:
        """What is wrong with one raw file, or None when it is fine."""
        if not path.is_file():
            return "missing"
        kind = "labels" if "labels" in path.name else "images"
        try:
            count = _check_idx(path, kind, self.file_image_hw)
        except ValueError as err:
            return str(err)
        official = self.train_count if path.name.startswith("train") else self.test_count
        expected = (self.raw_md5 or {}).get(path.name)
        if count == official and expected is not None and (actual := _md5(path)) != expected:
            return f"md5 {actual}, expected {expected}"
        return None

    def fingerprint(self) -> dict[str, Any] | None:
        """The four raw files' MD5s and item counts (``None`` while one is missing or damaged).

        ``{"digest": sha256 of the MD5s, "parts": {file name: {"digest": md5, "items": count}}}``. Each
        file is hashed once per process for a given size and modification time: the check of the official
        files' MD5s (:meth:`check_integrity`) and every checkpoint share the one hash.
        """
        if self.find_problems():
            return None
        parts: dict[str, Any] = {}
        for name in self.raw_files:
            path = self.raw_folder / name
            kind = "labels" if "labels" in name else "images"
            parts[name] = {"digest": _md5(path), "items": _check_idx(path, kind, self.file_image_hw)}
        lines = "".join(f"{name} {part['digest']}\n" for name, part in sorted(parts.items()))
        return {"digest": hashlib.sha256(lines.encode()).hexdigest(), "parts": parts}

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        """The ``uint8`` images ``(N, 1, 28, 28)`` and labels ``(N,)`` of the official training or test set.

        Override it to derive a new task from the same files (other labels, a subset of classes);
        both loaders serve whatever it returns, normalised by the base.
        """
        if problems := self.find_problems():
            raise DataError(self._problem_message(problems, "prepare_data() did not run"))
        images_file, labels_file = Path(self.source(train, "images")), Path(self.source(train, "labels"))
        h, w = self.file_image_hw
        # torchvision's readers fail on an IDX file of no items: that set is empty (setup says so)
        images = (
            read_image_file(str(images_file))
            if _check_idx(images_file, "images", self.file_image_hw)
            else torch.empty((0, h, w), dtype=torch.uint8)
        )
        labels = (
            read_label_file(str(labels_file))
            if _check_idx(labels_file, "labels", self.file_image_hw)
            else torch.empty((0,), dtype=torch.int64)
        )
        return images.unsqueeze(1), labels

    def source(self, train: bool, what: str = "images") -> str:
        """The raw file of a set's images or labels (for error messages)."""
        prefix = "train" if train else "t10k"
        name = next(n for n in self.raw_files if n.startswith(prefix) and what in n)
        return str(self.raw_folder / name)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando): 10 classes of clothing, same format and splits as MNIST."""

    dataset_cls = datasets.FashionMNIST
    mean = 0.2860
    std = 0.3530
    raw_md5 = None


class KMNISTDataModule(MNISTDataModule):
    """Kuzushiji-MNIST: 10 classes of cursive Japanese characters, same format and splits as MNIST."""

    dataset_cls = datasets.KMNIST
    mean = 0.1918
    std = 0.3483
    raw_md5 = None


DATAMODULES: dict[str, type[TensorDataModule]] = {
    "mnist": MNISTDataModule,
    "fashion-mnist": FashionMNISTDataModule,
    "kmnist": KMNISTDataModule,
}


def _md5(path: Path) -> str:
    """The file's MD5, computed once per process for a given size and modification time."""
    stat = path.stat()
    return _md5_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _md5_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_idx(path: Path, kind: str, image_hw: tuple[int, ...]) -> int:
    """Check an uncompressed IDX file's magic number and size; return the number of items.

    Raises:
        ValueError: a short description of what is wrong.
    """
    ndim = 3 if kind == "images" else 1
    header_size = 4 + 4 * ndim
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_size)
    if len(header) < header_size:
        raise ValueError(f"truncated: {size} bytes, no complete IDX header")
    magic, *dims = struct.unpack(f">{1 + ndim}I", header)
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(
            f"not an IDX {kind} file: magic number {magic:#010x}, expected {_IDX_MAGIC[kind]:#010x}"
        )
    if kind == "images" and tuple(dims[1:]) != tuple(image_hw):
        raise ValueError(f"holds {dims[1]}x{dims[2]} images, expected {image_hw[0]}x{image_hw[1]}")
    expected = header_size + math.prod(dims)
    if size != expected:
        raise ValueError(f"truncated or padded: {size} bytes, its header promises {expected}")
    return int(dims[0])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
