"""TensorDataModule: data from any source gets the split, normalisation and both loaders; MNIST's file
checks stay with the MNIST family; the two loaders serve the same (image, label) pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor
from torchvision import datasets

from lit_mnist import MNISTDataModule, TensorDataModule
from lit_mnist.errors import DataError


def _pairs(loader: object) -> tuple[Tensor, Tensor]:
    batches = list(loader)  # type: ignore[call-overload]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _dataset_pairs(dataset: object) -> tuple[Tensor, Tensor]:
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[index, arg-type]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


class EvenOdd(MNISTDataModule):
    """A derived task: the parity of the digit."""

    num_classes = 2

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, digits = super().load(train)
        return images, digits % 2


def test_a_derived_task_gets_the_same_pairs_from_both_loaders(tiny_data: Path) -> None:
    served = {}
    for loader in ("memory", "torchvision"):
        dm = EvenOdd(str(tiny_data), val_size=100, batch_size=64, loader=loader, download=False)
        dm.prepare_data()
        dm.setup("fit")
        served[loader] = {
            "val": _pairs(dm.val_dataloader()),
            "test": _pairs(dm.test_dataloader()),
            # the training loader shuffles (each its own way): compare the dataset it draws from, in order
            "train": _dataset_pairs(dm.train_dataloader().dataset),
        }
    for split in ("train", "val", "test"):
        memory, torchvision = served["memory"][split], served["torchvision"][split]
        assert torch.equal(memory[0], torchvision[0]), split
        assert torch.equal(memory[1], torchvision[1]), split
        assert set(memory[1].tolist()) == {0, 1}  # the derived labels, not the digits
    # and they are the digits' parities
    raw = datasets.MNIST(str(tiny_data), train=False)
    assert torch.equal(served["torchvision"]["test"][1], raw.targets % 2)


class Arrays(TensorDataModule):
    """Images from numpy arrays: three channels, no normalisation given (computed)."""

    num_classes = 3
    image_shape = (3, 6, 5)

    def __init__(self, n_train: int = 60, n_test: int = 12, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        rng = np.random.default_rng(0)
        self.arrays = {
            True: (rng.integers(0, 256, (n_train, 3, 6, 5), dtype=np.uint8), np.arange(n_train) % 3),
            False: (rng.integers(0, 256, (n_test, 3, 6, 5), dtype=np.uint8), np.arange(n_test) % 3),
        }

    def load(self, train: bool) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return self.arrays[train]


def test_numpy_arrays_get_a_seeded_split_and_the_training_images_statistics() -> None:
    dm = Arrays(val_size=0.25, batch_size=7)
    dm.prepare_data()  # nothing to download: no files are asked for
    dm.setup("fit")
    assert [len(dm.split(s)[1]) for s in ("train", "val", "test")] == [45, 15, 12]
    train = dm.pixels("train").double() / 255
    expected_mean = train.mean(dim=(0, 2, 3))
    expected_std = train.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(torch.tensor(dm.mean, dtype=torch.float64), expected_mean)
    assert torch.allclose(torch.tensor(dm.std, dtype=torch.float64), expected_std)
    images, _ = dm.split("train")
    assert torch.allclose(images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(images.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    other = Arrays(val_size=0.25, seed=9)  # the run's seed does not move the split
    other.setup("fit")
    assert torch.equal(other.pixels("val"), dm.pixels("val"))
    record = dm.dataset_record()
    assert record["mean"] == list(dm.mean) and record["classes"] == ["0", "1", "2"]  # type: ignore[arg-type]
    assert record["image_shape"] == [3, 6, 5] and record["num_classes"] == 3
    # RGB through the torchvision loader: the same tensors, to the bit
    tv = Arrays(val_size=0.25, batch_size=7, loader="torchvision")
    tv.setup("fit")
    for split in ("val", "test"):
        a = _pairs(getattr(dm, f"{split}_dataloader")())
        b = _pairs(getattr(tv, f"{split}_dataloader")())
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_given_normalisation_is_used_for_test_only_setup() -> None:
    class Fixed(Arrays):
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    dm = Fixed()
    dm.setup("test")
    assert "train" not in dm._splits
    images, _ = dm.split("test")
    assert torch.allclose(images, (dm.pixels("test").float() / 255 - 0.5) / 0.25)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((4, 3, 6, 5), np.float32), np.zeros(4), r"gave torch.float32 images; give uint8"),
        (
            np.zeros((4, 1, 6, 5), np.uint8),
            np.zeros(4),
            r"gave images of shape \(1, 6, 5\) .*image_shape is \(3, 6, 5\)",
        ),
        (np.zeros((4, 3, 6, 5), np.uint8), np.zeros(3, np.int64), r"holds 4 images and .* 3 labels"),
        (np.zeros((4, 3, 6, 5), np.uint8), np.array([0, 1, 3, 2]), r"holds label 3 \(image 2, 1 such"),
        (np.zeros((0, 3, 6, 5), np.uint8), np.zeros(0, np.int64), r"the test set is empty"),
        ([1, 2], np.zeros(2, np.int64), r"gave images of type list"),
    ],
)
def test_what_load_returns_is_checked(images: object, labels: object, message: str) -> None:
    dm = Arrays()
    dm.arrays[False] = (images, labels)  # type: ignore[assignment]
    prefix = "" if "empty" in message else r"^Arrays\.load\(train=False\) "
    with pytest.raises(DataError, match=prefix + message):
        dm.setup("fit")


def test_a_base_without_load_says_what_to_implement() -> None:
    with pytest.raises(NotImplementedError, match="must implement load"):
        TensorDataModule().setup("fit")


class Bigger(MNISTDataModule):
    """MNIST's files, resized by load() to 3x32x32."""

    image_shape = (3, 32, 32)

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = super().load(train)
        images = torch.nn.functional.interpolate(images.float(), size=(32, 32)).round().to(torch.uint8)
        return images.expand(-1, 3, -1, -1), labels


class Unresized(MNISTDataModule):
    image_shape = (3, 32, 32)


def test_another_image_shape_is_not_damage_to_download_over(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted although the raw files are intact")

    monkeypatch.setattr(datasets.MNIST, "download", fail)
    dm = Bigger(str(tiny_data), val_size=100)
    dm.prepare_data()  # intact files: nothing is downloaded
    dm.setup("fit")
    assert dm.split("train")[0].shape[1:] == (3, 32, 32)
    wrong = Unresized(str(tiny_data), val_size=100)
    wrong.prepare_data()
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte gave images of shape \(1, 28, 28\).*set image_shape"
    ):
        wrong.setup("fit")


def test_damaged_files_are_still_found_by_the_mnist_family(tiny_data: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_data, tmp_path / "data")
    path = tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is damaged: truncated"):
        Bigger(str(tmp_path / "data")).check_integrity()
