"""The one way lit_mnist writes a checkpoint (atomic and durable) and reads one (``weights_only=True``).

Training saves through :class:`AtomicCheckpointIO`, Lightning's ``CheckpointIO`` extension point: every
checkpoint is written to a temporary file in its own folder, synced, checked, then renamed into place.

Training's resume (:func:`check_resumable`) and evaluate, predict and export (:func:`load_checkpoint`)
read the file with the same :func:`read_checkpoint`, so a missing, truncated, foreign or malicious
file gets the same message from every command. A file that would need to run Python code to load
is refused, never unpickled.

Names outside ``__all__`` serve lit_mnist's own modules (the commands, the run) and may change.
"""

from __future__ import annotations

import errno
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import lightning as L
import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_mnist.datachange import class_change, data_change
from lit_mnist.errors import CheckpointError, CheckpointWriteError
from lit_mnist.groups import resume_mismatch
from lit_mnist.module import MNISTClassifier
from lit_mnist.runtime import first_line, printable, write_durable

if TYPE_CHECKING:
    from lit_mnist.data import TensorDataModule

__all__ = [
    "CONFIG_NAME",
    "AtomicCheckpointIO",
    "DatasetRecord",
    "LoadedCheckpoint",
    "check_dataset",
    "check_resumable",
    "load_checkpoint",
    "read_checkpoint",
    "read_run_config",
]

#: The run's resolved config, written by training into its ``version_N`` folder.
CONFIG_NAME = "config.yaml"
#: The checkpoint entry that records the dataset a model was trained on (:class:`DatasetRecord`).
DATA_KEY = "lit_mnist_data"
#: The module's hyperparameters that make a run what it is: resuming with another value is refused.
RUN_DEFINING = (
    "model", "hidden_sizes", "cnn_channels", "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size", "num_classes",
    "input_shape", "optimizer", "scheduler",
)  # fmt: skip


class DatasetRecord(L.Callback):
    """Writes the dataset into every checkpoint (``checkpoint["lit_mnist_data"]``): its ``--dataset``
    name, class names, normalisation, number of classes, image shape and the fingerprint of its files
    (:meth:`lit_mnist.data.TensorDataModule.fingerprint`).

    The datamodule's hyperparameters (saved by Lightning) say where the files were and how they were
    batched, not which dataset they were: with this record, a resume with another ``--dataset`` or other
    classes is refused and one on other files is said (:func:`check_resumable`), and evaluate, predict and
    export use the checkpoint's dataset (evaluate says how the data it is given differ).

    Args:
        dataset: The ``--dataset`` name (``mnist``, ``fashion-mnist``, ``kmnist``, ``folder``).
        record: Plain values only (the checkpoint is read with ``weights_only=True``). ``None`` (the
            default): the trainer's datamodule's ``dataset_record()`` when the checkpoint is saved (after
            ``setup``, so a normalisation computed from the training images is known).
    """

    def __init__(self, dataset: str, record: dict[str, Any] | None = None) -> None:
        self.dataset = dataset
        self.record = record

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        record = self.record
        if record is None:
            # the Trainer's documented `datamodule` attribute; a datamodule without a record adds none
            describe = getattr(getattr(trainer, "datamodule", None), "dataset_record", None)
            record = describe() if callable(describe) else {}
        checkpoint[DATA_KEY] = {"dataset": self.dataset, **record}


def _recorded_dataset(raw: Mapping[str, Any], path: str | Path) -> str | None:
    """The ``--dataset`` a checkpoint was trained on: its record, else its run's ``config.yaml``, else ``None``."""
    record = raw.get(DATA_KEY)
    if isinstance(record, dict) and isinstance(record.get("dataset"), str):
        return str(record["dataset"])
    from_run = read_run_config(path).get("dataset")
    return from_run if isinstance(from_run, str) else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written so that no reader ever finds a partial file.

    Lightning's own writer stages a checkpoint in the system's temporary folder and moves it into place;
    when the log folder is on another filesystem (NFS, Lustre, a tmpfs; the usual cluster layout) the
    move is a copy, and a process killed during it, or a disk that fills, leaves a truncated file under
    the checkpoint's name. This one writes into a temporary file *beside* the target (one rename, never
    a copy), flushes and ``fsync``-s it, checks that it is a complete checkpoint archive, renames it over
    the target and syncs the folder (:func:`lit_mnist.runtime.write_durable`). When any of it fails the
    temporary file is removed, the file of that name is left as it was, and
    :class:`~lit_mnist.errors.CheckpointWriteError` (one line, naming the file) is raised: Lightning's
    ``ModelCheckpoint`` then never records the checkpoint as best or last. A process killed mid-save
    leaves a hidden ``.partial`` file that the next run in the folder removes
    (:func:`lit_mnist.runtime.remove_stale_partials`). torch reports a failed write (a full disk) as a
    ``RuntimeError`` of its archive writer; it is handled as the ``OSError`` it is (:func:`_torch_save`).

    Paths with a protocol (``s3://``, ...) go to Lightning's writer unchanged.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_durable(target, lambda f: _torch_save(checkpoint, f), check=_check_archive)
        except OSError as err:
            raise CheckpointWriteError(target, first_line(err)) from None


#: What torch's archive writer says when writing the file failed (``[enforce fail at inline_container.cc:672]
#: . unexpected pos 768 vs 662``, ``PytorchStreamWriter failed writing file data/0``).
_TORCH_WRITE_FAILED = re.compile(r"inline_container|unexpected pos|PytorchStreamWriter failed")


def _torch_save(checkpoint: dict[str, Any], f: IO[bytes]) -> None:
    """``torch.save(checkpoint, f)``, raising ``OSError`` when writing ``f`` fails.

    When ``f.write`` raises (``ENOSPC``), torch's archive writer goes on to close the archive, fails
    there too, and raises a ``RuntimeError`` with the ``OSError`` as its context: that ``OSError`` is
    raised instead (an ``EIO`` one with torch's first line when there is none). Other errors (an object
    that cannot be pickled) pass unchanged.
    """
    try:
        torch.save(checkpoint, f)
    except RuntimeError as err:
        if (failed := _write_failure(err)) is None:
            raise
        raise failed from None


def _write_failure(err: RuntimeError) -> OSError | None:
    """The ``OSError`` behind torch's ``RuntimeError`` (its cause or context); when there is none and torch's
    message says a write failed, an ``EIO`` one; else ``None``."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if _TORCH_WRITE_FAILED.search(str(err)):
        return OSError(errno.EIO, f"torch could not write the file ({first_line(err)})")
    return None


def _check_archive(path: Path) -> None:
    """Check that ``path`` is a complete ``torch.save`` archive: its zip directory (at the end of the file)
    reads, it holds a pickle, and every member lies inside the file.

    Raises:
        OSError: ``EIO``, saying what is wrong.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise OSError(errno.EIO, f"the written file is not a complete archive ({err})") from None
    if not any(m.filename.endswith("data.pkl") for m in members):
        raise OSError(errno.EIO, "the written file holds no data.pkl")
    if any(m.header_offset + m.compress_size > size for m in members):
        raise OSError(errno.EIO, "the written file is shorter than its archive directory says")


@dataclass
class LoadedCheckpoint:
    """A checkpoint read safely: the model in eval mode on the CPU and the run's data settings.

    Attributes:
        path: The checkpoint file.
        model: The trained module (``eval()``, on the CPU, float32 or the dtype it was saved in).
        datamodule_hparams: The datamodule's hyperparameters saved with it (``data_dir``,
            ``batch_size``, ``loader``, ...); empty when the checkpoint has none.
        run_config: The run's ``config.yaml`` next to the checkpoint folder, or empty.
        dataset: The ``--dataset`` recorded in the checkpoint (:class:`DatasetRecord`), or ``None``
            (a checkpoint written before lit_mnist recorded it).
        data_record: The whole record (class names, ``mean``, ``std``, ``num_classes``,
            ``image_shape``, ``fingerprint``), or empty.
    """

    path: Path
    model: MNISTClassifier
    datamodule_hparams: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    data_record: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: one line: no such file, not a file, not a complete zip archive (truncated,
            or another kind of file), refused (it would run code when unpickled), unreadable, or
            no ``state_dict`` in it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; give a .ckpt file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a readable lit_mnist checkpoint: not a complete zip archive "
            "(truncated, or another kind of file)"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a forbidden global, a damaged member of the archive, ...
        raise CheckpointError(_load_failure(path, err)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict in it)")
    return raw


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
            f"{path} is not a readable lit_mnist checkpoint: it was refused, as loading it would need "
            f"Python objects other than tensors and plain values ({detail or 'weights_only unpickler'}); "
            "lit_mnist loads checkpoints with weights_only=True only"
        )
    return f"{path} is not a readable lit_mnist checkpoint ({first_line(err)})"


def _first_difference(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """The first parameter name whose presence or shape differs between two state dicts, or ``None``."""
    want = {k: tuple(v.shape) for k, v in expected.items()}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in found.items()}
    if want == have:
        return None
    return (sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]])[0]


def check_dataset(path: str | Path, dataset: str) -> None:
    """Check that the checkpoint ``path`` was trained on ``dataset`` (when it says; see :func:`_recorded_dataset`).

    Raises:
        CheckpointError: what :func:`read_checkpoint` raises, or the two datasets.
    """
    if (saved := _recorded_dataset(read_checkpoint(path), path)) not in (None, dataset):
        raise CheckpointError(
            f"{path} was trained on --dataset {saved} and this run asks for --dataset {dataset}; resume it "
            f"with --dataset {saved} (see its run's {CONFIG_NAME}: --config), or start a new run without "
            "--ckpt-path"
        )


def _applies(key: str, model: object) -> bool:
    """Whether hyperparameter ``key`` shapes the network ``model`` (the saved ``--model``): the MLP's widths
    do not shape the CNN, nor the CNN's the MLP, so resuming with them changed is not refused."""
    if key == "hidden_sizes":
        return model != "cnn"
    if key.startswith("cnn_"):
        return model == "cnn"
    return True


def check_resumable(
    path: str | Path, model: MNISTClassifier, datamodule: TensorDataModule | None = None
) -> str | None:
    """Check that training can resume ``model`` from ``path``: a readable checkpoint of the same model
    and optimizer (:data:`RUN_DEFINING`) and shapes, written with the model's group size
    (``steps_per_batch``), and, given the run's ``datamodule``, of the same classes (names and order).
    The dataset's name: :func:`check_dataset`.

    Returns:
        One line saying how ``datamodule``'s files differ from those the checkpoint was trained on when
        its classes are the same (images added or removed: the run may resume, and should say so), else
        ``None``.

    Raises:
        CheckpointError: what :func:`read_checkpoint` raises, the classes that changed, the flag that
            differs, the first parameter whose shape differs from ``model``'s, or the group sizes that differ.
    """
    raw = read_checkpoint(path)
    record = raw[DATA_KEY] if isinstance(raw.get(DATA_KEY), dict) else {}
    note = _resumable_data(path, record, datamodule) if datamodule is not None else None
    saved_hparams = raw.get("hyper_parameters")
    if isinstance(saved_hparams, dict):
        for key in RUN_DEFINING:
            if not _applies(key, saved_hparams.get("model")):
                continue
            if key in saved_hparams and _defining(key, saved_hparams) != _defining(key, model.hparams):
                raise CheckpointError(_other_hparam(path, key, saved_hparams[key], model.hparams.get(key)))
    if "optimizer_states" not in raw or "loops" not in raw:  # ModelCheckpoint(save_weights_only=True)
        raise CheckpointError(
            f"{path} holds the weights only (no optimizer state or training progress, as a checkpoint saved "
            "with save_weights_only): it cannot resume training; resume from the run's last.ckpt, or use "
            "it with evaluate.py, predict.py or export.py"
        )
    if why := resume_mismatch(raw, model.steps_per_batch):
        raise CheckpointError(f"{path} {why} (see its run's {CONFIG_NAME}: --config)")
    if (wrong := _first_difference(model.state_dict(), raw["state_dict"])) is not None:
        raise CheckpointError(
            f"{path} holds another model shape (first difference: {wrong}); pass the flags it was trained "
            f"with (see its run's {CONFIG_NAME}: --config)"
        )
    return note


def _other_hparam(path: str | Path, key: str, saved: Any, asked: Any) -> str:
    """Why a checkpoint written with another ``key`` cannot be resumed, and what to do, in one line."""
    if key == "num_classes":  # no flag sets it: it is the data's
        return (
            f"{path} holds a model of {saved} classes and this run's data has {asked}; resume it on the data "
            f"it was trained on (see its run's {CONFIG_NAME}: --config), or start a new run without --ckpt-path"
        )
    if key == "input_shape":  # the data's too: --image-size and --color of a folder dataset
        return (
            f"{path} holds a model of {_shown(saved)} (C H W) images and this run's data gives {_shown(asked)}; "
            f"resume it on the data and with the --image-size and --color it was trained with (see its run's "
            f"{CONFIG_NAME}: --config), or start a new run without --ckpt-path"
        )
    return (
        f"{path} was written with --{key.replace('_', '-')} {_shown(saved)} and this run asks for {_shown(asked)}; "
        f"resume it with the flags it was started with (see its run's {CONFIG_NAME}: --config)"
    )


# --------------------------------------------------------------------------- the data a checkpoint was trained on
def _resumable_data(path: str | Path, record: Mapping[str, Any], datamodule: TensorDataModule) -> str | None:
    """Refuse other classes than the checkpoint's (:func:`class_change`); say how other files of the same
    classes differ (:func:`data_change`)."""
    where = _data_place(datamodule)
    saved = record.get("classes")
    folders = record.get("dataset") == "folder"
    if isinstance(saved, list) and (change := class_change(saved, datamodule.class_names, folders)):
        rule = "its place among the sorted class folder names" if folders else "its index"
        raise CheckpointError(
            f"{path} was trained on other classes than {where} holds: {change}; resumed, images would train "
            f"under another class's label (a class is {rule}): "
            f"{'name the folders as they were' if folders else 'resume on the data it was trained on'}, "
            "or start a new run without --ckpt-path"
        )
    if change := data_change(record.get("fingerprint"), datamodule.fingerprint()):
        return (
            f"{where} holds other files than {path} was trained on ({change}); training resumes on them, "
            "with the validation split drawn from them anew"
        )
    return None


def _data_place(datamodule: Any) -> str:
    """Where a datamodule's files are, for a message: ``--data-dir X``, else its class's name."""
    data_dir = getattr(datamodule, "data_dir", None)
    return f"--data-dir {printable(str(data_dir))}" if data_dir else type(datamodule).__name__


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _defining(key: str, hparams: Mapping[str, Any]) -> Any:
    """``hparams[key]`` as the network it builds sees it: one kernel size is every block's (``3`` = ``3 3 3``)."""
    value = _plain(hparams.get(key))
    channels = hparams.get("cnn_channels")
    if (
        key == "cnn_kernel_sizes"
        and isinstance(value, list)
        and len(value) == 1
        and isinstance(channels, list | tuple)
    ):
        return value * len(channels)
    return value


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def load_checkpoint(path: str | Path, model_cls: type[MNISTClassifier] = MNISTClassifier) -> LoadedCheckpoint:
    """Read a checkpoint written by lit_mnist's training and rebuild its model.

    Args:
        path: A ``.ckpt`` file.
        model_cls: The LightningModule class to rebuild (a subclass with its own ``build_network``).

    Raises:
        CheckpointError: one line saying what is wrong: what :func:`read_checkpoint` raises, no
            hyperparameters (not written by lit_mnist's training), weights that do not fit the
            model its hyperparameters build, or weights that are NaN or infinite.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    if not isinstance(raw.get("hyper_parameters"), dict):
        raise CheckpointError(f"{path} has no hyper_parameters: it was not written by lit_mnist's training")
    try:
        model = model_cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # odd hyperparameters (ConfigError), a state_dict that does not fit
        # torch's state_dict errors put the first problem on the second line: keep both, in one line
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path} does not fit {model_cls.__name__} ({detail})") from None
    model.eval()
    broken = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if broken:  # a diverged run's weights: every prediction would be nan
        raise CheckpointError(
            f"{path} holds NaN or infinite weights ({broken[0]}{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}): "
            "the run diverged before it was saved; use a checkpoint from before, or train again with a lower --lr"
        )
    dm_hparams = raw.get("datamodule_hyper_parameters")
    return LoadedCheckpoint(
        path=path,
        model=model,
        datamodule_hparams=dict(dm_hparams) if isinstance(dm_hparams, dict) else {},
        run_config=read_run_config(path),
        dataset=raw[DATA_KEY].get("dataset") if isinstance(raw.get(DATA_KEY), dict) else None,
        data_record=dict(raw[DATA_KEY]) if isinstance(raw.get(DATA_KEY), dict) else {},
    )


def read_run_config(ckpt_path: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` of the run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``{}``."""
    config = Path(ckpt_path).resolve().parent.parent / CONFIG_NAME
    try:
        loaded = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
