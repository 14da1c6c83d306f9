"""What every command shares: one-line usage errors (exit status 2), and reading a checkpoint argument.

A usage error is printed as ``prog: error: message`` on one line that names the flag and what it
accepts; jsonargparse's own (often multi-line) messages are rewritten by :func:`one_line`.

Importing this module imports neither torch nor Lightning: ``train.py --help`` and a usage error found
while parsing end before them. The checkpoint helpers import what they need when called.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from jsonargparse import ArgumentParser, Namespace

from lit_mnist.config import Dataset
from lit_mnist.errors import CheckpointError, UsageError
from lit_mnist.runtime import env_threads, one_line_warnings

if TYPE_CHECKING:
    from lit_mnist.checkpoints import LoadedCheckpoint
    from lit_mnist.inference import DatasetInfo


def usage_exit(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` to stderr and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def output_problem(path: Path) -> str:
    """Why ``path`` cannot be written as a new file (its folders are created), or ``""`` when it can.

    Checked before the work whose result goes there, so that a typo costs nothing: ``path`` is a
    folder, a file stands where a folder of its path should be, or the nearest existing folder is
    not writable (read-only, no permission; ``os.access``, which also knows read-only filesystems).
    """
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent  # the first that exists: write_atomic creates the others
    shown = folder if str(folder) not in ("", ".") else Path.cwd()
    if folder.exists() and not folder.is_dir():
        return f"{shown} is a file, not a folder; give a path in a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write into the folder {shown} (read-only, or no permission); give a path in a folder you can write"
    return ""


def check_output(prog: str, flag: str, path: str | Path | None) -> None:
    """End the process with one line and status 2 when ``flag``'s ``path`` cannot be written."""
    if path is not None and (problem := output_problem(Path(path))):
        usage_exit(prog, f"{flag} {path}: {problem}")


def one_line(message: str, argv: Sequence[str] | None, positionals: Sequence[str] = ()) -> str:
    """Turn one of jsonargparse's (often multi-line) messages into one line naming the flag.

    Args:
        message: The parser's error message.
        argv: The arguments parsed (``None``: ``sys.argv[1:]``), to name the ``--config`` file.
        positionals: Names of positional arguments, shown as they are rather than as ``--flags``.
    """
    flag = lambda key: key if key in positionals else "--" + key.replace("_", "-")  # noqa: E731
    args = list(sys.argv[1:] if argv is None else argv)
    config = f"--config {args[args.index('--config') + 1]}" if "--config" in args[:-1] else "--config"
    if m := re.match(r"the following arguments are required: (.*)", message):
        names = [flag(n.strip()) for n in m[1].split(",")]
        return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} required (see --help)"
    # a number or a word (--lr auto): float | Literal["auto"]
    number_or = r'Parser key "(\w+)".*?Subtypes: \[<class \'(\w+)\'>, typing\.Literal\[([^\]]*)\]\].*?Given value: (.*)'
    if m := re.match(number_or, message, re.S):
        words = m[3].replace(chr(39), "")
        return f"{flag(m[1])} expects {'an' if m[2][0] in 'aeiou' else 'a'} {m[2]} or {words}, got {m[4].strip()!r}"
    # a choice (a Literal type), also as one of a union's types (an optional choice)
    literal = r'Parser key "(\w+)"[^:]*:.*?Expected a typing\.Literal\[([^\]]*)\].*?(?:Got|Given) value: (.*)'
    if m := re.match(literal, message, re.S):
        return f"{flag(m[1])} must be one of {m[2].replace(chr(39), '')}; got {m[3].strip()!r}"
    if m := re.match(r'Parser key "(\w+)":\s*Expected a <class \'(\w+)\'>\. Got value: (.*)', message, re.S):
        return f"{flag(m[1])} expects {'an' if m[2][0] in 'aeiou' else 'a'} {m[2]}, got {m[3].strip()!r}"
    if m := re.match(r'Parser key "(\w+)":.*Given value: (.*)', message, re.S):
        return f"{flag(m[1])} got an invalid value {m[2].strip()!r}; see --help for what it accepts"
    if m := re.match(r'Parser key "config": (.*)', message, re.S):
        return f"--config: {m[1].strip().splitlines()[0]}"
    if m := re.match(r"Option '([\w-]+)' is not accepted", message):
        return f"{config}: unknown key '{m[1]}'; keys are the flags' names, e.g. max_epochs (see --help)"
    if message.startswith("Problems parsing config"):
        detail = " ".join(message.split(":", 1)[1].split())
        return f"{config}: not valid YAML ({detail})"
    if message.startswith("Unexpected config"):
        return f"{config}: must be a YAML mapping of flag names to values, e.g. 'max_epochs: 3'"
    if m := re.match(r'Parser key "(\w+)":\s*(.*)', message, re.S):
        return f"{flag(m[1])}: {' '.join(m[2].split())}"
    return " ".join(message.split())


def parse_or_exit(
    parser: ArgumentParser, argv: Sequence[str] | None, prog: str, positionals: Sequence[str] = ()
) -> Namespace:
    """``parser.parse_args(argv)``; a usage error ends the process with one line and status 2.

    The environment the command reads is checked here too (``OMP_NUM_THREADS``, before torch loads OpenMP),
    and its warnings are shown as one line each.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    one_line_warnings()
    try:
        parsed = parser.parse_args(args)
        env_threads()
    except ArgumentError as err:
        usage_exit(prog, one_line(str(err), args, positionals))
    except UsageError as err:
        usage_exit(prog, str(err))
    return parsed


# --------------------------------------------------------------------------- a checkpoint argument
def checkpoint_parser(prog: str, description: str) -> ArgumentParser:
    """A parser with the flags of every command that uses a trained model: ``--ckpt-path``, ``--dataset``."""
    from lit_mnist.checkpoints import CONFIG_NAME

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, default_env=False)
    parser.add_argument("--ckpt-path", type=str, required=True, help="A .ckpt file written by training.")
    parser.add_argument(
        "--dataset",
        type=Dataset | None,
        default=None,
        help=f"Dataset of the checkpoint (default: the run's {CONFIG_NAME}, else mnist).",
    )
    return parser


def load_or_exit(cfg: Namespace, prog: str) -> tuple[LoadedCheckpoint, DatasetInfo, str]:
    """The checkpoint of ``--ckpt-path``, its dataset (:class:`~lit_mnist.inference.DatasetInfo`) and
    where the dataset's name came from.

    A missing GPU, an unreadable checkpoint or a dataset that does not fit the model ends the
    process with one line and status 2.
    """
    from lit_mnist.checkpoints import load_checkpoint
    from lit_mnist.inference import check_fits, dataset_info, resolve_dataset
    from lit_mnist.runtime import check_accelerator

    try:
        check_accelerator(getattr(cfg, "accelerator", "cpu"))
        ckpt = load_checkpoint(cfg.ckpt_path)
        dataset, source = resolve_dataset(cfg.dataset, ckpt)
        info = dataset_info(ckpt, dataset)
        check_fits(ckpt.model, info)
    except CheckpointError as err:
        usage_exit(prog, f"--ckpt-path {err}")
    except UsageError as err:
        usage_exit(prog, str(err))
    return ckpt, info, source
