"""Every exception lit_mnist raises on purpose. Each message is one line that says what is wrong and how to fix it."""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A configuration value is invalid.

    Args:
        key: The parameter's name (``lr``, ``hidden_sizes``); the command line shows it as ``--lr``.
        message: What is wrong and what is accepted, e.g. ``"must be > 0, got -1.0"``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key} {message}")
        self.key = key
        self.message = message

    @property
    def flag(self) -> str:
        """The command-line spelling of the key, e.g. ``--hidden-sizes``."""
        return "--" + self.key.replace("_", "-")


class UsageError(Exception):
    """A bad flag, flag combination or file argument: reported as one line, exit status 2."""


class DataError(RuntimeError):
    """The dataset is missing, corrupted or cannot be downloaded. The message says how to fix it."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class LoaderStateError(ValueError):
    """A saved loader position does not fit this loader (another split size, batch size or sharding)."""


class ImageError(ValueError):
    """One input image cannot be read or is refused; the message says why, in one line."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the weights after this step are not worth keeping."""


class RunError(RuntimeError):
    """The run failed for a reason outside the configuration (e.g. the disk is full): exit status 1."""


class RunLockedError(RunError):
    """Another live process writes into this run folder (it holds ``version_N/.lock``): exit status 1.

    Not a usage error: the command is right, and it works as it is once the other process has ended.

    Args:
        run_dir: The run folder.
        holder: Who holds it, e.g. ``"process 4242 on host node7, since 2025-01-01T10:00:00"``.
    """

    def __init__(self, run_dir: object, holder: str) -> None:
        super().__init__(
            f"{run_dir} is in use by another run ({holder}); two processes must not write into one run "
            "folder: wait until that one has ended (or stop it), then run this command again"
        )
        self.run_dir = run_dir
        self.holder = holder


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (disk full, quota, I/O error): the file of that name is unchanged.

    Args:
        path: The checkpoint that was not written.
        reason: What the filesystem said, e.g. ``"[Errno 28] No space left on device"``.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path} was not written ({reason})")
        self.path = path
        self.reason = reason


class Interrupted(Exception):
    """SIGTERM or Ctrl-C stopped the run; what was saved, and where the run stood.

    Args:
        signal_name: ``"SIGTERM"`` or ``"SIGINT"``.
        checkpoint: The checkpoint written when training stopped; ``None`` when none was written (the
            signal came before training started, or during the final test, after training ended).
        epoch: The epoch the run stopped in.
        step: The optimizer steps taken.
        stage: ``"training"``, ``"sanity check"`` (before training started), ``"test"`` (the final
            test, after training ended) or ``"finished"`` (the signal came as the final test ended,
            under DDP, where the processes agree at its end: training and test are done and written).
        best: During the final test: the checkpoint it was testing.
        results: When ``"finished"``: the results file written.
        config: The config the run used (the finders' values in place of ``auto``), set by ``train``.
    """

    def __init__(
        self,
        signal_name: str,
        checkpoint: object,
        epoch: int,
        step: int,
        stage: str = "training",
        best: object = None,
        results: object = None,
        config: object = None,
    ) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step
        self.stage = stage
        self.best = best
        self.results = results
        self.config = config

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by that signal."""
        return 128 + (signal.SIGINT if self.signal_name == "SIGINT" else signal.SIGTERM)


class Aborted(BaseException):
    """A second Ctrl-C while the run was stopping after the first: the process ends at once, status 130.

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` takes it; not a
    ``KeyboardInterrupt``, on which Lightning ends the process itself with status 1. Raised in the middle
    of whatever ran (a step, a checkpoint being written): no checkpoint is written after it, and the one
    being written is left unwritten (each is written to a temporary file and renamed, see
    :func:`lit_mnist.runtime.write_durable`), so every checkpoint on disk is whole.

    Args:
        epoch: The epoch the run was in; ``None`` when not known yet (raised by the signal handler).
        step: The optimizer steps taken.
        checkpoints: The run's checkpoint folder, if it has one.
    """

    exit_status = 128 + signal.SIGINT

    def __init__(self, epoch: int | None = None, step: int | None = None, checkpoints: object = None) -> None:
        super().__init__("SIGINT")
        self.epoch, self.step, self.checkpoints = epoch, step, checkpoints
