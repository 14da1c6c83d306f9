"""Stopping a run cleanly: Ctrl-C and SIGTERM end the run after the current batch, resumable.

Lightning already turns SIGTERM (a cluster's pre-emption notice) into a clean stop: it finishes the
batch in flight, then raises ``SIGTERMException``, and every callback's ``on_exception`` runs, so a
``ModelCheckpoint(save_on_exception=True)`` writes a checkpoint whose state is consistent with the
batches seen. Ctrl-C, left alone, raises ``KeyboardInterrupt`` wherever the process happens to be
(mid-backward, mid-step) and Lightning exits without a checkpoint. :class:`GracefulInterrupt` makes
the first Ctrl-C behave like SIGTERM, by sending the process a SIGTERM that Lightning's own handler
takes; a second Ctrl-C, before the batch ended or while the stop's checkpoint is written, aborts at
once with :class:`~lit_mnist.errors.Aborted` (status 130), leaving that checkpoint unwritten.

Under DDP (several processes) a signal must stop every rank at the same step. Lightning's SIGTERM
handler runs a collective (a broadcast) inside the signal handler, on whichever ranks the signal
reached, at whatever point each was: ranks that got it at different points (or only rank 0) wait in
mismatched collectives for ever. So with several processes :class:`GracefulInterrupt` takes SIGTERM
and Ctrl-C itself and only notes them; at the end of every training batch all ranks agree (one
all-reduce of a small integer) whether any of them was signalled, and if so every rank calls
Lightning's own SIGTERM handler there, at the same step. Lightning then stops after that batch as it
always does (the checkpoint callbacks save, rank 0 writes ``last.ckpt``). A signal during the sanity
check is agreed on at its end and stops the run there; one during the final test at the test's end
(ranks test unequal numbers of batches): the finished test is kept, and :attr:`signal_name` says that
a signal came. Not covered: the moments between Lightning installing its handler for a stage and the
stage's first hook (its start-up barrier), and between fit and test, where SIGTERM is the default
(the process ends); and ``ddp_spawn``, whose launching process is not a rank.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_mnist.errors import Aborted, CheckpointWriteError, NonFiniteLossError

__all__ = [
    "GracefulInterrupt",
    "LastCheckpoint",
    "NonFiniteLossGuard",
]

#: The logger of Lightning's SIGTERM handler (its module's name), which says "Received SIGTERM".
SIGNAL_LOGGER = "lightning.pytorch.trainer.connectors.signal_connector"
#: The logger of Lightning's rank-zero notes, where ModelCheckpoint says it saved on an exception.
NOTES_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _Drop(logging.Filter):
    """Drops Lightning's log lines that contain ``text``: lines a stop's own message says better."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


#: "Received SIGTERM", when the SIGTERM is the one a Ctrl-C was turned into.
_CTRL_C_IS_NOT_SIGTERM = _Drop("Received SIGTERM")
#: "An SIGTERMException was raised with message: , saved checkpoint to ...": the stop's message names it.
_SAVED_ON_STOP = _Drop("SIGTERMException was raised with message")


class GracefulInterrupt(L.Callback):
    """On the first SIGINT (Ctrl-C), stop after the current batch the way SIGTERM does; on a second, abort.

    While a stop's checkpoint is written (``on_exception`` of a SIGTERM stop) Ctrl-C still aborts, so the
    handler stays installed after that exception: call :meth:`restore` once ``fit`` or ``test`` has
    returned or raised (``train`` does).

    With several processes (DDP) it takes SIGTERM too and stops every rank at the same step: see the
    module's docstring.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: Any = None
        self._previous_sigterm: Any = None
        self._stopping = False
        self._notice = "stopping after this batch"
        self._distributed = False
        self._rank = 0
        self._lightning_sigterm: Callable[[int, FrameType | None], Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._notice = "stopping after this batch and saving a checkpoint"
        self._install(trainer)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_sigterm()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._distributed and self._agree(trainer):
            raise SIGTERMException  # before training: nothing to save (LastCheckpoint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_sigterm()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._distributed and self._agree(trainer):
            if self._lightning_sigterm is None:  # Lightning registered none (it does not on Windows)
                raise SIGTERMException
            # Every rank, at this same step: Lightning's own handler (its broadcast now has every rank
            # in it) marks the stop, and Lightning ends training after this batch as for one process
            if self.signal_name == "SIGINT":
                logging.getLogger(SIGNAL_LOGGER).addFilter(_CTRL_C_IS_NOT_SIGTERM)
            self._lightning_sigterm(signal.SIGTERM, None)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The final test: Lightning's SIGTERM handler stops it after the batch in flight too
        self._notice = "stopping the test after this batch"
        self._install(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Several processes: ranks test unequal numbers of batches, so they agree here, at the end, when
        # the test has finished: it is kept, and signal_name says a signal came (train exits 143/130)
        if self._distributed:
            self._agree(trainer)
        self._restore()

    def _install(self, trainer: L.Trainer) -> None:
        self.signal_name = None
        self._stopping = False
        self._distributed = trainer.world_size > 1
        self._rank = trainer.global_rank
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C (and SIGTERM) as they are
            self._distributed = False
            return
        # The handlers from before the first stage are kept until restore(): Lightning puts back the
        # ones it found at each stage's start (this one's, after fit), and a test's start finds its own
        if previous != self._handle and self._previous is None:  # bound methods compare equal, not identical
            self._previous = previous
        if self._distributed:
            # Lightning composes its own handler with this one when the stage starts, and restores
            # this one when the stage ends (the stage's own is taken over in _take_sigterm)
            previous = signal.signal(signal.SIGTERM, self._handle)
            if previous != self._handle and self._previous_sigterm is None:
                self._previous_sigterm = previous

    def _take_sigterm(self) -> None:
        """While a stage runs, SIGTERM is only noted (ranks agree at a batch's end), not Lightning's at once."""
        if not self._distributed:
            return
        handler = signal.signal(signal.SIGTERM, self._handle)
        if handler != self._handle and callable(handler):
            self._lightning_sigterm = handler

    def _agree(self, trainer: L.Trainer) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same point)."""
        code = {None: 0, "SIGTERM": 1, "SIGINT": 2}[self.signal_name]
        flag = torch.tensor([code], device=trainer.strategy.root_device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # one collective
        else:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        agreed = int(flag.item())
        if agreed:  # every rank reports the same signal (Ctrl-C before SIGTERM), signalled or not
            self.signal_name = "SIGINT" if agreed == 2 else "SIGTERM"
        return agreed > 0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._distributed and self._agree(trainer):
            # It came after the last training batch (in the last validation): training is complete,
            # and the checkpoint saved on this stop is its end; what follows (a test) does not run
            raise SIGTERMException
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            # The checkpoint callbacks (which Lightning calls after this one) write the stop's checkpoint
            # now: a Ctrl-C during that write aborts it (restore() is the caller's, after fit or test)
            self._stopping = True
            logging.getLogger(NOTES_LOGGER).addFilter(_SAVED_ON_STOP)
            return
        self._restore()

    def restore(self) -> None:
        """Give Ctrl-C (and SIGTERM) back the handlers they had before ``fit`` or ``test`` started.

        Call it once the trainer's calls are over (``train`` does, in a ``finally``): after an exception
        Lightning's teardown puts this callback's handlers back after its own hooks ran.
        """
        self._restore()
        self._previous = self._previous_sigterm = None

    def _restore(self) -> None:
        self._stopping = False
        logging.getLogger(SIGNAL_LOGGER).removeFilter(_CTRL_C_IS_NOT_SIGTERM)
        logging.getLogger(NOTES_LOGGER).removeFilter(_SAVED_ON_STOP)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._lightning_sigterm = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._distributed:
            self._note(signum)
            return
        if self.signal_name is not None or self._stopping:  # a second Ctrl-C, or one during the stop's save
            self._restore()
            raise Aborted
        # Lightning installs its SIGTERM handler for the length of a fit (on the main thread); without
        # it SIGTERM would end the process at once.
        lightning_stops = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        if not lightning_stops:
            self._restore()
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        logging.getLogger(SIGNAL_LOGGER).addFilter(_CTRL_C_IS_NOT_SIGTERM)  # the user pressed Ctrl-C
        signal.raise_signal(signal.SIGTERM)  # Lightning stops after the batch in flight
        print(
            f"\nCtrl-C: {self._notice} (Ctrl-C again to abort).",
            file=sys.stderr,
        )

    def _note(self, signum: int) -> None:
        """Several processes: note the signal; the ranks stop together where they next agree."""
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        if self.signal_name is None and not self._stopping:
            self.signal_name = name
            if self._rank == 0:
                what = "Ctrl-C" if name == "SIGINT" else "SIGTERM"
                print(f"\n{what}: {self._notice}, on every process (Ctrl-C again to abort).", file=sys.stderr)
            return
        if name == "SIGINT":  # a second Ctrl-C, or one during the stop's save: abort now
            self._restore()
            raise Aborted
        # a repeated SIGTERM (the launcher passing it on, or the scheduler again): already stopping


class NonFiniteLossGuard(L.Callback):
    """Stop the run at the first NaN or infinite training loss, naming the step and the likely cause.

    The check reads the loss of every step (one scalar comparison; on the CPU it costs nothing, on
    a GPU it is a single small device-to-host copy). The run stops with :class:`NonFiniteLossError`,
    which :class:`LastCheckpoint` does not save on, so neither the best nor the last checkpoint ever
    holds the diverged weights.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(loss.detach().isfinite()):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at epoch {trainer.current_epoch}, step {trainer.global_step}"
                f"; the learning rate ({lr:g}) is most likely too high: lower --lr, or add "
                "--gradient-clip-val 1.0. No checkpoint holds the diverged weights."
            )


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every epoch (and every N steps), and when SIGTERM or Ctrl-C stops the run.

    Lightning's ``OnExceptionCheckpoint`` saves on every exception; this one does not save the diverged
    weights of a NaN loss, nor a half-restored state when a resume fails before training starts.

    Lightning >= 2.6 writes ``save_last=True``'s file only when a top-k checkpoint was written in the
    same step, so it can lag behind; this one always follows the latest epoch. On an exception it
    saves a resumable checkpoint, except after a :class:`NonFiniteLossError` (diverged weights), after
    :class:`Aborted` (a second Ctrl-C: it may have come in the middle of an optimizer step), after a
    :class:`CheckpointWriteError` (the last checkpoint on disk must not name a best checkpoint that was
    never written; the disk is likely full anyway), and before training started in this process (e.g. a resume whose checkpoint does not fit the run: the
    file on disk is still the latest state, and must not be replaced by a half-restored one).
    """

    _training_started = False
    #: The file written when an exception (SIGTERM, Ctrl-C, ...) stopped training, else ``None``.
    saved_on_exception: Path | None = None

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int | None = None) -> None:
        self.every_n_steps = every_n_train_steps or 0
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
            save_on_exception=every_n_train_steps is None,
            every_n_train_steps=every_n_train_steps,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.automatic_optimization or self.every_n_steps < 1:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        # Step groups run with manual optimization, for which Lightning warns that the checkpoint holds
        # the weights after the optimizer step: here, as with automatic optimization, that is the state
        # at global_step, the one to resume from.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._training_started = False
        self.saved_on_exception = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._training_started = True

    @property
    def training_started(self) -> bool:
        """Whether training started in this process (``on_train_start``), after the sanity check."""
        return self._training_started

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._training_started and not isinstance(
            exception, NonFiniteLossError | CheckpointWriteError | Aborted
        ):
            super().on_exception(trainer, pl_module, exception)
            # Lightning skips the save when this step's checkpoint is already written (or in a dev run)
            written = Path(self.format_checkpoint_name({}))
            self.saved_on_exception = written if written.is_file() else None
