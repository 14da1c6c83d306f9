"""Lightning's own command line for lit_mnist: ``python -m lit_mnist.lightning_cli fit|validate|test|predict``.

:class:`LitMNISTCLI` is ``LightningCLI`` with three additions, all through its public extension points:

* the datamodule's ``num_classes`` and ``image_shape`` are linked into the model's ``num_classes`` and
  ``input_shape`` (``add_arguments_to_parser`` + ``parser.link_arguments``, applied when the datamodule
  is instantiated: they are class attributes, not arguments), so the two cannot disagree;
* a usage error is one line and exit status 2 (``--model.optimizer foo``: ``--model.optimizer must be
  one of sgd, adam, adamw, rmsprop; got 'foo'``), also for a value the constructors refuse
  (``--model.lr -1``), instead of jsonargparse's usage block or a traceback;
* :class:`HParamsMetrics`, a callback that gives TensorBoard's HParams tab the run's real metrics.

``examples/lightning_cli.yaml`` adds lit_mnist's monitoring (images, confusion matrices, curves,
speed), the HParams metrics, a TensorBoard logger without Lightning's ``hp_metric`` placeholder and a
checkpoint of the best ``val/acc``.

This is plain Lightning: one optimizer step per batch. ``scripts/train.py`` is the command with the
fast path (step groups), resume, signals and the results file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lit_mnist.checkpoints import read_checkpoint
from lit_mnist.errors import CheckpointError, ConfigError, DataError
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.module import MNISTClassifier


def one_line(message: str) -> str:
    """One of jsonargparse's (often multi-line) error messages as one line that names the flag."""
    literal = (
        r'Parser key "([\w.]+)"[^:]*:.*?Expected a typing\.Literal\[([^\]]*)\].*?(?:Got|Given) value: (.*)'
    )
    if m := re.match(literal, message, re.S):
        return f"--{m[1]} must be one of {m[2].replace(chr(39), '')}; got {m[3].strip()!r}"
    if m := re.match(r'Linked "([\w.]+)" must be given via "data\.(\w+)"', message):
        return f"--{m[1]} comes from the datamodule's {m[2]}: choose the data (--data) instead, not --{m[1]}"
    if m := re.match(r'Parser key "([\w.]+)":\s*(.*)', message, re.S):
        return f"--{m[1]}: {' '.join(m[2].split())}"
    return " ".join(message.split())


class OneLineErrorParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose usage errors are one line, ``PROG: error: MESSAGE``, exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse's own inner parsers: it catches the exception
            super().error(message, ex)
        sys.stderr.write(f"{self.prog.replace(' [options]', '')}: error: {one_line(message)}\n")
        self.exit(2)


class HParamsMetrics(L.Callback):
    """Give TensorBoard's HParams tab the run's real metrics, beside the module's and datamodule's hyperparameters.

    At the end of ``fit`` the last validation metrics (``val/acc``, ``val/acc_best``, ``val/loss``, ...),
    at the end of ``test`` the test metrics, are written with ``TensorBoardLogger.log_hyperparams`` under
    their own tags, ``hp/val_acc`` etc. (the HParams columns; the curves keep their points). Build the
    logger with ``default_hp_metric=False``, or TensorBoard shows Lightning's ``hp_metric`` placeholder too.

    Args:
        prefixes: Which of ``trainer.callback_metrics`` to record: those whose name starts with one of
            these and belongs to the stage that ended (``val/`` after fit, ``test/`` after test).
    """

    def __init__(self, prefixes: Sequence[str] = ("val/", "test/")) -> None:
        self.prefixes = tuple(prefixes)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, pl_module, "test/")

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        metrics = {
            "hp/" + name.replace("/", "_"): float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith(stage) and name.startswith(self.prefixes)
        }
        if not metrics or not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        hparams = {
            **(datamodule.hparams_initial if datamodule is not None else {}),
            **pl_module.hparams_initial,
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hparams, metrics)


class LitMNISTCLI(LightningCLI):
    """``LightningCLI`` with the datamodule's classes and image shape linked into the model, one-line errors.

    Use it as ``LightningCLI``: ``LitMNISTCLI(MNISTClassifier, MNISTDataModule)``, or with a subclass of
    either (a regression or multi-label head, another dataset), also in subclass mode.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", OneLineErrorParser)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        model = "model.init_args." if self.subclass_mode_model else "model."
        for source, target in (("num_classes", "num_classes"), ("image_shape", "input_shape")):
            parser.link_arguments(f"data.{source}", model + target, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse as ``LightningCLI`` does; a ``--ckpt_path`` that is not a readable checkpoint is one usage
        line naming the file (exit 2), checked before Lightning's own load of its hyperparameters (whose
        refusals are tracebacks with torch's advice to set ``weights_only=False``)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():  # not "last", "best", "hpc", "registry" or a URL
            try:
                read_checkpoint(ckpt_path)
            except CheckpointError as err:
                parser.error(f"--ckpt_path {err}")

    def instantiate_classes(self) -> None:
        """Instantiate as ``LightningCLI`` does; a value a constructor refuses is one usage line (exit 2)."""
        try:
            super().instantiate_classes()
        except ConfigError as err:
            config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
            group = next((name for name in ("model", "data") if _has_key(config.get(name), err.key)), "model")
            self.parser.error(f"--{group}.{err.key} {err.message}")


def _has_key(config: Any, key: str) -> bool:
    if config is None:
        return False
    init_args = config.get("init_args") if "init_args" in config else None
    return key in (init_args if init_args is not None else config)


def main(args: Sequence[str] | None = None) -> int:
    """``python -m lit_mnist.lightning_cli``: LightningCLI over ``MNISTClassifier`` and ``MNISTDataModule``.

    A refused setting found once the run starts (e.g. a step-group size that does not divide the
    epoch), or a ``--ckpt_path`` that is not a readable checkpoint, is one line and exit status 2;
    missing or damaged data one line and exit status 1.
    """
    prog = "lightning_cli"
    try:
        LitMNISTCLI(MNISTClassifier, MNISTDataModule, args=list(args) if args is not None else None)
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
