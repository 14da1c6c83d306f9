"""The command line: one module per command, each a ``get_parser(prog)`` and a ``main(argv, prog)``.

``lit-mnist train|evaluate|predict|export|sweep|serve|runs [flags]`` (the installed console command) is :func:`main`;
``scripts/<command>.py`` calls the command's own ``main``. The helpers they share are in
:mod:`lit_mnist.cli.common`. Nothing outside this package imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from lit_mnist.startup import exit_code, quiet_gc_imports

#: Command name -> the module holding its ``main(argv, prog)``; imported when the command runs.
COMMANDS = {
    "train": "lit_mnist.cli.train",
    "evaluate": "lit_mnist.cli.evaluate",
    "predict": "lit_mnist.cli.predict",
    "export": "lit_mnist.cli.export",
    "sweep": "lit_mnist.cli.sweep",
    "serve": "lit_mnist.cli.serve",
    "runs": "lit_mnist.cli.runs",
}


#: One line per command, for ``lit-mnist --help``.
SUMMARIES = {
    "train": "train a model and test it (python scripts/train.py)",
    "evaluate": "test a checkpoint: loss, accuracy, per-class accuracy, confusion matrix",
    "predict": "classify image files with a checkpoint",
    "export": "export a checkpoint as ONNX or a torch.export program",
    "sweep": "search hyperparameters with Optuna, every trial a train run (needs the sweep extra)",
    "serve": "serve a checkpoint or ONNX file over HTTP, with a page to draw on (needs the serve extra)",
    "runs": "the runs of a log folder side by side: status, settings, accuracies (--diff A B)",
}
USAGE = "usage: lit-mnist {train,evaluate,predict,export,sweep,serve,runs} [flags]   (lit-mnist COMMAND --help for its flags)"


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-mnist train|evaluate|predict|export|sweep|serve|runs [flags]``: the installed console command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE + "\n\ncommands:")
        for name, summary in SUMMARIES.items():
            print(f"  {name:<10}{summary}")
        return 0
    if args[:1] == ["--version"]:
        from lit_mnist import __version__

        print(f"lit-mnist {__version__}")
        return 0
    if not args or args[0] not in COMMANDS:
        from lit_mnist.cli.common import usage_exit

        print(USAGE, file=sys.stderr)
        usage_exit("lit-mnist", f"the first argument must be a command: {', '.join(COMMANDS)}")
    command = importlib.import_module(COMMANDS[args[0]])
    return int(command.main(args[1:], prog=f"lit-mnist {args[0]}"))


def entry() -> None:
    """The installed ``lit-mnist`` console command: :func:`main` in a process of its own, with the start-up
    and exit of :mod:`lit_mnist.startup`: the command's module is imported with the garbage collector off
    (this package's ``__init__`` imports nothing heavy; a command that imports torch and Lightning only once
    its flags are parsed does so under :func:`~lit_mnist.startup.quiet_gc_first_imports`)."""
    args = sys.argv[1:]
    if args and args[0] in COMMANDS:
        with quiet_gc_imports():
            importlib.import_module(COMMANDS[args[0]])
    sys.exit(exit_code(main(args)))
