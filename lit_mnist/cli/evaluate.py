"""``evaluate``: test a checkpoint: loss, accuracy, per-class accuracy and the confusion matrix.

``python scripts/evaluate.py`` and ``lit-mnist evaluate`` both end up in :func:`main`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from lit_mnist.checkpoints import CONFIG_NAME
from lit_mnist.cli.common import check_output, checkpoint_parser, load_or_exit, parse_or_exit, usage_exit
from lit_mnist.errors import DataError, UsageError
from lit_mnist.inference import build_datamodule, evaluate, format_evaluation, run_precision
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.runtime import ACCELERATORS, PRECISIONS, first_line, write_atomic


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
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "evaluate.py") -> int:
    """Entry point of ``scripts/evaluate.py``. Returns the exit status."""
    cfg = parse_or_exit(get_parser(prog), argv, prog)
    if cfg.batch_size is not None and cfg.batch_size < 1:
        usage_exit(prog, f"--batch-size must be >= 1, got {cfg.batch_size}")
    check_output(prog, "--json", cfg.json)  # before the evaluation, so that a typo costs nothing
    ckpt, info, source = load_or_exit(cfg, prog)
    dataset = info.name
    precision = cfg.precision or run_precision(ckpt.run_config)
    try:
        datamodule = build_datamodule(ckpt, dataset, cfg.data_dir, cfg.batch_size)
        result = evaluate(ckpt.model, datamodule, cfg.accelerator, precision)
    except UsageError as err:
        usage_exit(prog, str(err))
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    where = datamodule.raw_folder if isinstance(datamodule, MNISTDataModule) else datamodule.source(False)
    print(f"Checkpoint:    {ckpt.path}")
    print(f"Dataset:       {dataset} ({source}), test set in {where}")
    print(format_evaluation(result))
    if cfg.json:
        record = {
            "checkpoint": str(ckpt.path),
            "dataset": dataset,
            "data_dir": getattr(datamodule, "data_dir", None),
        }
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
