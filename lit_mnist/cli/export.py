"""``export``: write a checkpoint as ONNX or a torch.export program, and check it against PyTorch.

``python scripts/export.py`` and ``lit-mnist export`` both end up in :func:`main`. Beside the
model goes ``<file>.json``: the input layout, the normalisation and the class names.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ArgumentParser

from lit_mnist.cli.common import checkpoint_parser, load_or_exit, output_problem, parse_or_exit, usage_exit
from lit_mnist.export import EXPORT_FORMATS, export_metadata, export_model, run_exported
from lit_mnist.runtime import first_line, write_atomic


def get_parser(prog: str = "export.py") -> ArgumentParser:
    """Flags of ``export``."""
    parser = checkpoint_parser(prog, "Export a checkpoint as ONNX or a torch.export program (.pt2).")
    parser.add_argument("--format", type=Literal[tuple(EXPORT_FORMATS)], default="onnx")
    parser.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="The file to write (default: next to the checkpoint, .onnx or .pt2).",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace the output file (and its .json) when it exists."
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "export.py") -> int:
    """Entry point of ``scripts/export.py``. Returns the exit status."""
    cfg = parse_or_exit(get_parser(prog), argv, prog)
    ckpt, info, source = load_or_exit(cfg, prog)
    dataset = info.name
    suffix = EXPORT_FORMATS[cfg.format]
    output = Path(cfg.output) if cfg.output else ckpt.path.with_suffix(suffix)
    if output.is_dir():
        usage_exit(prog, f"--output {output} is a folder; give a file name ending in {suffix}")
    if output.exists() and not cfg.overwrite:
        usage_exit(prog, f"--output {output} exists; pass --overwrite to replace it, or another --output")
    if problem := output_problem(output):
        usage_exit(prog, f"--output {output}: {problem}")
    model = ckpt.model.float()
    meta = {**export_metadata(model, info), "format": cfg.format}
    meta_path = output.with_name(output.name + ".json")
    try:
        export_model(model, output, cfg.format)
        write_atomic(meta_path, json.dumps({**meta, "checkpoint": str(ckpt.path)}, indent=2) + "\n")
    except ImportError as err:
        print(
            f"{prog}: error: --format {cfg.format} needs {err.name or 'onnx'}: pip install 'lit_mnist[export]'",
            file=sys.stderr,
        )
        return 1
    except OSError as err:  # the disk filled, the folder went away: each file is whole or not there
        failed = meta_path if output.is_file() and not meta_path.is_file() else output
        kept = f"; {output} was written without it" if failed == meta_path else ""
        print(f"{prog}: error: {failed} was not written ({first_line(err)}){kept}", file=sys.stderr)
        return 1
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
