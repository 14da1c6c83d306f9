"""Process start-up and exit for the command-line scripts: the garbage collector kept out of the way.

Importing torch and Lightning creates millions of long-lived objects (modules, functions, classes) and
next to no garbage, yet the cyclic garbage collector walks over them again and again while they are
made and once more when the interpreter exits (``scripts/benchmark.py --start-up`` measures both;
``docs/benchmarks.md`` has the figures). :func:`quiet_gc_imports` turns the collector off for the imports
and then ``gc.freeze()``\\ s what they made (``gc.freeze``: "move them to a permanent generation and
ignore them in all the future collections"): they stay alive as they would have anyway, and later
collections skip them.
:func:`exit_code` freezes again just before the process ends.
The collector works as usual in between, on what the run itself creates. Standard library only: it is
imported before torch.

A command imports torch and Lightning only once it knows it runs (``--help`` and usage errors end
before): :func:`quiet_gc_first_imports` wraps those imports, and stands aside in a process that has
imported torch already (a test or a notebook calling the command's ``main``), where freezing would pin
that process's objects.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["exit_code", "quiet_gc_first_imports", "quiet_gc_imports"]


@contextmanager
def quiet_gc_imports() -> Iterator[None]:
    """Run the ``with`` block's imports with the garbage collector off; freeze what they made, then turn it back on.

    If the collector was already off (a caller's choice), it stays off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@contextmanager
def quiet_gc_first_imports() -> Iterator[None]:
    """:func:`quiet_gc_imports` when this process has not imported torch yet; otherwise the block runs as it is."""
    if "torch" in sys.modules:
        yield
    else:
        with quiet_gc_imports():
            yield


def exit_code(code: int | None) -> int | None:
    """Freeze every object (the process is about to end) and return ``code``, for ``sys.exit(exit_code(main()))``.

    The interpreter's last collections then skip the run's objects: objects freed by reference counting
    as the modules are torn down are finalized as usual, but garbage in reference cycles is not collected,
    so its ``__del__`` does not run (files, loggers and checkpoints are closed by the run before this).
    ``atexit`` handlers run as usual. For a process's end only: in a long-lived process it would pin
    every object alive now.
    """
    gc.freeze()
    return code
