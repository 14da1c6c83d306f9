"""Exporting a trained model for deployment: ONNX or a ``torch.export`` program, checked against PyTorch.

The exported model takes normalised ``(N, C, H, W)`` float32 images (the batch axis is dynamic)
and returns logits; :func:`export_metadata` is what its user needs beside it (normalisation,
input layout, class names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_mnist.inference import DatasetInfo
from lit_mnist.module import MNISTClassifier
from lit_mnist.runtime import replace_atomic

__all__ = [
    "EXPORT_FORMATS",
    "export_metadata",
    "export_model",
    "run_exported",
]

#: Export format -> the file suffix it is written with.
EXPORT_FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}


def export_model(model: MNISTClassifier, output: Path, fmt: str) -> None:
    """Write ``model`` as ONNX or a ``torch.export`` program: normalised ``(N, C, H, W)`` in, logits out.

    The batch axis is dynamic. The file is written to a temporary name and renamed into place.

    Raises:
        ImportError: ONNX export without the ``onnx`` / ``onnxscript`` packages (``pip install 'lit_mnist[export]'``).
    """
    hp: Any = model.hparams
    # The plain (NCHW) layout: torch.export.save packs channels-last weights as partial tensors (and warns),
    # and an exported file is for other runtimes; the values are the same.
    model = model.float().eval().cpu().to(memory_format=torch.contiguous_format)
    example = (torch.zeros(2, *[int(d) for d in hp.input_shape]),)
    batch = torch.export.Dim("batch")
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":

        def write(tmp: Path) -> None:
            torch.onnx.export(
                model,
                example,
                str(tmp),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,  # one self-contained file
                verbose=False,
            )

    else:

        def write(tmp: Path) -> None:
            program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
            torch.export.save(program, str(tmp))

    with torch.no_grad():
        replace_atomic(output, write)


def run_exported(path: Path, fmt: str, images: Tensor) -> Tensor:
    """Run an exported model on ``images`` with onnxruntime or ``torch.export.load``: the logits.

    Raises:
        ImportError: ``onnxruntime`` is not installed.
    """
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"input": images.numpy()})
        return torch.from_numpy(np.asarray(logits))
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(images)


def export_metadata(model: MNISTClassifier, info: DatasetInfo) -> dict[str, Any]:
    """What a user of the exported model needs: input layout, normalisation, class names."""
    hp: Any = model.hparams
    shape = [int(d) for d in hp.input_shape]
    polarity = "" if info.is_folder else ", light strokes on dark"
    return {
        "dataset": info.name,
        "input": f"input: float32 (N, {', '.join(map(str, shape))}), x = (pixel / 255 - mean) / std"
        + (" per channel" if shape[0] > 1 else "")
        + polarity,
        "output": f"logits: float32 (N, {int(hp.num_classes)}); softmax gives the probabilities",
        "input_shape": shape,
        "mean": info.mean,
        "std": info.std,
        "class_names": list(info.class_names),
        "model": hp.model,
    }
