"""The model a server serves: a lit_mnist checkpoint or an exported ONNX file, checked before the server starts.

:func:`open_model` reads everything the server needs to know (the dataset's classes and normalisation,
the input shape, the file's hash) and refuses a file it could not serve, with one line;
:func:`load_runner` builds, in each inference worker, the function that turns a batch of prepared
images into class probabilities.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_mnist.checkpoints import load_checkpoint
from lit_mnist.errors import CheckpointError, UsageError
from lit_mnist.inference import DatasetInfo, check_fits, dataset_info, resolve_dataset

__all__ = ["ServedModel", "load_runner", "open_model"]

#: A batch of prepared images ``(N, C, H, W)`` -> class probabilities ``(N, classes)`` on the CPU.
Runner = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ServedModel:
    """What the server knows of its model; plain values, so that it travels to the inference workers.

    Attributes:
        path: The model file.
        kind: ``checkpoint`` (a ``.ckpt`` written by training) or ``onnx`` (written by ``export``).
        info: The dataset: class names, normalisation, input shape.
        input_shape: The model's ``(C, H, W)``.
        sha256: The model file's SHA-256 (hex).
        network: ``mlp``, ``cnn``, ... as the checkpoint or the export's ``.json`` says.
    """

    path: Path
    kind: str
    info: DatasetInfo
    input_shape: tuple[int, int, int]
    sha256: str
    network: str

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of :attr:`sha256`: what every answer names the model by."""
        return self.sha256[:12]

    def describe(self) -> dict[str, Any]:
        """The model part of ``GET /info``."""
        channels = self.input_shape[0]
        polarity = "" if self.info.is_folder else ", light strokes on dark"
        return {
            "dataset": self.info.name,
            "classes": list(self.info.class_names),
            "input_shape": list(self.input_shape),
            "color": "grayscale" if channels == 1 else "rgb",
            "mean": self.info.mean,
            "std": self.info.std,
            "normalisation": f"x = (pixel / 255 - mean) / std{' per channel' if channels > 1 else ''}{polarity}",
            "network": self.network,
            "format": self.kind,
            "source": str(self.path),
            "sha256": self.sha256,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_model(path: str | Path, dataset: str | None = None) -> ServedModel:
    """Read and check the model file: a ``.onnx`` file (with its ``.json`` beside it) or a checkpoint.

    A checkpoint is read by :func:`lit_mnist.checkpoints.load_checkpoint` (the loader evaluate and predict
    use: a file that is not a lit_mnist checkpoint, or holds NaN weights, is refused); its dataset is
    resolved as predict resolves it (``dataset`` is predict's ``--dataset``).

    Raises:
        CheckpointError: the file cannot be served, one line saying why.
        UsageError: ``dataset`` contradicts the checkpoint, or the ``.onnx`` needs onnxruntime.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _open_onnx(path)
    if path.suffix.lower() == ".pt2":
        raise CheckpointError(
            f"{path}: serve takes a .ckpt checkpoint or an .onnx export, not a .pt2 program"
        )
    ckpt = load_checkpoint(path)
    name, _ = resolve_dataset(dataset, ckpt)
    info = dataset_info(ckpt, name)
    check_fits(ckpt.model, info)
    hp: Any = ckpt.model.hparams
    shape = tuple(int(d) for d in hp.input_shape)
    return ServedModel(
        path, "checkpoint", info, (shape[0], shape[1], shape[2]), file_sha256(path), str(hp.model)
    )


def _open_onnx(path: Path) -> ServedModel:
    meta_path = path.with_name(path.name + ".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(d) for d in meta["input_shape"])
        names = [str(n) for n in meta["class_names"]]
        mean, std, name = meta["mean"], meta["std"], str(meta["dataset"])
        if len(shape) != 3 or not names:
            raise ValueError("input_shape must be (C, H, W) and class_names not empty")
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} has no {meta_path.name} beside it (export.py writes one: the classes and normalisation)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{meta_path} is not the .json export.py writes ({type(err).__name__}: {err})"
        ) from None
    info = DatasetInfo(
        name, names, mean, std, len(names), list(shape), "grayscale" if shape[0] == 1 else "rgb"
    )
    model = ServedModel(
        path, "onnx", info, (shape[0], shape[1], shape[2]), file_sha256(path), str(meta.get("model"))
    )
    probabilities = load_runner(model, "cpu")(torch.zeros(2, *shape))  # refuse a file that cannot answer
    if tuple(probabilities.shape) != (2, len(names)) or not torch.isfinite(probabilities).all():
        raise CheckpointError(
            f"{path} does not answer as its {meta_path.name} says ({len(names)} classes), or answers NaN"
        )
    return model


def load_runner(model: ServedModel, device: str) -> Runner:
    """The function an inference worker classifies with, on ``device`` (``cpu``, ``cuda:0``, ...).

    A checkpoint's module answers with its ``predict_step`` (what ``predict`` runs); an ONNX file through
    onnxruntime (its CUDA provider on a GPU device when installed), softmax of the logits.

    Raises:
        UsageError: an ONNX file without onnxruntime installed.
        CheckpointError: onnxruntime cannot load the file.
    """
    if model.kind == "onnx":
        return _onnx_runner(model.path, device)
    module = load_checkpoint(model.path).model.float().to(device).eval()

    def run(images: Tensor) -> Tensor:
        with torch.inference_mode():
            return module.predict_step(images.to(device), 0).float().cpu()

    return run


def _onnx_runner(path: Path, device: str) -> Runner:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(
            f"{path}: serving an ONNX file needs onnxruntime: pip install 'lit_mnist[export]'"
        ) from None
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for a file it cannot read
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path} is not an ONNX model onnxruntime can load ({detail})") from None
    input_name = session.get_inputs()[0].name

    def run(images: Tensor) -> Tensor:
        (logits,) = session.run(None, {input_name: images.numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).softmax(dim=-1)

    return run
