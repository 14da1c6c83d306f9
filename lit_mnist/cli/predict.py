"""``predict``: classify image files (PNG, JPEG, ...) with a checkpoint; CSV or JSON out.

``python scripts/predict.py`` and ``lit-mnist predict`` both end up in :func:`main`. A file that
cannot be read gets one line on stderr; the others are still classified, and the exit status is 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser

from lit_mnist.cli.common import check_output, checkpoint_parser, load_or_exit, parse_or_exit, usage_exit
from lit_mnist.images import FIT_CHOICES, INVERT_CHOICES
from lit_mnist.inference import predict_files, write_predictions
from lit_mnist.runtime import ACCELERATORS, first_line, printable


def get_parser(prog: str = "predict.py") -> ArgumentParser:
    """Flags of ``predict``."""
    parser = checkpoint_parser(prog, "Classify image files (PNG, JPEG, ...) with a checkpoint.")
    parser.add_argument("files", type=str, nargs="+", help="Image files.")
    parser.add_argument(
        "--output", type=str | None, default=None, help="Write the results to a .csv or .json file."
    )
    parser.add_argument(
        "--invert",
        type=Literal[INVERT_CHOICES],
        default="auto",
        help="auto: invert dark-on-light images (the model expects light strokes on dark).",
    )
    parser.add_argument(
        "--fit",
        type=Literal[FIT_CHOICES],
        default="frame",
        help="frame: pad to square and resize; digit: crop and centre the strokes like MNIST's digits.",
    )
    parser.add_argument("--accelerator", type=Literal[ACCELERATORS], default="auto")
    parser.add_argument("--batch-size", type=int, default=256, help="Images per batch.")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "predict.py") -> int:
    """Entry point of ``scripts/predict.py``. Returns 1 when some file could not be classified."""
    cfg = parse_or_exit(get_parser(prog), argv, prog, positionals=("files",))
    output = Path(cfg.output) if cfg.output else None
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        usage_exit(prog, f"--output must end in .csv or .json, got {cfg.output}")
    if cfg.batch_size < 1:
        usage_exit(prog, f"--batch-size must be >= 1, got {cfg.batch_size}")
    check_output(prog, "--output", output)  # before the work, so that a typo costs nothing
    ckpt, info, _ = load_or_exit(cfg, prog)
    predictions = predict_files(
        ckpt.model, cfg.files, info, cfg.invert, cfg.fit, cfg.accelerator, cfg.batch_size
    )
    for p in predictions:
        if p.error is not None:
            print(f"{prog}: error: {printable(p.file)}: {p.error}", file=sys.stderr)
    failed = sum(p.error is not None for p in predictions)
    try:
        write_predictions(predictions, output)
    except OSError as err:  # the disk filled, the folder went away: the predictions go to stdout instead
        write_predictions(predictions, None)
        print(
            f"{prog}: error: --output {output} was not written ({first_line(err)}); the predictions are "
            "on stdout above",
            file=sys.stderr,
        )
        return 1
    if output is not None:
        print(f"Wrote {len(predictions) - failed} predictions to {output}")
    if failed:
        print(f"{prog}: {failed} of {len(predictions)} files could not be classified", file=sys.stderr)
        return 1
    return 0
