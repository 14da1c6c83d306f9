"""The command line: one module per command, each a ``get_parser(prog)`` and a ``main(argv, prog)``.

``lit-mnist train|evaluate|predict|export [flags]`` (the installed console command) is :func:`main`;
``scripts/<command>.py`` calls the command's own ``main``. The helpers they share are in
:mod:`lit_mnist.cli.common`. Nothing outside this package imports it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from lit_mnist.cli.common import usage_exit

#: Command name -> the module holding its ``main(argv, prog)``; imported when the command runs.
COMMANDS = {
    "train": "lit_mnist.cli.train",
    "evaluate": "lit_mnist.cli.evaluate",
    "predict": "lit_mnist.cli.predict",
    "export": "lit_mnist.cli.export",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-mnist train|evaluate|predict|export [flags]``: the installed console command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        usage_exit("lit-mnist", f"the first argument must be a command: {', '.join(COMMANDS)}")
    command = importlib.import_module(COMMANDS[args[0]])
    return int(command.main(args[1:], prog=f"lit-mnist {args[0]}"))
