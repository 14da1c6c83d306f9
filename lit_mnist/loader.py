"""An in-memory batch loader: the whole split held once as tensors, batches taken by index slices.

MNIST and its siblings fit in memory many times over (60 000 x 1 x 28 x 28 float32 is 188 MB), so a
``torch.utils.data.DataLoader`` that fetches samples one by one, converts them and collates them is
pure overhead. :class:`InMemoryBatchLoader` replaces it in ``Trainer.fit`` / ``validate`` / ``test``:

* **Lean hot loop.** The images ``(N, ...)`` and int64 targets ``(N,)`` are held as tensors, on the
  CPU or on the accelerator (:meth:`InMemoryBatchLoader.to`). Once per epoch the loader builds this
  rank's index tensor, moves it to the data's device and then yields
  ``images.index_select(0, idx[i:i + batch_size])`` -- no per-sample Python, no collate. Unshuffled
  single-process loaders skip the index entirely and yield contiguous slices (views, no copy).
* **Seeded shuffling.** The permutation of epoch ``e`` is ``torch.randperm(N)`` drawn from a CPU
  ``torch.Generator`` seeded with ``seed * 1_000_003 + e`` (mod 2**64): a pure function of
  ``(seed, epoch)``, identical on every rank and on every run, independent of the global RNG.
* **DDP sharding, strided like ``DistributedSampler``.** Rank ``r`` of ``R`` takes
  ``order[r::R]`` of the epoch's order. With ``pad_shards=True`` (the default when shuffling, meant
  for training) the order is first extended by wrapping around to ``ceil(N / R) * R`` entries, exactly
  as ``torch.utils.data.DistributedSampler`` pads: every shard has the same size, every sample is used
  each epoch, and ``(-N) % R`` samples are seen twice. With ``pad_shards=False`` (the default without
  shuffling, meant for evaluation) nothing is repeated: the shards are disjoint, together they are
  exactly the split, and their sizes differ by at most one -- so metrics synced across ranks equal a
  single-process evaluation.
* **Lightning sets the epoch.** At the start of every epoch Lightning calls ``set_epoch`` on a
  loader's ``sampler`` when it has one, as it does for a ``DistributedSampler``.
  :attr:`InMemoryBatchLoader.sampler` is a small object whose ``set_epoch`` forwards to
  :meth:`InMemoryBatchLoader.set_epoch`. The epoch is read when the first batch of a pass is taken,
  not in ``iter()``, because Lightning calls ``iter()`` before ``set_epoch`` in the first epoch.
* **Mid-epoch resume.** Lightning saves ``state_dict()`` of a training loader that has
  ``state_dict``/``load_state_dict`` in its checkpoints, and hands it back to ``load_state_dict``
  before it calls ``iter()`` on resume. The state is the epoch, the seed and ``batches_consumed``:
  the number of batches of that epoch this loader has *yielded*. From a loader with a length,
  Lightning takes one batch per training step and fetches none ahead, so a checkpoint written after
  batch ``k`` holds ``batches_consumed == k + 1`` (batch indices from 0) and the resumed pass starts
  at batch ``k + 1``: nothing skipped, nothing repeated (``tests/test_loader.py`` checks this through
  ``Trainer.fit(ckpt_path=...)``). The resume offset applies once, to the next pass of the saved
  epoch; ``set_epoch`` to another epoch discards it. The state is plain ints and bools, so it loads
  under ``torch.load(weights_only=True)``.
* **Step groups** (``steps_per_batch=K > 1``). Each item is a list of up to ``K`` consecutive
  ``(images, targets)`` batches of ``batch_size`` instead of one batch: the same batches in the same
  order, ``K`` at a time, for a training step that takes ``K`` optimizer steps (see
  :class:`~lit_mnist.module.MNISTClassifier`'s ``steps_per_batch``). The group is gathered with one
  ``index_select`` and split into views. Lengths and the resume position then count groups.

Lengths follow ``DataLoader``: ``len(loader)`` is the number of items (batches, or groups) per epoch
for this rank, ``len(loader.sampler)`` the number of samples per epoch for this rank (padding
included) and ``len(loader.dataset)`` the number of samples in the whole split.
"""

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lit_mnist.errors import LoaderStateError
from lit_mnist.groups import check_steps_per_batch

__all__ = ["InMemoryBatchLoader", "LoaderStateError"]

_SEED_MULTIPLIER = 1_000_003
_STATE_VERSION = 2


def _generator_seed(seed: int, epoch: int) -> int:
    """The seed of the CPU generator that draws epoch ``epoch``'s permutation (a value in [0, 2**64))."""
    return (seed * _SEED_MULTIPLIER + epoch) % (1 << 64)


def _augment_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the CPU generator that draws epoch ``epoch``'s augmentation numbers on ``rank``.

    Another stream than the permutation's (a large odd offset), and one per rank: the ranks' shards
    are other samples, so their warps are drawn apart.
    """
    return (_generator_seed(seed, epoch) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019 + rank) % (1 << 64)


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    """Returns ``value`` if it is an int (not a bool) of at least ``minimum``; raises ``ValueError`` else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class _LoaderSampler:
    """What Lightning finds at ``loader.sampler``: ``set_epoch`` forwards to the loader.

    Like a ``DistributedSampler`` it also iterates over this rank's sample indices of the current
    epoch and has their count as its length; the loader itself never iterates over it.
    """

    def __init__(self, loader: "InMemoryBatchLoader") -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Sets the loader's epoch (see :meth:`InMemoryBatchLoader.set_epoch`)."""
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self._loader.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self._loader.epoch_indices().tolist())


class InMemoryBatchLoader:
    """Yields ``(images, targets)`` batches (or groups of them) of tensors held in memory, seeded, sharded, resumable.

    Args:
        images: All inputs of the split, shape ``(N, ...)``, already normalised.
        targets: All targets of the split, shape ``(N,)`` (int64 class indices), on the images' device.
        batch_size: Samples per batch (>= 1). The last batch of an epoch may be smaller.
        shuffle: Draw a new permutation every epoch from ``(seed, epoch)``; otherwise order ``0..N-1``.
        seed: Seed of the permutations; must be the same on every rank.
        drop_last: Drop the final batch of an epoch (per rank) if it has fewer than ``batch_size`` samples.
        num_replicas: Number of DDP ranks sharing the split (>= 1).
        rank: This process's rank, in ``[0, num_replicas)``.
        pad_shards: Wrap around the epoch's order so that every rank gets ``ceil(N / num_replicas)``
            samples (training); ``False`` keeps the shards disjoint (evaluation). ``None`` means
            ``shuffle``.
        steps_per_batch: With ``K > 1`` each item is a list of up to ``K`` consecutive batches (a step
            group); with 1 (default) each item is one ``(images, targets)`` batch.
        augment: Applied to every yielded batch of images on their device, e.g.
            :class:`~lit_mnist.augment.RandomAffine`: called as ``augment(images, uniforms)`` where
            ``uniforms`` ``(n, augment.draws)`` are the rows, for the batch's sample positions, of a
            table drawn once per epoch from ``(seed, epoch, rank)``. The augmented batches are so a pure
            function of the seed and the epoch: the same after a mid-epoch resume and for any
            ``steps_per_batch``.

    Raises:
        TypeError: If ``images`` or ``targets`` is not a tensor.
        ValueError: If an argument is out of range or the tensors do not match in length or device.

    Example::

        loader = InMemoryBatchLoader(images, targets, 256, shuffle=True, seed=42).to("cuda")
        trainer.fit(model, train_dataloaders=loader)
    """

    # Like a DataLoader's: Lightning reads `batch_sampler` beside `sampler` to tell whether a loader shuffles.
    batch_sampler: None = None

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        pad_shards: bool | None = None,
        steps_per_batch: int = 1,
        augment: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        for name, tensor in (("images", images), ("targets", targets)):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dim() < 1:
                raise ValueError(f"{name} must have a sample dimension, got a 0-d tensor")
        if images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"images and targets must have the same length, got {images.shape[0]} images"
                f" and {targets.shape[0]} targets"
            )
        if images.device != targets.device:
            raise ValueError(
                f"images and targets must be on the same device, got {images.device} and {targets.device}"
            )
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.num_replicas = _check_int("num_replicas", num_replicas, minimum=1)
        _check_int("rank", rank)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.rank = rank
        self.seed = _check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.pad_shards = self.shuffle if pad_shards is None else bool(pad_shards)
        self.steps_per_batch = check_steps_per_batch(steps_per_batch)
        draws = getattr(augment, "draws", None)
        if augment is not None and (not isinstance(draws, int) or draws < 1):
            raise ValueError("augment must have an int attribute `draws` >= 1 (uniform numbers per sample)")
        self.augment = augment

        self._images = images
        self._targets = targets
        self._epoch = 0
        # Position in epoch `_epoch`: items yielded so far by the pass that owns `_pass_id`.
        self._consumed = 0
        # Set by `load_state_dict`: the next pass of `_epoch` starts at item `_consumed`.
        self._resume_pending = False
        self._pass_id = 0
        self._sampler = _LoaderSampler(self)

    # ----------------------------------------------------------------------------------------------
    # Sizes and views

    @property
    def images(self) -> Tensor:
        """All inputs of the split, ``(N, ...)``."""
        return self._images

    @property
    def targets(self) -> Tensor:
        """All targets of the split, ``(N,)``."""
        return self._targets

    @property
    def device(self) -> torch.device:
        """The device the held tensors (and so the yielded batches) are on."""
        return self._images.device

    @property
    def dataset(self) -> TensorDataset:
        """The whole split (all ``N`` samples, not this rank's shard) as a ``TensorDataset`` view.

        Lightning reads ``len(loader.dataset)``; like a ``DataLoader`` with a ``DistributedSampler``,
        it is the size of the split. This rank's share per epoch is ``len(loader.sampler)``.
        """
        return TensorDataset(self._images, self._targets)

    @property
    def sampler(self) -> _LoaderSampler:
        """The object Lightning calls ``set_epoch`` on; ``len()`` is this rank's samples per epoch."""
        return self._sampler

    @property
    def epoch(self) -> int:
        """The epoch whose order the next pass yields."""
        return self._epoch

    @property
    def num_samples(self) -> int:
        """Samples per epoch for this rank, padding included (``ceil(N / num_replicas)`` when padded)."""
        n = self._images.shape[0]
        if self.pad_shards:
            return math.ceil(n / self.num_replicas)
        return len(range(self.rank, n, self.num_replicas))

    @property
    def num_batches(self) -> int:
        """Batches of ``batch_size`` per epoch for this rank (optimizer steps, with step groups)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        """Items (batches, or groups of ``steps_per_batch`` batches) per epoch for this rank.

        The full epoch, also while a resumed pass is pending.
        """
        return math.ceil(self.num_batches / self.steps_per_batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={self._images.shape[0]}, batch_size={self.batch_size},"
            f" shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last},"
            f" num_replicas={self.num_replicas}, rank={self.rank}, pad_shards={self.pad_shards},"
            f" steps_per_batch={self.steps_per_batch}, augment={self.augment!r},"
            f" device={self.device}, epoch={self._epoch})"
        )

    # ----------------------------------------------------------------------------------------------
    # Order

    def epoch_indices(self, epoch: int | None = None) -> Tensor:
        """This rank's sample indices for one epoch, in the order they are yielded (CPU, int64).

        Args:
            epoch: The epoch; ``None`` means the current one.

        Returns:
            A tensor of ``num_samples`` indices into the split (before ``drop_last``).
        """
        epoch = self._epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        n = self._images.shape[0]
        if self.shuffle:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(_generator_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.num_replicas if self.pad_shards else n
        if total > n:  # wrap around like DistributedSampler (n > 0 here since total >= 1)
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.num_replicas]

    def epoch_uniforms(self, epoch: int | None = None) -> Tensor:
        """The augmentation table of one epoch for this rank: ``(num_samples, augment.draws)`` uniforms in [0, 1).

        Row ``i`` belongs to the ``i``-th sample this rank yields in the epoch (CPU, float32).

        Raises:
            ValueError: If the loader has no ``augment``.
        """
        if self.augment is None:
            raise ValueError("this loader has no augment")
        epoch = self._epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(_augment_seed(self.seed, epoch, self.rank))
        return torch.rand(self.num_samples, self.augment.draws, generator=generator)  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next pass yields.

        Lightning calls this (through :attr:`sampler`) at the start of every epoch. Moving to another
        epoch starts it from its first batch and discards a pending resume position; setting the
        current epoch again changes nothing.

        Args:
            epoch: The epoch, >= 0.

        Raises:
            ValueError: If ``epoch`` is not an int >= 0.
        """
        epoch = _check_int("epoch", epoch, minimum=0)
        if epoch != self._epoch:
            self._epoch = epoch
            self._consumed = 0
            self._resume_pending = False

    # ----------------------------------------------------------------------------------------------
    # Iteration

    def __iter__(self) -> Iterator[Any]:
        """Starts a pass over this rank's batches (or step groups) of the current epoch.

        The epoch and the start item are read when the first item is taken, so ``set_epoch`` and
        ``load_state_dict`` may come between ``iter()`` and the first ``next()``. Only one pass at a
        time is tracked for :meth:`state_dict`: the one that most recently took its first item.

        Returns:
            An iterator of ``(images, targets)`` batches, each with the held tensors' device and dtype;
            with ``steps_per_batch > 1``, of lists of up to ``steps_per_batch`` such batches.
        """
        if not self._resume_pending:
            self._consumed = 0
        return self._items()

    def _items(self) -> Iterator[Any]:
        self._pass_id += 1
        pass_id = self._pass_id
        start = self._consumed if self._resume_pending else 0
        self._resume_pending = False
        self._consumed = start
        bs, group = self.batch_size, self.steps_per_batch
        end = self.num_batches * bs if self.drop_last else self.num_samples  # samples this epoch
        images, targets = self._images, self._targets
        # The order is 0..N-1 when neither shuffled nor sharded: contiguous slices are views, no copy.
        index = None
        if self.shuffle or self.num_replicas > 1:
            index = self.epoch_indices().to(images.device, non_blocking=True)
        augment, uniforms = self.augment, None
        if augment is not None:
            uniforms = self.epoch_uniforms().to(images.device, non_blocking=True)
        for item in range(start, len(self)):
            lo, hi = item * group * bs, min((item + 1) * group * bs, end)
            if self._pass_id == pass_id:
                self._consumed = item + 1
            if index is None:
                x, y = images[lo:hi], targets[lo:hi]
            else:
                x, y = images.index_select(0, index[lo:hi]), targets.index_select(0, index[lo:hi])
            if augment is not None and uniforms is not None:
                x = augment(x, uniforms[lo:hi])
            if group == 1:
                yield x, y
            else:
                yield list(zip(x.split(bs), y.split(bs), strict=True))

    # ----------------------------------------------------------------------------------------------
    # Checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from: epoch, seed and batches of that epoch already yielded.

        ``batches_consumed`` and ``num_batches`` count items (step groups when ``steps_per_batch > 1``).
        The configuration that fixes the order (split size, batch size, group size, shuffling, sharding) is saved
        too and checked by :meth:`load_state_dict`. ``rank`` is not saved: Lightning writes rank 0's
        state and every rank loads it, which is right because padded training shards all advance in
        step. Every value is a plain ``int`` or ``bool``.

        Returns:
            A dict to pass to :meth:`load_state_dict`.
        """
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "epoch": self._epoch,
            "batches_consumed": self._consumed,
            "num_batches": len(self),
            "steps_per_batch": self.steps_per_batch,
            "dataset_size": int(self._images.shape[0]),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "pad_shards": self.pad_shards,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position saved by :meth:`state_dict`.

        The seed and epoch are taken from ``state``; the next pass over that epoch starts after the
        ``batches_consumed`` batches already yielded, and later passes start from batch 0.

        Args:
            state: A dict returned by :meth:`state_dict`.

        Raises:
            ValueError: If ``state`` is malformed.
            LoaderStateError: (a ``ValueError``) If ``state`` was saved by a loader with a different split
                size, batch size, group size, shuffling, ``drop_last`` or sharding (its positions would mean other samples).
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from InMemoryBatchLoader.state_dict(), got {type(state)}")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"state version must be {_STATE_VERSION}, got {state.get('version')!r}:"
                " it was not saved by this InMemoryBatchLoader"
            )
        expected = {
            "dataset_size": int(self._images.shape[0]),
            "batch_size": self.batch_size,
            "steps_per_batch": self.steps_per_batch,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "pad_shards": self.pad_shards,
        }
        for key, value in expected.items():
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
            if state[key] != value:
                raise LoaderStateError(
                    f"state was saved with {key}={state[key]!r} but this loader has {key}={value!r};"
                    " resuming mid-epoch needs the same split and loader settings"
                )
        for key in ("seed", "epoch", "batches_consumed"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
        seed = _check_int("state['seed']", state["seed"])
        epoch = _check_int("state['epoch']", state["epoch"], minimum=0)
        consumed = _check_int("state['batches_consumed']", state["batches_consumed"], minimum=0)
        if consumed > len(self):
            raise ValueError(f"state['batches_consumed'] must be <= {len(self)} batches, got {consumed}")
        self.seed = seed
        self._epoch = epoch
        self._consumed = consumed
        self._resume_pending = True

    # ----------------------------------------------------------------------------------------------
    # Placement

    def to(self, device: torch.device | str | int) -> "InMemoryBatchLoader":
        """Moves the held images and targets to ``device``; batches are then taken there.

        Args:
            device: Anything ``Tensor.to`` accepts as a device, e.g. ``"cuda"`` or ``torch.device("cpu")``.

        Returns:
            This loader.
        """
        self._images = self._images.to(device)
        self._targets = self._targets.to(device)
        return self
