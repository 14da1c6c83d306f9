"""Hyperparameter sweeps with Optuna, every trial an ordinary :func:`lit_mnist.run.train` call.

:mod:`~lit_mnist.sweeps.space` reads and checks the search space, :mod:`~lit_mnist.sweeps.trial` runs
one trial, :mod:`~lit_mnist.sweeps.study` holds the study (storage, sampler, pruner, the loop of
trials) and :mod:`~lit_mnist.sweeps.report` shows and writes its results. ``lit-mnist sweep``
(:mod:`lit_mnist.cli.sweep`) is the command line over them. Optuna is imported only when used: it is
the ``sweep`` extra.
"""
