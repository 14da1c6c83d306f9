"""Downloading through torchvision from a local HTTP mirror: repair, atomic replacement, failures."""

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from torchvision import datasets

from lit_mnist.errors import DataError
from lit_mnist.mnist import MNISTDataModule

NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve the tiny dataset's files as .gz archives on 127.0.0.1, and point torchvision at it."""
    served = tmp_path / "mirror"
    served.mkdir()
    resources = []
    for name in NAMES:
        data = gzip.compress((tiny_data / "MNIST" / "raw" / name).read_bytes(), mtime=0)
        (served / f"{name}.gz").write_bytes(data)
        resources.append((f"{name}.gz", hashlib.md5(data).hexdigest()))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    yield served
    server.shutdown()
    server.server_close()


def test_missing_files_are_downloaded(mirror: Path, tiny_data: Path, tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path / "data"), val_size=100)
    dm.prepare_data()
    for name in NAMES:
        assert (tmp_path / "data" / "MNIST" / "raw" / name).read_bytes() == (
            tiny_data / "MNIST" / "raw" / name
        ).read_bytes()
    assert not list((tmp_path / "data").glob(".download-*"))  # the staging folder is gone
    dm.setup("test")
    assert len(dm.split("test")[1]) == 200


def test_a_corrupted_file_is_downloaded_anew(mirror: Path, tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    damaged = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    untouched = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    stamp = untouched.stat().st_mtime_ns
    MNISTDataModule(str(data), val_size=100).prepare_data()
    assert damaged.read_bytes() == (tiny_data / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    assert untouched.stat().st_mtime_ns == stamp  # intact files are not rewritten


def test_an_interrupted_download_leaves_nothing_half_written(mirror: Path, tmp_path: Path) -> None:
    archive = mirror / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])  # the connection "drops"
    data = tmp_path / "data"
    with pytest.raises(DataError, match="the download failed") as info:
        MNISTDataModule(str(data)).prepare_data()
    assert "train-images-idx3-ubyte  md5" in str(info.value)
    raw = data / "MNIST" / "raw"
    assert not raw.exists() or not any(raw.iterdir())  # no partial file where a later run would trust it
    assert not list(data.glob(".download-*"))


def test_data_dir_inside_a_file_is_a_clear_error(tmp_path: Path, mirror: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write the dataset into"):
        MNISTDataModule(str(blocker / "data")).prepare_data()
