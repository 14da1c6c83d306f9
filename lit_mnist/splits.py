"""The seeded splits of a training set: a held-out validation split, or one fold of K stratified folds.

Plain torch on the labels alone, so that every DDP rank, every fold of a cross-validation and a test
computes the same indices from the same labels and seed, whatever the run's own seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_mnist.errors import ConfigError

__all__ = ["split_indices", "stratified_folds"]


def split_indices(
    labels: Tensor, val_size: int | float, seed: int, folds: int = 0, fold: int | None = None
) -> dict[str, Tensor]:
    """The indices of the ``"val"`` and ``"train"`` splits of a training set with these labels.

    ``fold`` given: the validation split is fold ``fold`` of :func:`stratified_folds` and the training
    split the other folds. Else the validation split is a seeded draw of ``val_size`` images (a count,
    a fraction, or 0 for none) and the training split the rest.

    Raises:
        ConfigError: ``val_size`` leaves no training images; see :func:`stratified_folds`.
    """
    n = len(labels)
    if fold is not None:
        val = stratified_folds(labels, folds, seed)[fold]
        trained = torch.ones(n, dtype=torch.bool)
        trained[val] = False
        return {"val": val, "train": trained.nonzero().squeeze(1)}
    count = 0 if val_size == 0 else val_size if isinstance(val_size, int) else max(1, round(n * val_size))
    if count >= n:
        raise ConfigError("val_size", f"must be smaller than the {n} training images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {"val": perm[:count], "train": perm[count:]}


def stratified_folds(labels: Tensor, folds: int, seed: int) -> list[Tensor]:
    """The indices of ``labels`` dealt into ``folds`` disjoint folds that cover them, each class evenly.

    Each class's images, in a seeded random order, are dealt round the folds, the deal going on from
    one class to the next: every fold holds each class's share to within one image, and the folds'
    sizes differ by at most one. The same labels, number of folds and seed give the same folds.
    Targets that are not class indices (a vector per image) are dealt in one seeded order, unstratified.

    Raises:
        ConfigError: fewer than 2 folds, or more folds than the smallest class has images.
    """
    if folds < 2:
        raise ConfigError("folds", f"must be >= 2, got {folds}")
    generator = torch.Generator().manual_seed(seed)
    if labels.dim() != 1:
        order = torch.randperm(len(labels), generator=generator)
    else:
        classes = labels.unique(sorted=True)
        members = [(labels == c).nonzero().squeeze(1) for c in classes]
        smallest = min(range(len(members)), key=lambda i: len(members[i]))
        if len(members[smallest]) < folds:
            raise ConfigError(
                "folds",
                f"must be at most {len(members[smallest])}, the training images of class "
                f"{int(classes[smallest])}, so that every fold holds each class; got {folds}",
            )
        order = torch.cat([m[torch.randperm(len(m), generator=generator)] for m in members])
    dealt = torch.arange(len(order)) % folds
    return [order[dealt == k].sort().values for k in range(folds)]
