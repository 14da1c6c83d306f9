"""``evaluate``: test a checkpoint: loss, accuracy, per-class accuracy and the confusion matrix, each
accuracy with its 95% interval; ``--compare OTHER.ckpt`` tests both models on the same images and says,
with McNemar's exact test, whether they differ.

``python scripts/evaluate.py`` and ``lit-mnist evaluate`` both end up in :func:`main`. The checkpoint may
come first without its flag: ``lit-mnist evaluate A.ckpt --compare B.ckpt``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jsonargparse import ArgumentParser, Namespace

from lit_mnist.checkpoints import CONFIG_NAME
from lit_mnist.cli.common import check_output, checkpoint_parser, load_or_exit, parse_or_exit, usage_exit
from lit_mnist.errors import CheckpointError, DataError, UsageError
from lit_mnist.inference import (
    Evaluation,
    build_datamodule,
    data_difference,
    evaluate,
    format_evaluation,
    run_precision,
)
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.runtime import ACCELERATORS, PRECISIONS, first_line, write_atomic
from lit_mnist.stats import COMPARE_METHOD, compare_sentence, format_interval, mcnemar_exact

if TYPE_CHECKING:
    from lit_mnist.checkpoints import LoadedCheckpoint
    from lit_mnist.inference import DatasetInfo


def get_parser(prog: str = "evaluate.py") -> ArgumentParser:
    """Flags of ``evaluate``."""
    parser = checkpoint_parser(
        prog, "Test a checkpoint: loss, accuracy, per-class accuracy, confusion matrix."
    )
    parser.add_argument(
        "--data-dir",
        type=str | None,
        default=None,
        help="Folder holding <Dataset>/raw (default: the checkpoint's, else $LIT_MNIST_DATA_DIR or ./data).",
    )
    parser.add_argument("--batch-size", type=int | None, default=None, help="Default: the checkpoint's.")
    parser.add_argument("--accelerator", type=Literal[ACCELERATORS], default="auto")
    parser.add_argument(
        "--precision",
        type=Literal[PRECISIONS] | None,
        default=None,
        help=f"Default: the run's {CONFIG_NAME}, else 32-true.",
    )
    parser.add_argument("--json", type=str | None, default=None, help="Also write the results to this file.")
    parser.add_argument(
        "--allow-other-data",
        action="store_true",
        help="Evaluate on classes other than the checkpoint's (as many, other names): its class i against "
        "the data's class i.",
    )
    parser.add_argument(
        "--compare",
        type=str | None,
        default=None,
        help="Another checkpoint of the same dataset: test both on the same images and say whether they "
        "differ (McNemar's exact test on the images where one is right and the other wrong).",
    )
    return parser


def checkpoint_first(args: list[str], prog: str) -> list[str]:
    """``A.ckpt --flags`` as ``--ckpt-path A.ckpt --flags``: the checkpoint may come first, without its flag."""
    if not args or args[0].startswith("-"):
        return args
    if any(arg == "--ckpt-path" or arg.startswith("--ckpt-path=") for arg in args):
        usage_exit(prog, f"give the checkpoint once: {args[0]} or --ckpt-path, not both")
    return ["--ckpt-path", *args]


def main(argv: Sequence[str] | None = None, prog: str = "evaluate.py") -> int:
    """Entry point of ``scripts/evaluate.py``. Returns the exit status."""
    args = checkpoint_first(list(sys.argv[1:] if argv is None else argv), prog)
    cfg = parse_or_exit(get_parser(prog), args, prog)
    if cfg.batch_size is not None and cfg.batch_size < 1:
        usage_exit(prog, f"--batch-size must be >= 1, got {cfg.batch_size}")
    check_output(prog, "--json", cfg.json)  # before the evaluation, so that a typo costs nothing
    ckpt, info, source = load_or_exit(cfg, prog)
    other = load_compared(cfg, prog, ckpt, info) if cfg.compare else None  # refused before any work
    dataset = info.name
    precision = cfg.precision or run_precision(ckpt.run_config)
    try:
        datamodule = build_datamodule(ckpt, dataset, cfg.data_dir, cfg.batch_size, cfg.allow_other_data)
        result = evaluate(ckpt.model, datamodule, cfg.accelerator, precision)
        if other is not None:  # the same images: this checkpoint's data folder, the other's normalisation
            data_dir = getattr(datamodule, "data_dir", cfg.data_dir)
            other_data = build_datamodule(other, dataset, data_dir, cfg.batch_size, cfg.allow_other_data)
            other_precision = cfg.precision or run_precision(other.run_config)
            other_result = evaluate(other.model, other_data, cfg.accelerator, other_precision)
            b, c = discordant_pairs(result, other_result)
    except UsageError as err:
        usage_exit(prog, str(err))
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    where = datamodule.raw_folder if isinstance(datamodule, MNISTDataModule) else datamodule.source(False)
    print(f"Checkpoint:    {ckpt.path}")
    print(f"Dataset:       {dataset} ({source}), test set in {where}")
    if differs := data_difference(ckpt, info, datamodule):  # other files (a note), or classes (allowed)
        print(f"Data differs:  from what {ckpt.path} was trained on: {differs}")
    print(format_evaluation(result))
    record: dict[str, Any] = {
        "checkpoint": str(ckpt.path),
        "dataset": dataset,
        "data_dir": getattr(datamodule, "data_dir", None),
        "data_differs": differs,
    }
    if other is not None:
        record["compare"] = print_comparison(ckpt.path, other.path, result, other_result, b, c)
    if cfg.json:
        try:
            write_atomic(Path(cfg.json), json.dumps({**record, **result.to_dict()}, indent=2) + "\n")
        except OSError as err:  # the disk filled, the folder went away: the results are printed above
            print(
                f"{prog}: error: --json {cfg.json} was not written ({first_line(err)}); the results are above",
                file=sys.stderr,
            )
            return 1
        print(f"\nWrote {cfg.json}")
    return 0


# --------------------------------------------------------------------------- --compare
def load_compared(cfg: Namespace, prog: str, ckpt: LoadedCheckpoint, info: DatasetInfo) -> LoadedCheckpoint:
    """The ``--compare`` checkpoint, refused (one line, exit 2) when its model does not take the same
    test images as ``ckpt``'s: another dataset, other classes or another input shape."""
    from lit_mnist.checkpoints import load_checkpoint
    from lit_mnist.inference import dataset_info, resolve_dataset

    try:
        other = load_checkpoint(cfg.compare)
        other_info = dataset_info(other, resolve_dataset(cfg.dataset, other)[0])
    except (CheckpointError, UsageError) as err:
        usage_exit(prog, f"--compare {err}")
    mine, theirs = describe(ckpt, info), describe(other, other_info)
    if mine != theirs:
        usage_exit(
            prog,
            f"--compare {other.path} takes {theirs} and {ckpt.path} takes {mine}; {COMPARE_METHOD} needs both "
            "models tested on the same images",
        )
    return other


def discordant_pairs(first: Evaluation, second: Evaluation) -> tuple[int, int]:
    """``(b, c)``: how many test images only ``first`` classifies right, and only ``second``.

    The two evaluations must be of the same images in the same order (what McNemar's test pairs).

    Raises:
        UsageError: they are not (another number of images, or other labels).
    """
    if first.predictions is None or second.predictions is None or first.targets is None:
        raise UsageError("both evaluations need their per-image predictions (evaluate() records them)")
    if second.targets is None or not torch.equal(first.targets, second.targets):
        raise UsageError(
            "the two checkpoints were not tested on the same images (another number of test images, or other "
            "labels); give both the same --data-dir"
        )
    right_first = first.predictions == first.targets
    right_second = second.predictions == second.targets
    return int((right_first & ~right_second).sum()), int((~right_first & right_second).sum())


def describe(ckpt: LoadedCheckpoint, info: DatasetInfo) -> str:
    """``"mnist: 10 classes (0, 1, ...) of [1, 28, 28] images"``: what a model takes, to compare two."""
    hp: Any = ckpt.model.hparams
    names = ", ".join(info.class_names[:12]) + (", ..." if len(info.class_names) > 12 else "")
    return f"{info.name}: {int(hp.num_classes)} classes ({names}) of {list(hp.input_shape)} images"


def short_names(first: Path, second: Path) -> tuple[str, str]:
    """The shortest path endings that tell two checkpoints apart (``version_0/checkpoints/last.ckpt``)."""
    a, b = first.resolve().parts, second.resolve().parts
    for k in range(1, max(len(a), len(b)) + 1):
        if a[-k:] != b[-k:]:
            return str(Path(*a[-k:])), str(Path(*b[-k:]))
    return str(first), str(second)  # the same file


def print_comparison(
    first: Path, second: Path, result: Evaluation, other: Evaluation, b: int, c: int
) -> dict[str, Any]:
    """Print the other checkpoint's accuracy and McNemar's sentence; return what ``--json`` records."""
    names = short_names(first, second)
    ci = other.test_acc_ci
    shown = f"; {format_interval(ci)}" if ci is not None else ""
    print(f"\nCompared with:  {second}")
    print(f"Its accuracy:   {other.test_acc:.2%}  ({other.num_correct}/{other.num_images}{shown})")
    print(f"On the same {result.num_images:,} test images: {compare_sentence(b, c, *names)}")
    return {
        "checkpoint": str(second),
        "test_acc": other.test_acc,
        "test_acc_ci": list(ci) if ci is not None else None,
        "only_this_right": b,
        "only_other_right": c,
        "p_value": mcnemar_exact(b, c),
        "method": COMPARE_METHOD,
    }
