"""The datamodule: real IDX parsing, splits, normalisation, both loader paths, offline and integrity errors."""

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from lit_mnist.data import DATA_DIR_ENV, TensorDataModule, default_data_dir
from lit_mnist.errors import DataError
from lit_mnist.folder import ImageFolderDataModule
from lit_mnist.mnist import MNISTDataModule
from tests.conftest import write_idx, write_tiny_mnist

MEAN, STD = 0.1307, 0.3081


@pytest.fixture
def data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny dataset, for tests that damage it."""
    shutil.copytree(tiny_data, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point torchvision's MNIST mirrors at a closed local port: any download fails at once."""
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])


def test_splits_sizes_and_seeded(tiny_data: Path) -> None:
    dm = MNISTDataModule(str(tiny_data), val_size=100)
    dm.prepare_data()
    dm.setup()
    assert len(dm.split("train")[1]) == 500
    assert len(dm.split("val")[1]) == 100
    assert len(dm.split("test")[1]) == 200
    other = MNISTDataModule(str(tiny_data), val_size=100, seed=123)  # the run's seed does not move the split
    other.setup("fit")
    assert torch.equal(dm.split("val")[1], other.split("val")[1])
    assert torch.equal(dm.split("train")[0], other.split("train")[0])
    # train and val are disjoint and together the official training set
    raw = datasets.MNIST(str(tiny_data), train=True)
    together = torch.cat([dm.split("train")[1], dm.split("val")[1]])
    assert sorted(together.tolist()) == sorted(raw.targets.tolist())


def test_normalisation_matches_torchvision_transforms(tiny_data: Path) -> None:
    dm = MNISTDataModule(str(tiny_data), val_size=100)
    dm.setup("test")
    images, labels = dm.split("test")
    reference = datasets.MNIST(str(tiny_data), train=False, transform=dm.transform())
    for i in (0, 17, 199):
        x, y = reference[i]
        assert torch.equal(images[i], x)
        assert labels[i].item() == y
    raw = reference.data.float() / 255
    assert torch.allclose(images.squeeze(1), (raw - MEAN) / STD)


def test_both_loader_paths_give_the_same_inputs(tiny_data: Path) -> None:
    batches = {}
    for loader in ("memory", "torchvision"):
        dm = MNISTDataModule(str(tiny_data), val_size=100, batch_size=64, loader=loader)
        dm.setup()
        batches[loader] = {
            split: (torch.cat([x for x, _ in dl]), torch.cat([y for _, y in dl]))
            for split, dl in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()))
        }
    for split in ("val", "test"):
        assert torch.equal(batches["memory"][split][0], batches["torchvision"][split][0])
        assert torch.equal(batches["memory"][split][1], batches["torchvision"][split][1])


def test_memory_train_loader_covers_the_split_once(tiny_data: Path) -> None:
    dm = MNISTDataModule(str(tiny_data), val_size=100, batch_size=64)
    dm.setup("fit")
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert sorted(labels.tolist()) == sorted(dm.split("train")[1].tolist())


def test_data_dir_defaults_to_environment(monkeypatch: pytest.MonkeyPatch, tiny_data: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tiny_data))
    assert default_data_dir() == str(tiny_data)
    assert MNISTDataModule().data_dir == str(tiny_data)
    monkeypatch.delenv(DATA_DIR_ENV)
    assert MNISTDataModule().data_dir == "data"


def test_present_files_never_touch_the_network(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted although the raw files are present")

    monkeypatch.setattr(datasets.MNIST, "download", fail)
    MNISTDataModule(str(tiny_data), val_size=100).prepare_data()


def test_offline_download_failure_lists_files_and_md5s(tmp_path: Path, no_network: None) -> None:
    dm = MNISTDataModule(str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "the download failed" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    for name, md5 in MNISTDataModule.raw_md5.items():  # type: ignore[union-attr]
        assert f"{name}  md5 {md5}" in message
    assert DATA_DIR_ENV in message


def test_no_download_lists_only_missing_files(data_copy: Path) -> None:
    (data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="downloading is off") as info:
        MNISTDataModule(str(data_copy), download=False).prepare_data()
    assert "t10k-labels-idx1-ubyte  md5 27ae3e4e09519cfbb04c329615203637  (missing)" in str(info.value)
    assert "train-images-idx3-ubyte" not in str(info.value)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        MNISTDataModule(str(path)).prepare_data()


def test_truncated_raw_file_is_detected(data_copy: Path) -> None:
    path = data_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is damaged: truncated or padded"):
        MNISTDataModule(str(data_copy)).check_integrity()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte  md5 6bbc\w+  \(truncated or padded"):
        MNISTDataModule(str(data_copy), download=False).prepare_data()


def test_bad_idx_header_is_detected(data_copy: Path) -> None:
    path = data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 0x03  # images magic in a labels file
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is damaged: not an IDX labels file"):
        MNISTDataModule(str(data_copy)).check_integrity()


def test_official_sized_file_must_match_the_published_md5(data_copy: Path) -> None:
    # A test-label file with the official 10,000 entries but not the official bytes (same size, other bytes).
    labels = np.arange(10_000, dtype=np.uint8) % 10
    write_idx(data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is damaged: md5 \w+, expected 27ae3e4e"):
        MNISTDataModule(str(data_copy)).check_integrity()
    with pytest.raises(DataError, match="downloading is off"):
        MNISTDataModule(str(data_copy), download=False).prepare_data()


def test_val_size_must_leave_training_images(tiny_data: Path) -> None:
    dm = MNISTDataModule(str(tiny_data), val_size=600)
    with pytest.raises(ValueError, match="val_size must be smaller than the 600 training images, got 600"):
        dm.setup("fit")


def test_sibling_dataset_is_a_few_class_attributes(tmp_path: Path) -> None:
    from lit_mnist.mnist import FashionMNISTDataModule

    write_tiny_mnist(tmp_path, folder="FashionMNIST")
    dm = FashionMNISTDataModule(str(tmp_path), val_size=100)
    dm.prepare_data()
    dm.setup("test")
    images, _ = dm.split("test")
    raw = datasets.FashionMNIST(str(tmp_path), train=False).data.float() / 255
    assert torch.allclose(images.squeeze(1), (raw - 0.2860) / 0.3530)


@pytest.mark.slow
def test_real_mnist_passes_the_md5_check(real_data_dir: Path) -> None:
    dm = MNISTDataModule(str(real_data_dir), download=False)
    dm.prepare_data()
    dm.setup()
    assert [len(dm.split(s)[1]) for s in ("train", "val", "test")] == [55_000, 5_000, 10_000]
    images, _ = dm.split("train")
    assert abs(images.mean().item()) < 0.01
    assert abs(images.std().item() - 1) < 0.01


@pytest.mark.parametrize(
    ("cls", "own", "defaults"),
    [
        (MNISTDataModule, {"data_dir", "download"}, {"val_size": 5_000}),
        (ImageFolderDataModule, {"data_dir", "image_size", "color", "test_size", "skip_bad_images", "mean", "std"}, {}),
    ],
)  # fmt: skip
def test_a_datamodule_passes_the_bases_arguments_through_unchanged(
    cls: type, own: set[str], defaults: dict[str, object]
) -> None:
    """The subclasses spell the base's arguments out (LightningCLI and the run config read the signature):
    the same names in the same order, with the same types and defaults, but for the defaults they change."""
    base = inspect.signature(TensorDataModule.__init__).parameters
    passed = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name not in own}
    assert list(passed) == list(base)
    for name, param in passed.items():
        assert param.annotation == base[name].annotation, name
        assert param.kind == base[name].kind, name
        assert param.default == defaults.get(name, base[name].default), name
    assert all(base[name].default != value for name, value in defaults.items())  # a real change
