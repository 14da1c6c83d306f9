"""LightningDataModules for MNIST and its siblings: download, integrity, splits, normalisation.

``prepare_data`` is the only place that may touch the network (torchvision's downloader), and
only when the raw files are not already there. ``setup`` parses the raw IDX files, checks them,
and builds the seeded 55,000/5,000 train/val split of the official training set and the official
test set, so every process of a multi-device run holds the same split.
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
from typing import Any, Literal, get_args

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from lit_mnist.augment import RandomAffine
from lit_mnist.errors import ConfigError, DataError
from lit_mnist.loader import InMemoryBatchLoader

DATA_DIR_ENV = "LIT_MNIST_DATA_DIR"
Loader = Literal["memory", "torchvision"]
LOADERS: tuple[str, ...] = get_args(Loader)

_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}


def default_data_dir() -> str:
    """The data folder used when none is given: ``$LIT_MNIST_DATA_DIR``, else ``./data``."""
    return os.environ.get(DATA_DIR_ENV) or "data"


class MNISTDataModule(L.LightningDataModule):
    """MNIST as 55,000 train / 5,000 validation / 10,000 test images, normalised.

    A sibling dataset is a subclass that changes the class attributes below (see
    ``FashionMNISTDataModule``); nothing else needs to change.

    Args:
        data_dir: The ``root`` folder; the raw files live in ``<data_dir>/<DatasetName>/raw``.
            Defaults to ``$LIT_MNIST_DATA_DIR`` or ``./data``.
        batch_size: Samples per batch (per device under DDP).
        num_workers: DataLoader worker processes (``torchvision`` loader only).
        val_size: Images of the official training set held out for validation.
        split_seed: Seed of the train/validation split (fixed, independent of the run's seed).
        loader: ``"memory"``: each split held once as a normalised tensor on the training device,
            batches by shuffled index slices; ``"torchvision"``: the classic per-sample
            ``transforms`` + ``DataLoader`` path (for augmentation).
        download: Download the raw files with torchvision when they are missing.
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
    """

    dataset_cls: type[datasets.MNIST] = datasets.MNIST
    #: Mean and standard deviation of the training images (after scaling to [0, 1]).
    mean: float = 0.1307
    std: float = 0.3081
    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 28, 28)
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
        val_size: int = 5_000,
        split_seed: int = 42,
        loader: Loader = "memory",
        download: bool = True,
        seed: int = 0,
        steps_per_batch: int = 1,
        augment_degrees: float = 0.0,
        augment_translate: float = 0.0,
        augment_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {num_workers}")
        if val_size < 1:
            raise ConfigError("val_size", f"must be >= 1, got {val_size}")
        if steps_per_batch < 1:
            raise ConfigError("steps_per_batch", f"must be >= 1, got {steps_per_batch}")
        if loader not in LOADERS:
            raise ConfigError("loader", f"must be one of {', '.join(LOADERS)}; got {loader!r}")
        if steps_per_batch > 1 and loader != "memory":
            raise ConfigError(
                "steps_per_batch",
                f"must be 1 with --loader {loader} (step groups come from the in-memory loader); got {steps_per_batch}",
            )
        self.augment = RandomAffine(
            augment_degrees, augment_translate, augment_scale, fill=[-m / s for m, s in self.channel_stats()]
        )
        if self.augment.active and loader != "memory":
            raise ConfigError(
                "loader",
                f"must be memory for augmentation (--augment-*: on whole batches on the device); got {loader!r}",
            )
        data_dir = str(data_dir or default_data_dir())
        self.save_hyperparameters(ignore=["steps_per_batch"])  # as the module's: how a run steps, not data
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.split_seed = split_seed
        self.loader = loader
        self.download = download
        self.seed = seed
        self.steps_per_batch = steps_per_batch
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._datasets: dict[str, Any] = {}
        self._full_targets: dict[bool, Tensor] = {}  # labels as load() returned them, per set

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
            count = _check_idx(path, kind, self.image_shape[1:])
        except ValueError as err:
            return str(err)
        official = self.train_count if path.name.startswith("train") else self.test_count
        expected = (self.raw_md5 or {}).get(path.name)
        if count == official and expected is not None and (actual := _md5(path)) != expected:
            return f"md5 {actual}, expected {expected}"
        return None

    # ----------------------------------------------------------------------- splits
    def setup(self, stage: str | None = None) -> None:
        """Parse the raw files and build the splits needed for ``stage`` (once per process)."""
        if stage in (None, "fit", "validate") and "train" not in self._splits:
            images, targets = self.load(train=True)
            self._full_targets[True] = targets
            n = len(targets)
            val_size = self.val_size
            if val_size >= n:
                raise ConfigError("val_size", f"must be smaller than the {n} training images, got {val_size}")
            generator = torch.Generator().manual_seed(self.split_seed)
            perm = torch.randperm(n, generator=generator)
            self._split_indices = {"val": perm[:val_size], "train": perm[val_size:]}
            for split, idx in self._split_indices.items():
                self._splits[split] = (images[idx], targets[idx])
        if stage in (None, "test", "predict") and "test" not in self._splits:
            self._splits["test"] = self.load(train=False)
            self._full_targets[False] = self._splits["test"][1]

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        """Return the normalised images ``(N, C, H, W)`` (float32) and labels ``(N,)`` of one set.

        The training set (``train=True``) is split into train/val after this; ``train=False`` is the
        test set. Override it to derive a new task from the same files (other labels, a subset of
        classes): the in-memory loader (the default) serves whatever it returns.
        """
        if problems := self.find_problems():
            raise DataError(self._problem_message(problems, "prepare_data() did not run"))
        dataset = self.dataset_cls(self.data_dir, train=train, download=False)
        images = dataset.data.unsqueeze(1).float().div_(255).sub_(self.mean).div_(self.std)
        return images, dataset.targets.long()

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The normalised images and labels of ``"train"``, ``"val"`` or ``"test"`` (after ``setup``)."""
        return self._splits[name]

    # ------------------------------------------------------------------- dataloaders
    def train_dataloader(self) -> Any:
        loader = self._dataloader("train", shuffle=True)
        if self.steps_per_batch > 1 and loader.num_batches % self.steps_per_batch:
            raise ConfigError(
                "steps_per_batch",
                f"must divide the {loader.num_batches} training batches per epoch (per process), so that every "
                f"group holds as many steps and the steps Lightning counts stay those of one step per batch; "
                f"got {self.steps_per_batch} (lit_mnist.groups.group_size picks one)",
            )
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
            return DataLoader(
                self._torchvision_dataset(split),
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
            augment=self.augment if split == "train" and self.augment.active else None,
        )

    def channel_stats(self) -> list[tuple[float, float]]:
        """``(mean, std)`` of each channel of the normalised images (one channel for the MNIST family)."""
        return [(self.mean, self.std)] * self.image_shape[0]

    def transform(self) -> transforms.Compose:
        """The per-sample transform of the ``torchvision`` loader: ``ToTensor`` then ``Normalize``."""
        return transforms.Compose([transforms.ToTensor(), transforms.Normalize((self.mean,), (self.std,))])

    def _torchvision_dataset(self, split: str) -> Any:
        if split not in self._datasets:
            train = split != "test"
            dataset = self.dataset_cls(self.data_dir, train=train, download=False, transform=self.transform())
            dataset.targets = self._full_targets[train].cpu()  # the labels of load(), overridden or not
            self._datasets[split] = Subset(dataset, self._split_indices[split].tolist()) if train else dataset
        return self._datasets[split]


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


DATAMODULES: dict[str, type[MNISTDataModule]] = {
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
