"""Using a trained model from Python: evaluate it on a test set, classify images and image files.

The command line (``lit_mnist.cli.evaluate``, ``lit_mnist.cli.predict``) is built on these; nothing
here parses flags or ends the process. Checkpoints are read with
:func:`lit_mnist.checkpoints.load_checkpoint`, image files with :mod:`lit_mnist.images`.

Which dataset a checkpoint belongs to (for the test set and the normalisation constants) is the one
the checkpoint records (a ``--dataset`` that contradicts it is refused), else the ``--dataset`` given,
else the ``dataset:`` of the run's ``config.yaml`` (``<run>/checkpoints/x.ckpt`` -> ``<run>/config.yaml``),
else ``mnist``: :func:`resolve_dataset`.

Names outside ``__all__`` serve lit_mnist's own modules (the commands, the run) and may change.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from lit_mnist.checkpoints import CONFIG_NAME, LoadedCheckpoint
from lit_mnist.data import TensorDataModule, default_data_dir
from lit_mnist.datachange import class_change, data_change
from lit_mnist.datasets import DATASETS
from lit_mnist.errors import ImageError, UsageError
from lit_mnist.folder import read_image
from lit_mnist.images import ImageSource, prepare_image
from lit_mnist.loader import InMemoryBatchLoader
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.module import MNISTClassifier
from lit_mnist.runtime import PRECISIONS, printable, quiet_lightning, quiet_trainer, write_atomic
from lit_mnist.stats import INTERVAL_METHOD, format_interval, wilson_interval

__all__ = [
    "Evaluation",
    "Prediction",
    "evaluate",
    "format_evaluation",
    "predict_files",
    "predict_tensors",
    "prepare_input",
    "write_predictions",
]


# --------------------------------------------------------------------------- a checkpoint's dataset
def resolve_dataset(flag: str | None, ckpt: LoadedCheckpoint) -> tuple[str, str]:
    """The dataset name and where it came from: ``--dataset``, the checkpoint's record, the run's
    config.yaml, or the default.

    Raises:
        UsageError: ``--dataset`` names another dataset than the one the checkpoint records.
    """
    if flag is not None:
        if ckpt.dataset is not None and flag != ckpt.dataset:
            raise UsageError(
                f"--dataset {flag}: {ckpt.path} was trained on {ckpt.dataset}; leave --dataset out "
                "(the checkpoint says which) or pass --dataset " + ckpt.dataset
            )
        return flag, "--dataset"
    if ckpt.dataset in DATASETS:
        return str(ckpt.dataset), "the checkpoint"
    from_run = ckpt.run_config.get("dataset")
    if isinstance(from_run, str) and from_run in DATASETS:
        return from_run, f"the run's {CONFIG_NAME}"
    return "mnist", "default"


@dataclass
class DatasetInfo:
    """What using a model needs of its dataset: class names, normalisation, input shape.

    From the checkpoint's record (:class:`~lit_mnist.checkpoints.DatasetRecord`), else (a checkpoint
    written before the record) from the dataset's class attributes.
    """

    name: str
    class_names: list[str]
    mean: float | list[float]
    std: float | list[float]
    num_classes: int
    image_shape: list[int]
    color: str = "grayscale"

    @property
    def is_folder(self) -> bool:
        """An image-folder dataset: its images are read as training read them (no inversion, no framing)."""
        return self.name == "folder"


def dataset_info(ckpt: LoadedCheckpoint, dataset: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``dataset`` for the checkpoint ``ckpt``.

    Raises:
        UsageError: a folder dataset's checkpoint without a record (nothing says its classes).
    """
    record = ckpt.data_record if ckpt.data_record.get("dataset") == dataset else {}
    if {"mean", "std", "num_classes", "image_shape"} <= set(record):
        num_classes = int(record["num_classes"])
        names = record.get("classes") or [str(i) for i in range(num_classes)]
        return DatasetInfo(
            dataset, [str(n) for n in names], record["mean"], record["std"], num_classes,
            [int(d) for d in record["image_shape"]], str(record.get("color", "grayscale")),
        )  # fmt: skip
    cls = DATASETS[dataset]
    if not issubclass(cls, MNISTDataModule) or cls.mean is None or cls.std is None:
        raise UsageError(f"{ckpt.path} does not record its {dataset} dataset (classes, normalisation)")
    mean, std = cls.mean, cls.std
    names = [str(c) for c in getattr(cls.dataset_cls, "classes", None) or []]
    return DatasetInfo(
        dataset,
        names if len(names) == cls.num_classes else [str(i) for i in range(cls.num_classes)],
        float(mean) if isinstance(mean, int | float) else list(mean),
        float(std) if isinstance(std, int | float) else list(std),
        cls.num_classes,
        list(cls.image_shape),
    )


def check_fits(model: MNISTClassifier, info: DatasetInfo) -> None:
    """Raise :class:`UsageError` when the model's classes or input shape do not match the dataset's."""
    hp: Any = model.hparams
    if int(hp.num_classes) != info.num_classes or list(hp.input_shape) != list(info.image_shape):
        raise UsageError(
            f"--dataset {info.name} has {info.num_classes} classes of {list(info.image_shape)} "
            f"images; the checkpoint's model takes {hp.num_classes} classes of {list(hp.input_shape)}"
        )


def build_datamodule(
    ckpt: LoadedCheckpoint,
    dataset: str,
    data_dir: str | None = None,
    batch_size: int | None = None,
    allow_other_data: bool = False,
) -> TensorDataModule:
    """The datamodule of ``dataset`` with the checkpoint's data settings.

    The data folder is ``data_dir`` when given, else the checkpoint's ``data_dir`` when it holds the
    dataset's raw files (a folder dataset: when it exists), else the default (``$LIT_MNIST_DATA_DIR``
    or ``./data``). A folder dataset is normalised with the checkpoint's recorded mean and std.

    Args:
        allow_other_data: Accept classes other than the checkpoint's (as many, other names): the model's
            class ``i`` is compared with the data's class ``i`` (:func:`data_difference` says what differs).

    Raises:
        DataError: a folder dataset's folder is missing or holds no class folders.
        UsageError: a folder dataset's classes are not those the checkpoint was trained on (unless
            ``allow_other_data``, and then still when there are not as many).
    """
    cls = DATASETS[dataset]
    accepted = inspect.signature(cls.__init__).parameters
    hparams = {k: v for k, v in ckpt.datamodule_hparams.items() if k in accepted and k != "self"}
    if data_dir is None:
        saved = hparams.get("data_dir")
        if issubclass(cls, MNISTDataModule):
            has_data = saved and (Path(saved) / cls.dataset_cls.__name__ / "raw").is_dir()
        else:
            has_data = saved and Path(saved).is_dir()
        data_dir = str(saved) if has_data else default_data_dir()
    hparams["data_dir"] = data_dir
    if batch_size is not None:
        hparams["batch_size"] = batch_size
    if "mean" in accepted:  # normalised as in training, whatever the folder holds now
        info = dataset_info(ckpt, dataset)
        hparams.update(mean=info.mean, std=info.std)
    datamodule = cls(**hparams)
    info = dataset_info(ckpt, dataset)
    if change := class_change(info.class_names, datamodule.class_names, folders=info.is_folder):
        other = f"--data-dir {printable(data_dir)} holds other classes than {ckpt.path} was trained on: {change}"
        if datamodule.num_classes != info.num_classes:
            raise UsageError(
                f"{other}; its model tells {info.num_classes} classes apart and the data has "
                f"{datamodule.num_classes}: it cannot be evaluated on them (not even with --allow-other-data)"
            )
        if not allow_other_data:
            raise UsageError(
                f"{other}; evaluate compares the model's class i with the data's class i, so its numbers would "
                "mean other classes: evaluate on the data it was trained on, or pass --allow-other-data to "
                "evaluate anyway"
            )
    return datamodule


def data_difference(ckpt: LoadedCheckpoint, info: DatasetInfo, datamodule: TensorDataModule) -> str | None:
    """How ``datamodule``'s data differ from those the checkpoint was trained on, in one line, or ``None``:
    other class names (:func:`~lit_mnist.datachange.class_change`, accepted by ``allow_other_data``) and
    other files (:func:`~lit_mnist.datachange.data_change`). Call it after ``setup`` (the files are listed
    and checked by then)."""
    words = []
    if change := class_change(info.class_names, datamodule.class_names, folders=info.is_folder):
        words.append(f"{change} (the model's class i is compared with the data's class i)")
    if change := data_change(ckpt.data_record.get("fingerprint"), datamodule.fingerprint()):
        words.append(change)
    return "; ".join(words) or None


def run_precision(run_config: dict[str, Any]) -> str:
    """The run's ``--precision`` (so that evaluation repeats training's test), else ``32-true``.

    float16 autocast needs a CUDA GPU: without one, a run trained that way is evaluated in float32.
    """
    precision = str(run_config.get("precision") or "32-true")
    if precision in PRECISIONS and not (precision in ("16-mixed", "16") and not torch.cuda.is_available()):
        return precision
    return "32-true"


# --------------------------------------------------------------------------- evaluate
class _ConfusionMatrixCallback(L.Callback):
    """Accumulates the confusion matrix of the very predictions ``test_step`` makes.

    ``MNISTClassifier.test_step`` returns ``{"preds": class indices}`` (the monitoring callbacks use
    the same), so no second pass over the data is needed and the matrix's diagonal adds up to the
    count behind ``test/acc``.
    """

    def __init__(self, num_classes: int) -> None:
        self.matrix = MulticlassConfusionMatrix(num_classes=num_classes)
        self.preds: list[Tensor] = []  # each image's predicted class, in the test set's order
        self.targets: list[Tensor] = []

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.matrix = self.matrix.to(pl_module.device)
        self.matrix.reset()
        self.preds, self.targets = [], []

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
        self.preds.append(preds.detach().cpu())
        self.targets.append(batch[1].detach().cpu())


@dataclass
class Evaluation:
    """Test-set results of one checkpoint.

    Attributes:
        test_loss: Mean loss over the test set (the training criterion, label smoothing included).
        test_acc: Accuracy over the test set (``test/acc``, as training reports it).
        confusion_matrix: ``(C, C)`` counts, rows the true class, columns the predicted class.
        class_names: Name of each class.
        predictions: Each test image's predicted class, in the test set's order (``evaluate`` fills it).
        targets: Each test image's true class, in the same order.
    """

    test_loss: float
    test_acc: float
    confusion_matrix: Tensor
    class_names: list[str]
    predictions: Tensor | None = None
    targets: Tensor | None = None

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

    @property
    def test_acc_ci(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval of the accuracy over the test images (:mod:`lit_mnist.stats`)."""
        return wilson_interval(self.num_correct, self.num_images) if self.num_images else None

    @property
    def per_class_acc_ci(self) -> list[tuple[float, float] | None]:
        """The 95% Wilson score interval of each class's accuracy; ``None`` for a class with no test images."""
        totals = self.confusion_matrix.sum(dim=1).tolist()
        correct = self.confusion_matrix.diagonal().tolist()
        return [wilson_interval(int(c), int(t)) if t > 0 else None for c, t in zip(correct, totals, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        ci = self.test_acc_ci
        return {
            "test_loss": self.test_loss,
            "test_acc": self.test_acc,
            "test_acc_ci": list(ci) if ci is not None else None,
            "interval_method": INTERVAL_METHOD,
            "num_images": self.num_images,
            "num_correct": self.num_correct,
            "class_names": self.class_names,
            "per_class_acc": self.per_class_acc,
            "per_class_acc_ci": [list(c) if c is not None else None for c in self.per_class_acc_ci],
            "confusion_matrix": self.confusion_matrix.tolist(),
        }


def evaluate(
    model: MNISTClassifier,
    datamodule: TensorDataModule,
    accelerator: str = "auto",
    precision: str = "32-true",
) -> Evaluation:
    """Test ``model`` on the datamodule's test split with ``Trainer.test``, as training does.

    Raises:
        DataError: the dataset is missing or corrupted.
    """
    hp: Any = model.hparams
    confusion = _ConfusionMatrixCallback(int(hp.num_classes))
    with quiet_lightning():
        trainer = quiet_trainer(accelerator, precision, callbacks=[confusion])
        (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    matrix = confusion.matrix.compute().cpu()
    names = (
        datamodule.class_names
        if len(datamodule.class_names) == len(matrix)
        else [str(i) for i in range(len(matrix))]
    )
    return Evaluation(
        test_loss=float(metrics["test/loss"]),
        test_acc=float(metrics["test/acc"]),
        confusion_matrix=matrix,
        class_names=names,
        predictions=torch.cat(confusion.preds) if confusion.preds else None,
        targets=torch.cat(confusion.targets) if confusion.targets else None,
    )


def format_evaluation(result: Evaluation) -> str:
    """The report ``evaluate`` prints: loss, accuracy, per-class accuracy (each with its 95% Wilson score
    interval, the method named once), confusion matrix."""
    ci = result.test_acc_ci
    shown_ci = f"; {format_interval(ci)}" if ci is not None else ""
    lines = [
        f"Test loss:     {result.test_loss:.4f}",
        f"Test accuracy: {result.test_acc:.2%}  ({result.num_correct}/{result.num_images}{shown_ci}; "
        f"test_acc {result.test_acc!r})",
        f"Intervals:     {INTERVAL_METHOD}s (CI), from the counts of right and wrong images",
        "",
        "Per-class accuracy:",
    ]
    matrix = result.confusion_matrix
    names = [printable(n) for n in result.class_names]  # a class folder's name may hold terminal escapes
    width = max(len(n) for n in names)
    rows = zip(names, result.per_class_acc, result.per_class_acc_ci, strict=True)
    for i, (name, acc, interval) in enumerate(rows):
        shown = f"{acc:7.2%}" if acc is not None else "    n/a"
        counts = f"{int(matrix[i, i])}/{int(matrix[i].sum())}"
        lines.append(f"  {i:>2}  {name:<{width}}  {shown}  ({counts}{f'; {format_interval(interval)}' if interval else ''})")
    cell = max(4, len(str(int(matrix.max()))) + 1)
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):"]
    lines.append("    " + "".join(f"{j:>{cell}}" for j in range(len(matrix))))
    for i, row in enumerate(matrix.tolist()):
        lines.append(f"  {i:>2}" + "".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------- predict
def predict_tensors(
    model: MNISTClassifier, images: Tensor, accelerator: str = "auto", batch_size: int = 256
) -> Tensor:
    """Class probabilities ``(N, C)`` of normalised images ``(N, C, H, W)`` through ``Trainer.predict``."""
    loader = InMemoryBatchLoader(
        images, torch.zeros(len(images), dtype=torch.long), batch_size, shuffle=False, seed=0
    )
    with quiet_lightning():
        batches = quiet_trainer(accelerator).predict(model, dataloaders=loader)
    assert batches is not None
    return torch.cat([b.float().cpu() for b in batches])  # type: ignore[union-attr]


def prepare_input(
    source: ImageSource,
    info: DatasetInfo,
    input_shape: Sequence[int],
    invert: str = "auto",
    fit: str = "frame",
) -> Tensor:
    """One image as the model's normalised input ``(C, H, W)``: how ``predict`` and ``serve`` read every image.

    An image-folder dataset's images are read as its training images were (:func:`lit_mnist.folder.read_image`:
    ``invert`` and ``fit`` do not apply); the MNIST family's by :func:`lit_mnist.images.prepare_image`.

    Args:
        source: A file, a file's bytes, or a uint8 array of pixels (:data:`lit_mnist.images.ImageSource`).
        info: The model's dataset (normalisation).
        input_shape: The model's ``(C, H, W)``.
        invert: ``auto``, ``yes`` or ``no`` (:func:`lit_mnist.images.should_invert`).
        fit: ``frame`` or ``digit`` (:func:`lit_mnist.images.prepare_image`).

    Raises:
        ImageError: the image cannot be read or is refused.
    """
    channels, size = int(input_shape[0]), (int(input_shape[1]), int(input_shape[2]))
    mean = torch.tensor(info.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).reshape(-1, 1, 1)
    if info.is_folder:
        pixels = read_image(source, size[0], "grayscale" if channels == 1 else "rgb")
        return pixels.float().div_(255).sub_(mean).div_(std)
    return prepare_image(source, float(mean.flatten()[0]), float(std.flatten()[0]), size, invert, fit)


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
    info: DatasetInfo,
    invert: str = "auto",
    fit: str = "frame",
    accelerator: str = "auto",
    batch_size: int = 256,
) -> list[Prediction]:
    """Classify image files; a file that cannot be read gets a :class:`Prediction` with ``error``.

    Each file is read by :func:`prepare_input`.
    """
    hp: Any = model.hparams
    results = [Prediction(file=str(f)) for f in files]
    tensors: list[Tensor] = []
    readable: list[Prediction] = []
    for result in results:
        try:
            tensors.append(prepare_input(result.file, info, hp.input_shape, invert, fit))
            readable.append(result)
        except ImageError as err:
            result.error = str(err)
    if tensors:
        probabilities = predict_tensors(model, torch.stack(tensors), accelerator, batch_size)
        names = info.class_names
        for result, probs in zip(readable, probabilities, strict=True):
            label = int(probs.argmax())
            result.label = label
            result.probability = float(probs[label])
            result.class_name = names[label] if label < len(names) else str(label)
            result.probabilities = [round(float(p), 6) for p in probs]
    return results


def write_predictions(predictions: Sequence[Prediction], output: Path | None) -> None:
    """Write the classified files as CSV (stdout or ``.csv``) or JSON (``.json``); errors are left out.

    Both name each file's class (``class_name``) with its index beside it (``label``): a folder dataset's
    index is the position of its class folder in sorted order, not the folder's name. The CSV, a text a
    terminal may show, has file and class names escaped where they hold control characters
    (:func:`lit_mnist.runtime.printable`); the JSON has them as they are (JSON escapes them itself).
    """
    done = [p for p in predictions if p.error is None]
    if output is not None and output.suffix.lower() == ".json":
        records = [
            {k: v for k, v in vars(p).items() if k != "error"} for p in done
        ]  # file, label, probability, class_name, probabilities
        write_atomic(output, json.dumps(records, indent=2) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # label: the class's index, as in the JSON
    writer.writerow(["file", "class_name", "label", "probability"])
    for p in done:
        writer.writerow([printable(p.file), printable(str(p.class_name)), p.label, f"{p.probability:.4f}"])
    if output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        write_atomic(output, buffer.getvalue())
