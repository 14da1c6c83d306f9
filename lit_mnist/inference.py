"""Using trained models: evaluate a checkpoint, classify image files, export a deployable model.

``python scripts/evaluate.py``, ``scripts/predict.py`` and ``scripts/export.py`` (and ``lit-mnist
evaluate|predict|export``) end up in :func:`evaluate_main`, :func:`predict_main` and
:func:`export_main`. All three read the checkpoint with :func:`load_checkpoint`, which only ever
loads with ``weights_only=True``: a file that would need to run Python code to load is refused.

Which dataset a checkpoint belongs to (for the test set and the normalisation constants) is
``--dataset`` when given, else the ``dataset:`` of the run's ``config.yaml``
(``<run>/checkpoints/x.ckpt`` -> ``<run>/config.yaml``), else ``mnist``.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import os
import re
import secrets
import sys
import warnings
import zipfile
from argparse import ArgumentError
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import lightning_utilities.core.rank_zero as rank_zero_module
import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_mnist.cli import (
    ACCELERATORS,
    CONFIG_NAME,
    PRECISION_ALIASES,
    PRECISIONS,
    _one_line,
    usage_exit,
)
from lit_mnist.data import DATAMODULES, MNISTDataModule, default_data_dir
from lit_mnist.errors import CheckpointError, DataError, ImageError, UsageError
from lit_mnist.loader import InMemoryBatchLoader
from lit_mnist.module import MNISTClassifier

#: Image formats that ``predict`` opens (PIL's names); anything else is refused before decoding.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
INVERT_CHOICES = ("auto", "yes", "no")
FIT_CHOICES = ("frame", "digit")
EXPORT_FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}


# --------------------------------------------------------------------------- checkpoints
@dataclass
class LoadedCheckpoint:
    """A checkpoint read safely: the model in eval mode on the CPU and the run's data settings.

    Attributes:
        path: The checkpoint file.
        model: The trained module (``eval()``, on the CPU, float32 or the dtype it was saved in).
        datamodule_hparams: The datamodule's hyperparameters saved with it (``data_dir``,
            ``batch_size``, ``loader``, ...); empty when the checkpoint has none.
        run_config: The run's ``config.yaml`` next to the checkpoint folder, or empty.
    """

    path: Path
    model: MNISTClassifier
    datamodule_hparams: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path, model_cls: type[MNISTClassifier] = MNISTClassifier) -> LoadedCheckpoint:
    """Read a checkpoint written by lit_mnist's training, with ``weights_only=True`` only.

    Args:
        path: A ``.ckpt`` file.
        model_cls: The LightningModule class to rebuild (a subclass with its own ``build_network``).

    Raises:
        CheckpointError: one line saying what is wrong: no such file, truncated or not a checkpoint,
            refused (it would run code when unpickled), not a lit_mnist checkpoint, or wrong shapes.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; give a .ckpt file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: not a complete zip archive (truncated, or another kind of file)"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(_load_failure(path, err)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict in it)")
    if not isinstance(raw.get("hyper_parameters"), dict):
        raise CheckpointError(f"{path} has no hyper_parameters: it was not written by lit_mnist's training")
    try:
        model = model_cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # odd hyperparameters (ConfigError), state_dict that does not fit
        raise CheckpointError(f"{path} does not fit {model_cls.__name__} ({_first_line(err)})") from None
    model.eval()
    dm_hparams = raw.get("datamodule_hyper_parameters")
    return LoadedCheckpoint(
        path=path,
        model=model,
        datamodule_hparams=dict(dm_hparams) if isinstance(dm_hparams, dict) else {},
        run_config=read_run_config(path),
    )


def _load_failure(path: Path, err: Exception) -> str:
    text = str(err)
    if "Weights only load failed" in text:
        detail = next(
            (
                line.strip()
                for line in text.splitlines()
                if re.search(r"GLOBAL|Unsupported|unsupported", line)
            ),
            "",
        )
        return (
            f"{path} was refused: loading it would need Python objects other than tensors and plain values "
            f"({detail or 'weights_only unpickler'}); lit_mnist loads checkpoints with weights_only=True only"
        )
    return f"{path} is not a readable checkpoint ({_first_line(err)})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def read_run_config(ckpt_path: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``{}``."""
    config = Path(ckpt_path).resolve().parent.parent / CONFIG_NAME
    try:
        loaded = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def resolve_dataset(flag: str | None, ckpt: LoadedCheckpoint) -> tuple[str, str]:
    """The dataset name and where it came from: ``--dataset``, the run's config.yaml, or the default."""
    if flag is not None:
        return flag, "--dataset"
    from_run = ckpt.run_config.get("dataset")
    if isinstance(from_run, str) and from_run in DATAMODULES:
        return from_run, f"the run's {CONFIG_NAME}"
    return "mnist", "default"


def check_fits(model: MNISTClassifier, datamodule_cls: type[MNISTDataModule], dataset: str) -> None:
    """Raise :class:`UsageError` when the model's classes or input shape do not match the dataset's."""
    hp: Any = model.hparams
    if int(hp.num_classes) != datamodule_cls.num_classes or list(hp.input_shape) != list(
        datamodule_cls.image_shape
    ):
        raise UsageError(
            f"--dataset {dataset} has {datamodule_cls.num_classes} classes of {list(datamodule_cls.image_shape)} "
            f"images; the checkpoint's model takes {hp.num_classes} classes of {list(hp.input_shape)}"
        )


def build_datamodule(
    ckpt: LoadedCheckpoint, dataset: str, data_dir: str | None = None, batch_size: int | None = None
) -> MNISTDataModule:
    """The datamodule of ``dataset`` with the checkpoint's data settings.

    The data folder is ``data_dir`` when given, else the checkpoint's ``data_dir`` when it holds the
    dataset's raw files, else the default (``$LIT_MNIST_DATA_DIR`` or ``./data``).
    """
    cls = DATAMODULES[dataset]
    accepted = inspect.signature(cls.__init__).parameters
    hparams = {k: v for k, v in ckpt.datamodule_hparams.items() if k in accepted and k != "self"}
    if data_dir is None:
        saved = hparams.get("data_dir")
        has_raw = saved and (Path(saved) / cls.dataset_cls.__name__ / "raw").is_dir()
        data_dir = str(saved) if has_raw else default_data_dir()
    hparams["data_dir"] = data_dir
    if batch_size is not None:
        hparams["batch_size"] = batch_size
    return cls(**hparams)


def run_precision(run_config: dict[str, Any]) -> str:
    """The run's ``--precision`` (so that evaluation repeats training's test), else ``32-true``.

    float16 autocast needs a CUDA GPU: without one, a run trained that way is evaluated in float32.
    """
    precision = str(run_config.get("precision") or "32-true")
    if precision in PRECISIONS and not (precision in ("16-mixed", "16") and not torch.cuda.is_available()):
        return precision
    return "32-true"


def _check_accelerator(accelerator: str) -> None:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--accelerator {accelerator}: no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's start-up notes (GPU available, tips) for commands whose output is the result."""
    logger: logging.Logger = rank_zero_module.log
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # lightning 2.6.6's _pytree uses a helper torch 2.14 deprecates (not our code; see pyproject)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        logger.setLevel(level)


def _trainer(
    accelerator: str, precision: str = "32-true", callbacks: list[L.Callback] | None = None
) -> L.Trainer:
    """A one-device Trainer that writes nothing: no logger, no checkpoints, no progress bar."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=PRECISION_ALIASES.get(precision, precision),  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


# --------------------------------------------------------------------------- evaluate
class ConfusionMatrixCallback(L.Callback):
    """Accumulates the confusion matrix of the very predictions ``test_step`` makes.

    ``MNISTClassifier.test_step`` returns ``{"preds": class indices}`` (the monitoring callbacks use
    the same), so no second pass over the data is needed and the matrix's diagonal adds up to the
    count behind ``test/acc``.
    """

    def __init__(self, num_classes: int) -> None:
        self.matrix = MulticlassConfusionMatrix(num_classes=num_classes)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        preds = outputs.get("preds") if isinstance(outputs, dict) else None
        if not isinstance(preds, Tensor):
            raise RuntimeError('test_step must return {"preds": class indices} to count the confusion matrix')
        self.matrix.update(preds, batch[1])


@dataclass
class Evaluation:
    """Test-set results of one checkpoint.

    Attributes:
        test_loss: Mean loss over the test set (the training criterion, label smoothing included).
        test_acc: Accuracy over the test set (``test/acc``, as training reports it).
        confusion_matrix: ``(C, C)`` counts, rows the true class, columns the predicted class.
        class_names: Name of each class.
    """

    test_loss: float
    test_acc: float
    confusion_matrix: Tensor
    class_names: list[str]

    @property
    def num_images(self) -> int:
        return int(self.confusion_matrix.sum())

    @property
    def num_correct(self) -> int:
        return int(self.confusion_matrix.diagonal().sum())

    @property
    def per_class_acc(self) -> list[float | None]:
        """Accuracy of each true class (recall); ``None`` for a class with no test images."""
        totals = self.confusion_matrix.sum(dim=1)
        correct = self.confusion_matrix.diagonal()
        return [
            float(c / t) if t > 0 else None for c, t in zip(correct.tolist(), totals.tolist(), strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
            "num_images": self.num_images,
            "num_correct": self.num_correct,
            "class_names": self.class_names,
            "per_class_acc": self.per_class_acc,
            "confusion_matrix": self.confusion_matrix.tolist(),
        }


def evaluate(
    model: MNISTClassifier, datamodule: MNISTDataModule, accelerator: str = "auto", precision: str = "32-true"
) -> Evaluation:
    """Test ``model`` on the datamodule's test split with ``Trainer.test``, as training does.

    Raises:
        DataError: the dataset is missing or corrupted.
    """
    hp: Any = model.hparams
    confusion = ConfusionMatrixCallback(int(hp.num_classes))
    with quiet_lightning():
        trainer = _trainer(accelerator, precision, callbacks=[confusion])
        (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    matrix = confusion.matrix.compute().cpu()
    names = list(getattr(datamodule.dataset_cls, "classes", [])) or [str(i) for i in range(len(matrix))]
    return Evaluation(
        test_loss=float(metrics["test/loss"]),
        test_acc=float(metrics["test/acc"]),
        confusion_matrix=matrix,
        class_names=names,
    )


def format_evaluation(result: Evaluation) -> str:
    """The report ``evaluate`` prints: loss, accuracy, per-class accuracy, confusion matrix."""
    lines = [
        f"Test loss:     {result.test_loss:.4f}",
        f"Test accuracy: {result.test_acc:.2%}  ({result.num_correct}/{result.num_images}; "
        f"test_acc {result.test_acc!r})",
        "",
        "Per-class accuracy:",
    ]
    matrix = result.confusion_matrix
    width = max(len(n) for n in result.class_names)
    for i, (name, acc) in enumerate(zip(result.class_names, result.per_class_acc, strict=True)):
        shown = f"{acc:7.2%}" if acc is not None else "    n/a"
        lines.append(f"  {i:>2}  {name:<{width}}  {shown}  ({int(matrix[i, i])}/{int(matrix[i].sum())})")
    cell = max(4, len(str(int(matrix.max()))) + 1)
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):"]
    lines.append("    " + "".join(f"{j:>{cell}}" for j in range(len(matrix))))
    for i, row in enumerate(matrix.tolist()):
        lines.append(f"  {i:>2}" + "".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------- images
def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as a float32 ``(H, W)`` array in [0, 1] (0 black, 1 white).

    Any colour mode is accepted: colour is converted to luminance, 16-bit images are scaled from
    [0, 65535], and transparent pixels are laid over a background that contrasts with the
    drawing (white under dark strokes, black under light ones). EXIF rotation is applied.

    Raises:
        ImageError: not a file, not an image of :data:`IMAGE_FORMATS`, truncated or corrupted, or
            larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("no such file" if not path.exists() else "not a file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return _to_gray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"refused: more pixels than PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}), "
            "possibly a decompression bomb"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a known format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated data, broken chunks
        raise ImageError(f"cannot decode the image ({_first_line(err)})") from None


def _to_gray(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0.0, 1.0)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        weight = float(alpha.sum())
        strokes = float((gray * alpha).sum()) / weight if weight > 0 else 0.0
        background = 1.0 if strokes < 0.5 else 0.0
        return gray * alpha + background * (1.0 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def border_level(gray: np.ndarray) -> float:
    """The median of the outermost ring of pixels: the background's brightness."""
    ring = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(ring))


def should_invert(gray: np.ndarray, invert: str = "auto") -> bool:
    """Whether to invert: MNIST digits are light on a dark background.

    ``"auto"`` inverts when the background (the border's median, or the mean for an image too
    small to have a border) is bright, i.e. dark-on-light drawings; ``"yes"``/``"no"`` force it.
    """
    if invert != "auto":
        return invert == "yes"
    level = border_level(gray) if min(gray.shape) >= 3 else float(gray.mean())
    return level > 0.5


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if array.shape == size:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(
        tensor, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def _pad_square(array: np.ndarray, value: float) -> np.ndarray:
    h, w = array.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return np.pad(array, ((top, side - h - top), (left, side - w - left)), constant_values=value)


def fit_frame(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad to a square with the background, then resize to ``size`` (unchanged if already that size)."""
    if gray.shape == size:
        return gray
    return _resize(_pad_square(gray, border_level(gray)), size)


def fit_digit(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frame a light-on-dark digit the way MNIST's were made.

    Background to 0 and the brightest stroke to 1, crop to the strokes' bounding box, scale it
    (aspect ratio kept) to fit a box of 20/28 of the frame, and place it so that its centre of
    mass is the frame's centre.
    """
    background = border_level(gray)
    peak = float(gray.max())
    if peak - background < 1e-3:
        return fit_frame(gray, size)  # a blank image: nothing to centre
    levels = np.clip((gray - background) / (peak - background), 0.0, 1.0)
    rows, cols = np.nonzero(levels > 0.2)
    crop = levels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(min(size) * 20 / 28))
    side = max(crop.shape)
    scaled_shape = (max(1, round(crop.shape[0] * box / side)), max(1, round(crop.shape[1] * box / side)))
    digit = _resize(crop, scaled_shape)
    frame = np.zeros(size, dtype=np.float32)
    total = float(digit.sum())
    if total > 0:
        ys, xs = np.indices(digit.shape)
        cy, cx = float((ys * digit).sum()) / total, float((xs * digit).sum()) / total
    else:
        cy, cx = (digit.shape[0] - 1) / 2, (digit.shape[1] - 1) / 2
    top = min(max(round((size[0] - 1) / 2 - cy), 0), size[0] - digit.shape[0])
    left = min(max(round((size[1] - 1) / 2 - cx), 0), size[1] - digit.shape[1])
    frame[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return frame


def prepare_image(
    path: str | Path,
    mean: float,
    std: float,
    size: tuple[int, int] = (28, 28),
    invert: str = "auto",
    fit: str = "frame",
) -> Tensor:
    """An image file as the model's input: ``(1, H, W)`` float32, light on dark, normalised.

    Args:
        path: A PNG, JPEG, ... of any size and colour mode.
        mean: Mean of the training images (the datamodule class's ``mean``).
        std: Standard deviation of the training images (the datamodule class's ``std``).
        size: ``(H, W)`` of the model's input.
        invert: ``"auto"`` (invert dark-on-light images), ``"yes"`` or ``"no"``.
        fit: ``"frame"``: pad to a square with the background and resize, keeping the whole
            picture (right for images framed like the dataset's; a 28x28 image is unchanged);
            ``"digit"``: crop to the strokes and centre them the way MNIST's digits were made (for
            photos or drawings of one digit with a wide margin).

    Raises:
        ImageError: the file cannot be read or is refused.
    """
    gray = read_grayscale(path)
    if should_invert(gray, invert):
        gray = 1.0 - gray
    framed = fit_digit(gray, size) if fit == "digit" else fit_frame(gray, size)
    tensor = torch.from_numpy(np.ascontiguousarray(framed, dtype=np.float32))
    return tensor.sub(mean).div(std).unsqueeze(0)


def predict_tensors(
    model: MNISTClassifier, images: Tensor, accelerator: str = "auto", batch_size: int = 256
) -> Tensor:
    """Class probabilities ``(N, C)`` of normalised images ``(N, C, H, W)`` through ``Trainer.predict``."""
    loader = InMemoryBatchLoader(
        images, torch.zeros(len(images), dtype=torch.long), batch_size, shuffle=False, seed=0
    )
    with quiet_lightning():
        batches = _trainer(accelerator).predict(model, dataloaders=loader)
    assert batches is not None
    return torch.cat([b.float().cpu() for b in batches])  # type: ignore[union-attr]


@dataclass
class Prediction:
    """The class of one image file, or why it could not be classified."""

    file: str
    label: int | None = None
    probability: float | None = None
    class_name: str | None = None
    probabilities: list[float] | None = None
    error: str | None = None


def predict_files(
    model: MNISTClassifier,
    files: Sequence[str | Path],
    datamodule_cls: type[MNISTDataModule],
    invert: str = "auto",
    fit: str = "frame",
    accelerator: str = "auto",
    batch_size: int = 256,
) -> list[Prediction]:
    """Classify image files; a file that cannot be read gets a :class:`Prediction` with ``error``."""
    hp: Any = model.hparams
    size = (int(hp.input_shape[1]), int(hp.input_shape[2]))
    results = [Prediction(file=str(f)) for f in files]
    tensors: list[Tensor] = []
    readable: list[Prediction] = []
    for result in results:
        try:
            tensors.append(
                prepare_image(result.file, datamodule_cls.mean, datamodule_cls.std, size, invert, fit)
            )
            readable.append(result)
        except ImageError as err:
            result.error = str(err)
    if tensors:
        probabilities = predict_tensors(model, torch.stack(tensors), accelerator, batch_size)
        names = list(getattr(datamodule_cls.dataset_cls, "classes", []))
        for result, probs in zip(readable, probabilities, strict=True):
            label = int(probs.argmax())
            result.label = label
            result.probability = float(probs[label])
            result.class_name = names[label] if label < len(names) else str(label)
            result.probabilities = [round(float(p), 6) for p in probs]
    return results


def write_predictions(predictions: Sequence[Prediction], output: Path | None) -> None:
    """Write the classified files as CSV (stdout or ``.csv``) or JSON (``.json``); errors are left out."""
    done = [p for p in predictions if p.error is None]
    if output is not None and output.suffix.lower() == ".json":
        records = [
            {k: v for k, v in vars(p).items() if k != "error"} for p in done
        ]  # file, label, probability, class_name, probabilities
        _write_atomic(output, json.dumps(records, indent=2) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "probability"])
    for p in done:
        writer.writerow([p.file, p.label, f"{p.probability:.4f}"])
    if output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        _write_atomic(output, buffer.getvalue())


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomic(path, lambda tmp: tmp.write_text(text))


def _replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    # Not mkstemp: its files are private (0600); this one gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- export
def export_model(model: MNISTClassifier, output: Path, fmt: str) -> None:
    """Write ``model`` as ONNX or a ``torch.export`` program: normalised ``(N, C, H, W)`` in, logits out.

    The batch axis is dynamic. The file is written to a temporary name and renamed into place.

    Raises:
        ImportError: ONNX export without the ``onnx`` / ``onnxscript`` packages (``pip install 'lit_mnist[export]'``).
    """
    hp: Any = model.hparams
    model = model.float().eval().cpu()
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
        _replace_atomic(output, write)


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


def export_metadata(
    model: MNISTClassifier, datamodule_cls: type[MNISTDataModule], dataset: str
) -> dict[str, Any]:
    """What a user of the exported model needs: input layout, normalisation, class names."""
    hp: Any = model.hparams
    shape = [int(d) for d in hp.input_shape]
    return {
        "dataset": dataset,
        "input": f"input: float32 (N, {', '.join(map(str, shape))}), x = (pixel / 255 - mean) / std, "
        "light strokes on dark",
        "output": f"logits: float32 (N, {int(hp.num_classes)}); softmax gives the probabilities",
        "input_shape": shape,
        "mean": datamodule_cls.mean,
        "std": datamodule_cls.std,
        "class_names": list(getattr(datamodule_cls.dataset_cls, "classes", [])),
        "model": hp.model,
    }


# --------------------------------------------------------------------------- command line
def _parser(prog: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
    parser.add_argument("--ckpt-path", type=str, required=True, help="A .ckpt file written by training.")
    parser.add_argument(
        "--dataset",
        type=str,
        choices=list(DATAMODULES),
        default=None,
        help=f"Dataset of the checkpoint (default: the run's {CONFIG_NAME}, else mnist).",
    )
    return parser


def get_evaluate_parser(prog: str = "evaluate.py") -> ArgumentParser:
    """Flags of ``evaluate``."""
    parser = _parser(prog, "Test a checkpoint: loss, accuracy, per-class accuracy, confusion matrix.")
    parser.add_argument(
        "--data-dir",
        type=str | None,
        default=None,
        help="Folder holding <Dataset>/raw (default: the checkpoint's, else $LIT_MNIST_DATA_DIR or ./data).",
    )
    parser.add_argument("--batch-size", type=int | None, default=None, help="Default: the checkpoint's.")
    parser.add_argument("--accelerator", type=str, choices=list(ACCELERATORS), default="auto")
    parser.add_argument(
        "--precision",
        type=str,
        choices=list(PRECISIONS),
        default=None,
        help=f"Default: the run's {CONFIG_NAME}, else 32-true.",
    )
    parser.add_argument("--json", type=str | None, default=None, help="Also write the results to this file.")
    return parser


def get_predict_parser(prog: str = "predict.py") -> ArgumentParser:
    """Flags of ``predict``."""
    parser = _parser(prog, "Classify image files (PNG, JPEG, ...) with a checkpoint.")
    parser.add_argument("files", type=str, nargs="+", help="Image files.")
    parser.add_argument(
        "--output", type=str | None, default=None, help="Write the results to a .csv or .json file."
    )
    parser.add_argument(
        "--invert",
        type=str,
        choices=list(INVERT_CHOICES),
        default="auto",
        help="auto: invert dark-on-light images (the model expects light strokes on dark).",
    )
    parser.add_argument(
        "--fit",
        type=str,
        choices=list(FIT_CHOICES),
        default="frame",
        help="frame: pad to square and resize; digit: crop and centre the strokes like MNIST's digits.",
    )
    parser.add_argument("--accelerator", type=str, choices=list(ACCELERATORS), default="auto")
    parser.add_argument("--batch-size", type=int, default=256, help="Images per batch.")
    return parser


def get_export_parser(prog: str = "export.py") -> ArgumentParser:
    """Flags of ``export``."""
    parser = _parser(prog, "Export a checkpoint as ONNX or a torch.export program (.pt2).")
    parser.add_argument("--format", type=str, choices=list(EXPORT_FORMATS), default="onnx")
    parser.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="The file to write (default: next to the checkpoint, .onnx or .pt2).",
    )
    return parser


def _parse(parser: ArgumentParser, argv: Sequence[str] | None, prog: str) -> Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args(args)
    except ArgumentError as err:
        message = str(err)
        if m := re.match(r"the following arguments are required: (.*)", message):
            names = [n.strip() for n in m[1].split(",")]
            flags = [n if n == "files" else "--" + n.replace("_", "-") for n in names]
            usage_exit(
                prog, f"{' and '.join(flags)} {'is' if len(flags) == 1 else 'are'} required (see --help)"
            )
        usage_exit(prog, _one_line(message, args))


def _load(cfg: Namespace, prog: str) -> tuple[LoadedCheckpoint, str, str]:
    """The checkpoint and its dataset (name and source); usage errors end the process with status 2."""
    try:
        _check_accelerator(getattr(cfg, "accelerator", "cpu"))
        ckpt = load_checkpoint(cfg.ckpt_path)
        dataset, source = resolve_dataset(cfg.dataset, ckpt)
        check_fits(ckpt.model, DATAMODULES[dataset], dataset)
    except CheckpointError as err:
        usage_exit(prog, f"--ckpt-path {err}")
    except UsageError as err:
        usage_exit(prog, str(err))
    return ckpt, dataset, source


def evaluate_main(argv: Sequence[str] | None = None, prog: str = "evaluate.py") -> int:
    """Entry point of ``scripts/evaluate.py``. Returns the exit status."""
    cfg = _parse(get_evaluate_parser(prog), argv, prog)
    if cfg.batch_size is not None and cfg.batch_size < 1:
        usage_exit(prog, f"--batch-size must be >= 1, got {cfg.batch_size}")
    ckpt, dataset, source = _load(cfg, prog)
    precision = cfg.precision or run_precision(ckpt.run_config)
    datamodule = build_datamodule(ckpt, dataset, cfg.data_dir, cfg.batch_size)
    try:
        result = evaluate(ckpt.model, datamodule, cfg.accelerator, precision)
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"Checkpoint:    {ckpt.path}")
    print(f"Dataset:       {dataset} ({source}), test set in {datamodule.raw_folder}")
    print(format_evaluation(result))
    if cfg.json:
        record = {"checkpoint": str(ckpt.path), "dataset": dataset, "data_dir": datamodule.data_dir}
        _write_atomic(Path(cfg.json), json.dumps({**record, **result.to_dict()}, indent=2) + "\n")
        print(f"\nWrote {cfg.json}")
    return 0


def predict_main(argv: Sequence[str] | None = None, prog: str = "predict.py") -> int:
    """Entry point of ``scripts/predict.py``. Returns 1 when some file could not be classified."""
    cfg = _parse(get_predict_parser(prog), argv, prog)
    output = Path(cfg.output) if cfg.output else None
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        usage_exit(prog, f"--output must end in .csv or .json, got {cfg.output}")
    if cfg.batch_size < 1:
        usage_exit(prog, f"--batch-size must be >= 1, got {cfg.batch_size}")
    ckpt, dataset, _ = _load(cfg, prog)
    predictions = predict_files(
        ckpt.model, cfg.files, DATAMODULES[dataset], cfg.invert, cfg.fit, cfg.accelerator, cfg.batch_size
    )
    for p in predictions:
        if p.error is not None:
            print(f"{prog}: error: {p.file}: {p.error}", file=sys.stderr)
    write_predictions(predictions, output)
    failed = sum(p.error is not None for p in predictions)
    if output is not None:
        print(f"Wrote {len(predictions) - failed} predictions to {output}")
    if failed:
        print(f"{prog}: {failed} of {len(predictions)} files could not be classified", file=sys.stderr)
        return 1
    return 0


def export_main(argv: Sequence[str] | None = None, prog: str = "export.py") -> int:
    """Entry point of ``scripts/export.py``. Returns the exit status."""
    cfg = _parse(get_export_parser(prog), argv, prog)
    ckpt, dataset, source = _load(cfg, prog)
    suffix = EXPORT_FORMATS[cfg.format]
    output = Path(cfg.output) if cfg.output else ckpt.path.with_suffix(suffix)
    if output.is_dir():
        usage_exit(prog, f"--output {output} is a folder; give a file name ending in {suffix}")
    model = ckpt.model.float()
    try:
        export_model(model, output, cfg.format)
    except ImportError as err:
        print(
            f"{prog}: error: --format {cfg.format} needs {err.name or 'onnx'}: pip install 'lit_mnist[export]'",
            file=sys.stderr,
        )
        return 1
    meta = {**export_metadata(model, DATAMODULES[dataset], dataset), "format": cfg.format}
    meta_path = output.with_name(output.name + ".json")
    _write_atomic(meta_path, json.dumps({**meta, "checkpoint": str(ckpt.path)}, indent=2) + "\n")
    print(
        f"Wrote {output} ({cfg.format}: float32 input (N, {', '.join(map(str, meta['input_shape']))}), logits out)"
    )
    print(f"Normalise the input as (pixel / 255 - {meta['mean']}) / {meta['std']} ({dataset}, {source})")
    print(f"Wrote {meta_path} (input layout, mean, std, class names)")
    images = torch.randn(5, *meta["input_shape"])
    try:
        with torch.no_grad():
            expected = model(images)
        diff = float((run_exported(output, cfg.format, images) - expected).abs().max())
    except ImportError as err:
        print(f"Not checked: {err.name} is not installed (pip install 'lit_mnist[export]')")
    else:
        print(f"Checked: largest difference from the PyTorch model on 5 inputs {diff:.2e}")
        if not math.isfinite(diff) or diff > 1e-4:
            print(
                f"{prog}: error: the exported model's outputs differ from PyTorch's by {diff}",
                file=sys.stderr,
            )
            return 1
    return 0
