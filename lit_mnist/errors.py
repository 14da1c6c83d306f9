"""Errors that lit_mnist reports to the user as one line, without a traceback."""

from __future__ import annotations


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


class DataError(RuntimeError):
    """The dataset is missing, corrupted or cannot be downloaded. The message says how to fix it."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""
