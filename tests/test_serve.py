"""``lit-mnist serve``: the real server (a subprocess on a free loopback port) answering real HTTP requests.

A model trained once on the tiny IDX dataset serves the fast tests: uploads are classified as ``predict``
classifies them, the JSON and pixel forms agree with the upload, 50 concurrent clients are all answered in
batches, and every bad input gets a 4xx while the server keeps answering. The other kinds of model training
writes are served too, each by a server of its own: a CNN on a folder of RGB images with named classes at
another image size, and the averaged weights of an EMA and of an SWA run. Start-up refusals are checked
without a server. The ``slow`` test serves a model trained on the real MNIST and compares real test images.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from lit_mnist.checkpoints import load_checkpoint
from lit_mnist.config import RunConfig
from lit_mnist.inference import dataset_info, predict_files, resolve_dataset
from lit_mnist.recipes import recipe_path
from lit_mnist.run import train
from tests.conftest import RunningServer, make_digits, shrunk_config, write_tiny_mnist

pytest.importorskip("litserve", reason="serve needs the serve extra: pip install -e '.[serve]'")

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve.py"


# --------------------------------------------------------------------------- HTTP helpers
def post(url: str, body: bytes, content_type: str | None) -> tuple[int, dict[str, Any]]:
    """POST ``body``; the status and the JSON answer (a 4xx's too)."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url + "/predict", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(
    data: bytes, field: str = "image", filename: str = "digit.png", **fields: str
) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field (and text fields), as a browser or ``curl -F`` sends it."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(url: str, data: bytes, **fields: str) -> tuple[int, dict[str, Any]]:
    return post(url, *multipart(data, **fields))


def post_json(url: str, payload: Any) -> tuple[int, dict[str, Any]]:
    return post(url, json.dumps(payload).encode(), "application/json")


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` with almost no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def serve_command(model: Path, *flags: str) -> Any:
    return lambda port: [sys.executable, SERVE, model, "--port", port, "--accelerator", "cpu", *flags]


# --------------------------------------------------------------------------- a model and its server
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained for one epoch on the tiny IDX dataset: its last.ckpt."""
    root = tmp_path_factory.mktemp("serve")
    data = write_tiny_mnist(root / "data")
    result = train(shrunk_config(data, root / "logs", max_epochs=1))
    assert result.last_checkpoint is not None
    return Path(result.last_checkpoint)


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``serve.py`` on the tiny model with batching (up to 16 requests, waiting 20 ms): its base URL."""
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    command = serve_command(tiny_model, "--max-batch-size", "16", "--batch-timeout", "0.02")
    with RunningServer(command, "/health", log, timeout=120) as url:
        yield url


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twelve PNG files of the tiny dataset's test digits."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = make_digits(12, seed=1)
    files = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        files.append(folder / f"{i:02d}_{label}.png")
        files[-1].write_bytes(png(image))
    return files


def offline(checkpoint: Path, files: list[Path]) -> list[Any]:
    """``predict``'s classes and probabilities of the files, through the library predict.py calls."""
    ckpt = load_checkpoint(checkpoint)
    info = dataset_info(ckpt, resolve_dataset(None, ckpt)[0])
    return predict_files(ckpt.model, files, info, accelerator="cpu")


# --------------------------------------------------------------------------- answers
def test_uploads_are_classified_as_predict_classifies_them(
    server: str, tiny_model: Path, digit_files: list[Path]
) -> None:
    expected = offline(tiny_model, digit_files)
    sha = get_json(server + "/info")["model"]["sha256"]
    for file, want in zip(digit_files, expected, strict=True):
        status, answer = upload(server, file.read_bytes(), filename=file.name)
        assert status == 200, answer
        assert answer["class_index"] == want.label, file.name
        assert answer["class_name"] == want.class_name
        assert list(answer["probabilities"].values()) == pytest.approx(want.probabilities, abs=1e-5)
        assert answer["model"] == sha[:12]


def test_base64_and_pixels_give_the_upload_s_answer(server: str, digit_files: list[Path]) -> None:
    for file in digit_files[:4]:
        data = file.read_bytes()
        _, by_upload = upload(server, data)
        status, by_base64 = post_json(server, {"image": base64.b64encode(data).decode()})
        assert status == 200, by_base64
        data_url = "data:image/png;base64," + base64.b64encode(data).decode()
        _, by_data_url = post_json(server, {"image": data_url})
        pixels = np.asarray(Image.open(file)).tolist()
        status, by_pixels = post_json(server, {"pixels": pixels})
        assert status == 200, by_pixels
        for other in (by_base64, by_data_url, by_pixels):
            assert other["class_index"] == by_upload["class_index"]
            assert list(other["probabilities"].values()) == pytest.approx(
                list(by_upload["probabilities"].values()), abs=1e-6
            )


def test_a_json_body_sent_as_curl_d_sends_it_is_read_as_json(server: str, digit_files: list[Path]) -> None:
    pixels = np.asarray(Image.open(digit_files[0])).tolist()
    body = json.dumps({"pixels": pixels}).encode()
    status, answer = post(server, body, "application/x-www-form-urlencoded")
    assert status == 200, answer
    assert answer["class_index"] == upload(server, digit_files[0].read_bytes())[1]["class_index"]


def test_info_describes_the_model_and_health_answers(server: str, tiny_model: Path) -> None:
    import hashlib

    import lit_mnist

    info = get_json(server + "/info")
    model = info["model"]
    assert model["dataset"] == "mnist"
    assert len(model["classes"]) == 10
    assert model["input_shape"] == [1, 28, 28]
    assert model["mean"] == pytest.approx(0.1307) and model["std"] == pytest.approx(0.3081)
    assert model["source"] == str(tiny_model)
    assert model["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert info["lit_mnist"] == lit_mnist.__version__
    assert info["server"]["max_batch_size"] == 16
    with urllib.request.urlopen(server + "/health", timeout=10) as response:
        assert response.status == 200 and response.read() == b"ok"


def test_the_page_is_served_from_the_package(server: str) -> None:
    with urllib.request.urlopen(server + "/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["content-type"].startswith("text/html")
    assert page.count("<canvas") == 1 and 'id="prediction"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: everything from this server
    for asset in ("static/app.js", "static/app.css"):  # relative: the page works behind a proxy's prefix
        assert f'"{asset}"' in page
        with urllib.request.urlopen(f"{server}/{asset}", timeout=10) as response:
            text = response.read().decode()
            assert "http://" not in text and "https://" not in text


def test_fifty_concurrent_clients_are_all_answered_in_batches(server: str, digit_files: list[Path]) -> None:
    before = get_json(server + "/info")["stats"]
    bodies = [multipart(f.read_bytes()) for f in digit_files]
    expected = [upload(server, f.read_bytes())[1]["class_index"] for f in digit_files]
    failures: list[str] = []

    def client(k: int) -> None:
        for i in range(20):
            j = (k + i) % len(bodies)
            status, answer = post(server, *bodies[j])
            if status != 200 or answer["class_index"] != expected[j]:
                failures.append(f"client {k} request {i}: {status} {answer}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:3]
    after = get_json(server + "/info")["stats"]
    assert after["requests"] - before["requests"] == 50 * 20 + len(digit_files)
    assert after["largest_batch"] > 1
    assert after["batches"] - before["batches"] < 50 * 20  # batched: fewer forward passes than requests


# --------------------------------------------------------------------------- bad input
def bad_requests(good: bytes) -> dict[str, tuple[bytes, str | None, int]]:
    """Name -> (body, Content-Type, the status it must get)."""
    text = multipart(b"this is not an image\n", filename="notes.txt")
    return {
        "not an image": (*text, 400),
        "an empty body": (b"", None, 400),
        "an empty JSON body": (b"", "application/json", 400),
        "an empty file": (*multipart(b""), 400),
        "a truncated PNG": (*multipart(good[: len(good) // 2]), 400),
        "a 20000 x 20000 PNG": (*multipart(png_header_only(20_000, 20_000)), 400),
        "a 50 MB upload": (*multipart(os.urandom(1024) * 50 * 1024), 413),
        "not JSON": (b'{"pixels": [[1, 2', "application/json", 400),
        "a JSON list": (b"[1, 2, 3]", "application/json", 400),
        "no image in the JSON": (b'{"picture": "abc"}', "application/json", 400),
        "both forms": (json.dumps({"image": "aGk=", "pixels": [[0]]}).encode(), "application/json", 400),
        "base64 that is not": (b'{"image": "not base64!"}', "application/json", 400),
        "an image that is a number": (b'{"image": 5}', "application/json", 400),
        "pixels of the wrong shape": (b'{"pixels": [[1, 2], [3, 4]]}', "application/json", 400),
        "pixels of strings": (json.dumps({"pixels": [["a"] * 28] * 28}).encode(), "application/json", 400),
        "pixels out of range": (json.dumps({"pixels": [[300] * 28] * 28}).encode(), "application/json", 400),
        "ragged pixels": (
            json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 5]}).encode(),
            "application/json",
            400,
        ),
        "a form without the image": (*multipart(good, field="file"), 400),
        "an unknown fit": (*multipart(good, fit="stretch"), 400),
        "a broken multipart body": (b"--x\r\nnonsense", "multipart/form-data; boundary=x", 400),
    }


def test_each_bad_input_gets_a_4xx_and_the_next_request_is_answered(
    server: str, digit_files: list[Path]
) -> None:
    good = digit_files[0].read_bytes()
    _, expected = upload(server, good)
    for name, (body, content_type, want) in bad_requests(good).items():
        status, answer = post(server, body, content_type)
        assert status == want, f"{name}: {status} {answer}"
        assert isinstance(answer["detail"], str) and "\n" not in answer["detail"], name
        status, again = upload(server, good)
        assert status == 200 and again["class_index"] == expected["class_index"], f"after {name}: {again}"


def test_the_bad_inputs_name_what_is_wrong(server: str, digit_files: list[Path]) -> None:
    good = digit_files[0].read_bytes()
    details = {
        name: post(server, body, ctype)[1]["detail"] for name, (body, ctype, _) in bad_requests(good).items()
    }
    assert "not an image" in details["not an image"]
    assert "truncated" in details["a truncated PNG"]
    assert (
        "pixels" in details["a 20000 x 20000 PNG"] and "decompression bomb" in details["a 20000 x 20000 PNG"]
    )
    assert "limit" in details["a 50 MB upload"]
    assert (
        "28 x 28" in details["pixels of the wrong shape"] and "2 x 2" in details["pixels of the wrong shape"]
    )
    assert "empty" in details["an empty body"] and "multipart" in details["an empty body"]
    assert "base64" in details["base64 that is not"]
    assert "0 to 255" in details["pixels out of range"]


def test_a_bad_request_in_a_batch_does_not_fail_the_others(server: str, digit_files: list[Path]) -> None:
    good = digit_files[1].read_bytes()
    _, expected = upload(server, good)
    results: list[tuple[str, int]] = []
    bad = multipart(b"not an image")

    def client(kind: str) -> None:
        for _ in range(5):
            status, answer = post(server, *(bad if kind == "bad" else multipart(good)))
            right = kind == "bad" or answer["class_index"] == expected["class_index"]
            results.append((kind, status if right else -1))

    threads = [threading.Thread(target=client, args=("bad" if k % 2 else "good",)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(set(results)) == [("bad", 400), ("good", 200)]


def test_the_page_s_drawing_options_are_checked_and_used(server: str, digit_files: list[Path]) -> None:
    """``fit`` and ``invert`` beside the image set predict's options for that request only."""
    data = digit_files[2].read_bytes()
    status, framed = upload(server, data)
    assert status == 200
    status, inverted = upload(server, data, invert="yes")
    assert status == 200 and inverted["probabilities"] != framed["probabilities"]
    status, answer = upload(server, data, invert="sideways")
    assert status == 400 and "invert must be one of auto, yes, no" in answer["detail"]


# --------------------------------------------------------------------------- other models
def assert_served_as_predicted(url: str, checkpoint: Path, files: list[Path]) -> list[dict[str, Any]]:
    """Each file uploaded to ``url`` gets ``predict``'s class and probabilities, named by its classes; the answers."""
    ckpt = load_checkpoint(checkpoint)
    names = dataset_info(ckpt, resolve_dataset(None, ckpt)[0]).class_names
    expected = offline(checkpoint, files)
    answers = []
    for file, want in zip(files, expected, strict=True):
        status, answer = upload(url, file.read_bytes(), filename=file.name)
        assert status == 200, f"{file.name}: {answer}"
        assert (answer["class_index"], answer["class_name"]) == (want.label, want.class_name), file.name
        assert list(answer["probabilities"]) == names
        assert list(answer["probabilities"].values()) == pytest.approx(want.probabilities, abs=1e-5)
        answers.append(answer)
    return answers


SHAPES = ("circle", "square")


def shape_picture(
    kind: str, rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB"
) -> Image.Image:
    """A filled circle or square of a random colour on a random background, ``size`` (width, height)."""
    background, ink = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
    image = Image.new("RGB", size, background)
    width, height = size
    side = int(min(size) * rng.uniform(0.5, 0.8))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    box = (left, top, left + side, top + side)
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse(box, fill=ink)
    else:
        draw.rectangle(box, fill=ink)
    return image.convert(mode)


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN trained for one epoch on 48 RGB PNGs of circles and squares (class folders), at 16 x 16."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(3)
    for kind in SHAPES:
        (root / "data" / kind).mkdir(parents=True)
        for i in range(24):
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
            shape_picture(kind, rng, size).save(root / "data" / kind / f"{i:03d}.png")
    config = replace(
        shrunk_config(root / "data", root / "logs", max_epochs=1),
        dataset="folder", color="rgb", image_size=16, model="cnn", val_size=8, test_size=8, batch_size=8,
        log_every_n_steps=1,
    )  # fmt: skip
    result = train(config)
    assert result.last_checkpoint is not None
    return Path(result.last_checkpoint)


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Pictures of circles and squares at sizes other than 16 x 16: RGB, grayscale and RGBA PNGs, a JPEG."""
    folder = tmp_path_factory.mktemp("shape_files")
    rng = np.random.default_rng(11)
    files = []
    for i, (size, mode, suffix) in enumerate(
        [((37, 29), "RGB", "png"), ((45, 45), "RGB", "png"), ((23, 31), "L", "png"), ((50, 40), "RGBA", "png"),
         ((33, 33), "RGB", "jpg"), ((64, 48), "RGB", "png")]
    ):  # fmt: skip
        kind = SHAPES[i % 2]
        files.append(folder / f"{i:02d}_{kind}_{mode}.{suffix}")
        shape_picture(kind, rng, size, mode).save(files[-1])
    return files


def test_a_folder_rgb_cnn_answers_as_predict_and_describes_its_classes_and_size(
    folder_model: Path, shape_files: list[Path], tmp_path: Path
) -> None:
    with RunningServer(serve_command(folder_model), "/health", tmp_path / "log", timeout=120) as url:
        answers = assert_served_as_predicted(url, folder_model, shape_files)
        model = get_json(url + "/info")["model"]
        # pixels at the model's own size, height x width x channels, read as the same PNG is
        square = np.asarray(shape_picture("square", np.random.default_rng(5), (16, 16)))
        _, by_upload = upload(url, png(square))
        status, by_pixels = post_json(url, {"pixels": square.tolist()})
        status_28, wrong = post_json(url, {"pixels": [[0] * 28] * 28})
    assert {a["class_name"] for a in answers} <= set(SHAPES)
    assert model["dataset"] == "folder" and model["classes"] == list(SHAPES)
    assert model["input_shape"] == [3, 16, 16] and model["color"] == "rgb" and model["network"] == "cnn"
    assert len(model["mean"]) == 3 and len(model["std"]) == 3 and "per channel" in model["normalisation"]
    assert status == 200 and by_pixels["probabilities"] == pytest.approx(by_upload["probabilities"], abs=1e-6)
    assert status_28 == 400 and "16 x 16 (or 16 x 16 x 3)" in wrong["detail"] and "28 x 28" in wrong["detail"]


@pytest.fixture(scope="module")
def ema_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tested checkpoint of a one-epoch MLP run with ``--ema 0.99``: the average in its state_dict."""
    logs = tmp_path_factory.mktemp("ema") / "logs"
    result = train(replace(shrunk_config(tiny_data, logs, max_epochs=1), ema=0.99))
    assert result.best_checkpoint is not None
    return Path(result.best_checkpoint)


@pytest.fixture(scope="module")
def swa_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The swa.ckpt of an MLP run averaging two epochs (``--swa-lr 0.01 --swa-epoch-start 1``, 3 epochs)."""
    logs = tmp_path_factory.mktemp("swa") / "logs"
    config = replace(
        shrunk_config(tiny_data, logs, max_epochs=3),
        swa_lr=0.01,
        swa_epoch_start=1,
        limit_train_batches=4,
        log_every_n_steps=1,
    )
    result = train(config)
    assert result.best_checkpoint is not None and Path(result.best_checkpoint).name == "swa.ckpt"
    return Path(result.best_checkpoint)


def probabilities_of(answers: list[dict[str, Any]]) -> np.ndarray:
    return np.array([list(a["probabilities"].values()) for a in answers])


def test_an_ema_checkpoint_is_served_with_its_averaged_weights(
    ema_model: Path, digit_files: list[Path], tmp_path: Path
) -> None:
    with RunningServer(serve_command(ema_model), "/health", tmp_path / "log", timeout=120) as url:
        answers = assert_served_as_predicted(url, ema_model, digit_files)
    # the raw weights the average was taken from answer otherwise: the server answers with the average
    ckpt = load_checkpoint(ema_model)
    raw = torch.load(ema_model, map_location="cpu", weights_only=True)["current_model_state"]
    ckpt.model.load_state_dict(raw)
    info = dataset_info(ckpt, resolve_dataset(None, ckpt)[0])
    by_raw = np.array(
        [p.probabilities for p in predict_files(ckpt.model, digit_files, info, accelerator="cpu")]
    )
    assert np.abs(probabilities_of(answers) - by_raw).max() > 1e-3


def test_an_swa_checkpoint_is_served_with_its_averaged_weights(
    swa_model: Path, digit_files: list[Path], tmp_path: Path
) -> None:
    with RunningServer(serve_command(swa_model), "/health", tmp_path / "log", timeout=120) as url:
        answers = assert_served_as_predicted(url, swa_model, digit_files)
        assert get_json(url + "/info")["model"]["source"] == str(swa_model)
    last = swa_model.with_name("last.ckpt")  # the last epoch's weights, not averaged
    by_last = np.array([p.probabilities for p in offline(last, digit_files)])
    assert np.abs(probabilities_of(answers) - by_last).max() > 1e-3


# --------------------------------------------------------------------------- start-up refusals
def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from lit_mnist.cli.serve import main

    with pytest.raises(SystemExit) as exit_info:
        main(args, prog="lit-mnist serve")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_file_that_is_not_a_checkpoint_is_refused_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.ckpt").write_text("hello")
    assert "is not a readable lit_mnist checkpoint" in refused([str(tmp_path / "notes.ckpt")], capsys)
    assert "no such file" in refused([str(tmp_path / "missing.ckpt")], capsys)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    assert "not a Lightning checkpoint" in refused([str(tmp_path / "other.ckpt")], capsys)


def test_a_nan_checkpoint_is_refused_at_start_up(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = torch.load(tiny_model, map_location="cpu", weights_only=True)
    first = next(iter(raw["state_dict"]))
    raw["state_dict"][first] = torch.full_like(raw["state_dict"][first], float("nan"))
    torch.save(raw, tmp_path / "nan.ckpt")
    assert "NaN or infinite weights" in refused([str(tmp_path / "nan.ckpt")], capsys)


def test_an_onnx_file_without_its_json_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    assert "model.onnx.json beside it" in refused([str(tmp_path / "model.onnx")], capsys)


def test_bad_flags_are_one_line_exit_2(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--port must be from 1024 to 65535" in refused([str(tiny_model), "--port", "80"], capsys)
    assert "--host must be one of 127.0.0.1, 0.0.0.0, ::" in refused(
        [str(tiny_model), "--host", "example.com"], capsys
    )
    assert "--workers must be >= 1" in refused([str(tiny_model), "--workers", "0"], capsys)
    assert "--max-batch-size must be >= 1" in refused([str(tiny_model), "--max-batch-size", "0"], capsys)


def test_the_command_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("hello")
    done = subprocess.run(
        [sys.executable, SERVE, tmp_path / "notes.ckpt"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("serve.py: error: ")


# --------------------------------------------------------------------------- ONNX
def test_the_onnx_export_answers_as_the_checkpoint(
    tiny_model: Path, digit_files: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lit_mnist.cli.export import main as export_main

    onnx = tmp_path / "model.onnx"
    assert export_main(["--ckpt-path", str(tiny_model), "--output", str(onnx)]) == 0
    expected = offline(tiny_model, digit_files)
    with RunningServer(
        serve_command(onnx, "--max-batch-size", "8"), "/health", tmp_path / "log", timeout=120
    ) as url:
        assert get_json(url + "/info")["model"]["format"] == "onnx"
        for file, want in zip(digit_files, expected, strict=True):
            status, answer = upload(url, file.read_bytes())
            assert status == 200 and answer["class_index"] == want.label
            assert list(answer["probabilities"].values()) == pytest.approx(want.probabilities, abs=1e-4)


# --------------------------------------------------------------------------- the real MNIST
@cache
def real_mnist_model(data_dir: str, log_dir: str) -> Path:
    """The cnn-fast recipe (one epoch) trained on the real MNIST, once per test process: its last.ckpt."""
    settings = yaml.safe_load(recipe_path("cnn-fast").read_text())
    config = RunConfig(**{
        **settings, "data_dir": data_dir, "log_dir": log_dir, "accelerator": "cpu", "devices": 1,
        "progress_bar": False,
    })  # fmt: skip
    result = train(config)
    assert result.last_checkpoint is not None
    return Path(result.last_checkpoint)


@pytest.fixture
def real_model(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_mnist_model(str(real_data_dir), str(tmp_path_factory.getbasetemp() / "real_mnist_logs"))


def real_test_pngs(data_dir: Path, folder: Path, count: int) -> list[Path]:
    """The first ``count`` real MNIST test images, written as PNG files."""
    from lit_mnist.mnist import MNISTDataModule

    images, _ = MNISTDataModule(str(data_dir)).load(train=False)
    files = []
    for i in range(count):
        files.append(folder / f"test_{i:03d}.png")
        Image.fromarray(images[i].reshape(28, 28).numpy()).save(files[-1])
    return files


@pytest.mark.slow
def test_real_mnist_test_images_are_classified_as_predict_classifies_them(
    real_model: Path, real_data_dir: Path, tmp_path: Path
) -> None:
    files = real_test_pngs(real_data_dir, tmp_path, 100)
    expected = offline(real_model, files)
    with RunningServer(serve_command(real_model), "/health", tmp_path / "log", timeout=120) as url:
        answers = [upload(url, f.read_bytes(), filename=f.name) for f in files]
    assert all(status == 200 for status, _ in answers)
    assert [a["class_index"] for _, a in answers] == [p.label for p in expected]
