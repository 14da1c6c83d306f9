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
from lit_mnist.datasets import DATASETS
from lit_mnist.errors import ImageError, UsageError
from lit_mnist.folder import read_image
from lit_mnist.images import prepare_image
from lit_mnist.loader import InMemoryBatchLoader
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.module import MNISTClassifier
from lit_mnist.runtime import PRECISIONS, quiet_lightning, quiet_trainer, write_atomic

__all__ = [
    "Evaluation",
    "Prediction",
    "evaluate",
    "format_evaluation",
    "predict_files",
    "predict_tensors",
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
    ckpt: LoadedCheckpoint, dataset: str, data_dir: str | None = None, batch_size: int | None = None
) -> TensorDataModule:
    """The datamodule of ``dataset`` with the checkpoint's data settings.

    The data folder is ``data_dir`` when given, else the checkpoint's ``data_dir`` when it holds the
    dataset's raw files (a folder dataset: when it exists), else the default (``$LIT_MNIST_DATA_DIR``
    or ``./data``). A folder dataset is normalised with the checkpoint's recorded mean and std.

    Raises:
        DataError: a folder dataset's folder is missing or holds no class folders.
        UsageError: a folder dataset's classes are not those the checkpoint was trained on.
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
    if "mean" in accepted and datamodule.class_names != dataset_info(ckpt, dataset).class_names:
        raise UsageError(
            f"--data-dir {data_dir} holds the classes {', '.join(datamodule.class_names)}; {ckpt.path} was "
            f"trained on {', '.join(dataset_info(ckpt, dataset).class_names)}"
        )
    return datamodule


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

    An image-folder dataset's files are read as its training images were (:func:`lit_mnist.folder.read_image`:
    ``invert`` and ``fit`` do not apply); the MNIST family's by :func:`lit_mnist.images.prepare_image`.
    """
    hp: Any = model.hparams
    size = (int(hp.input_shape[1]), int(hp.input_shape[2]))
    channels = int(hp.input_shape[0])
    results = [Prediction(file=str(f)) for f in files]
    tensors: list[Tensor] = []
    readable: list[Prediction] = []
    mean = torch.tensor(info.mean, dtype=torch.float32).reshape(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).reshape(-1, 1, 1)
    for result in results:
        try:
            if info.is_folder:
                color = "grayscale" if channels == 1 else "rgb"
                pixels = read_image(result.file, size[0], color)
                tensors.append(pixels.float().div_(255).sub_(mean).div_(std))
            else:
                tensors.append(
                    prepare_image(result.file, float(mean[0, 0, 0]), float(std[0, 0, 0]), size, invert, fit)
                )
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
    index is the position of its class folder in sorted order, not the folder's name.
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
        writer.writerow([p.file, p.class_name, p.label, f"{p.probability:.4f}"])
    if output is None:
        sys.stdout.write(buffer.getvalue())
    else:
        write_atomic(output, buffer.getvalue())
