"""Stopping a run cleanly: Ctrl-C and SIGTERM end the run after the current batch, resumable.

Lightning already turns SIGTERM (a cluster's pre-emption notice) into a clean stop: it finishes the
batch in flight, then raises ``SIGTERMException``, and every callback's ``on_exception`` runs, so a
``ModelCheckpoint(save_on_exception=True)`` writes a checkpoint whose state is consistent with the
batches seen. Ctrl-C, left alone, raises ``KeyboardInterrupt`` wherever the process happens to be
(mid-backward, mid-step) and Lightning exits without a checkpoint. :class:`GracefulInterrupt` makes
the first Ctrl-C behave like SIGTERM; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

import lightning as L


class GracefulInterrupt(L.Callback):
    """On the first SIGINT (Ctrl-C), stop after the current batch the way SIGTERM does."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: Any = None
        self._trainer: L.Trainer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self._previous = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        trainer = self._trainer
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or self.signal_name is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        # Lightning checks this flag after each batch and stops there, as for SIGTERM.
        connector.received_sigterm = True
        print(
            "\nCtrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to abort).",
            file=sys.stderr,
        )
