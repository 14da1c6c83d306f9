"""Tests of lit_mnist.loader.InMemoryBatchLoader: order, sharding, lengths, resume, Lightning wiring."""

import io
import itertools
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor

from lit_mnist.loader import InMemoryBatchLoader


def _data(n: int) -> tuple[Tensor, Tensor]:
    """Images whose single pixel is the sample's id, and targets equal to the id."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n)


def _loader(n: int, batch_size: int, **kwargs: Any) -> InMemoryBatchLoader:
    return InMemoryBatchLoader(*_data(n), batch_size, **kwargs)


def _ids(loader: InMemoryBatchLoader) -> list[list[int]]:
    """One pass as lists of sample ids, checking that images and targets stay paired."""
    batches = []
    for x, y in loader:
        assert x.shape[1:] == (1, 1, 1)
        assert y.dtype == torch.int64
        assert torch.equal(x.view(-1).long(), y)
        batches.append(y.tolist())
    return batches


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


# --------------------------------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size"), [(20, 4), (23, 4), (3, 8), (1, 1)])
def test_every_sample_once_per_epoch(n: int, batch_size: int, shuffle: bool) -> None:
    loader = _loader(n, batch_size, shuffle=shuffle, seed=7)
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = _ids(loader)
        assert len(batches) == len(loader) == -(-n // batch_size)
        assert all(len(b) == batch_size for b in batches[:-1])
        assert len(batches[-1]) == n - batch_size * (len(batches) - 1)
        assert sorted(_flat(batches)) == list(range(n))
        if not shuffle:
            assert _flat(batches) == list(range(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last_drops_only_the_partial_batch(shuffle: bool) -> None:
    loader = _loader(23, 4, shuffle=shuffle, drop_last=True)
    batches = _ids(loader)
    assert len(loader) == len(batches) == 5
    assert all(len(b) == 4 for b in batches)
    assert len(set(_flat(batches))) == 20

    exact = _loader(20, 4, shuffle=shuffle, drop_last=True)
    assert len(exact) == 5
    assert sorted(_flat(_ids(exact))) == list(range(20))

    assert len(_loader(3, 8, drop_last=True)) == 0
    assert _ids(_loader(3, 8, drop_last=True)) == []


def test_len_matches_iteration_for_all_combinations() -> None:
    for n, bs, replicas, shuffle, drop_last, pad in itertools.product(
        (0, 1, 5, 12, 13), (1, 4, 5), (1, 2, 3), (False, True), (False, True), (False, True)
    ):
        samples = []
        for rank in range(replicas):
            loader = _loader(
                n, bs, shuffle=shuffle, drop_last=drop_last, num_replicas=replicas, rank=rank, pad_shards=pad
            )
            batches = _ids(loader)
            assert len(batches) == len(loader), (n, bs, replicas, shuffle, drop_last, pad, rank)
            shard = _flat(batches)
            if not drop_last:
                assert len(shard) == loader.num_samples == len(loader.sampler)
            assert shard == loader.epoch_indices().tolist()[: len(shard)]
            samples.append(len(shard))
        if not drop_last:
            assert sum(samples) == (-(-n // replicas) * replicas if pad else n)


def test_unshuffled_single_process_batches_are_views() -> None:
    images, targets = _data(10)
    loader = InMemoryBatchLoader(images, targets, 4)
    for x, y in loader:
        assert x.untyped_storage().data_ptr() == images.untyped_storage().data_ptr()
        assert y.untyped_storage().data_ptr() == targets.untyped_storage().data_ptr()


def test_order_is_a_function_of_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        loader = _loader(64, 16, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return _flat(_ids(loader))

    assert order(3, 0) == order(3, 0)
    assert order(3, 5) == order(3, 5)
    assert order(3, 0) != order(3, 1)
    assert order(3, 0) != order(4, 0)
    assert order(3, 0) != list(range(64))
    # Iterating twice without set_epoch repeats the epoch.
    loader = _loader(64, 16, shuffle=True, seed=3)
    assert _ids(loader) == _ids(loader)


def test_shuffling_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    _ids(_loader(50, 7, shuffle=True, seed=1))
    assert torch.equal(torch.get_rng_state(), state)


def test_sampler_dataset_and_set_epoch_through_the_sampler() -> None:
    loader = _loader(10, 3, shuffle=True, seed=2, num_replicas=3, rank=1)
    assert len(loader.dataset) == 10
    assert len(loader.sampler) == loader.num_samples == 4
    assert len(loader) == 2
    assert loader.batch_sampler is None
    loader.sampler.set_epoch(4)  # what Lightning calls at the start of an epoch
    assert loader.epoch == 4
    assert list(loader.sampler) == loader.epoch_indices(4).tolist()
    assert loader.to("cpu") is loader
    assert loader.device == torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# DDP shards


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("n", [12, 13, 14])
def test_training_shards_are_equal_and_cover_the_split(replicas: int, n: int) -> None:
    for epoch in range(2):
        shards = []
        for rank in range(replicas):
            loader = _loader(n, 4, shuffle=True, seed=5, num_replicas=replicas, rank=rank)
            assert loader.pad_shards
            loader.set_epoch(epoch)
            shards.append(_flat(_ids(loader)))
        sizes = {len(s) for s in shards}
        assert sizes == {-(-n // replicas)}
        ids = _flat(shards)
        assert set(ids) == set(range(n))
        if n % replicas == 0:
            assert len(ids) == len(set(ids)) == n
        else:
            # Padding repeats exactly the first (-n) % replicas samples of the epoch's permutation.
            assert len(ids) - n == (-n) % replicas
    # Different epochs give different shards.
    first = _loader(n, 4, shuffle=True, seed=5, num_replicas=replicas, rank=0)
    second = _loader(n, 4, shuffle=True, seed=5, num_replicas=replicas, rank=0)
    second.set_epoch(1)
    assert _ids(first) != _ids(second)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("n", [12, 13, 14])
def test_eval_shards_are_disjoint_and_exactly_the_split(replicas: int, n: int, shuffle: bool) -> None:
    shards = []
    for rank in range(replicas):
        loader = _loader(n, 4, shuffle=shuffle, pad_shards=False, num_replicas=replicas, rank=rank)
        shards.append(_flat(_ids(loader)))
    ids = _flat(shards)
    assert len(ids) == n
    assert sorted(ids) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_pad_shards_defaults_follow_shuffle() -> None:
    assert _loader(5, 2, shuffle=True).pad_shards
    assert not _loader(5, 2).pad_shards


def test_tiny_split_pads_by_repeating() -> None:
    shards = [_flat(_ids(_loader(2, 1, shuffle=True, num_replicas=3, rank=r))) for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]
    assert set(_flat(shards)) == {0, 1}


# --------------------------------------------------------------------------------------------------
# Resume in plain Python


@pytest.mark.parametrize(("replicas", "rank"), [(1, 0), (3, 2)])
@pytest.mark.parametrize("consumed", [0, 1, 3, 6])
def test_state_dict_resumes_mid_epoch(consumed: int, replicas: int, rank: int) -> None:
    n = 70 if replicas > 1 else 23
    kwargs: dict[str, Any] = {"shuffle": True, "seed": 11, "num_replicas": replicas, "rank": rank}
    reference = _loader(n, 4, **kwargs)
    reference.set_epoch(2)
    full = _ids(reference)
    consumed = min(consumed, len(full))

    loader = _loader(n, 4, **kwargs)
    loader.set_epoch(2)
    it = iter(loader)
    taken = [next(it)[1].tolist() for _ in range(consumed)]
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["seed"] == 11 and state["batches_consumed"] == consumed

    resumed = _loader(n, 4, **{**kwargs, "seed": 0})  # the seed comes from the state
    resumed.load_state_dict(state)
    assert len(resumed) == len(full)
    assert taken + _ids(resumed) == full
    # The next pass of the same epoch is whole again, and the next epoch starts at its first batch.
    assert _ids(resumed) == full
    resumed.set_epoch(3)
    reference.set_epoch(3)
    assert _ids(resumed) == _ids(reference)


def test_resume_in_lightnings_order_and_stale_state() -> None:
    full = _ids(_loader(23, 4, shuffle=True, seed=1))
    loader = _loader(23, 4, shuffle=True, seed=1)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()

    # Lightning: load_state_dict, then iter(), then set_epoch(same epoch), then next().
    resumed = _loader(23, 4, shuffle=True, seed=1)
    resumed.load_state_dict(state)
    it = iter(resumed)
    resumed.sampler.set_epoch(0)
    assert [y.tolist() for _, y in it] == full[2:]

    # Moving to another epoch discards the pending position.
    other = _loader(23, 4, shuffle=True, seed=1)
    other.load_state_dict(state)
    other.set_epoch(1)
    fresh = _loader(23, 4, shuffle=True, seed=1)
    fresh.set_epoch(1)
    assert _ids(other) == _ids(fresh)


def test_state_between_passes_and_epochs() -> None:
    loader = _loader(10, 4, shuffle=True)
    _ids(loader)
    assert loader.state_dict()["batches_consumed"] == 3
    iter(loader)  # a new pass of the same epoch has consumed nothing yet
    assert loader.state_dict()["batches_consumed"] == 0
    loader.set_epoch(1)
    assert loader.state_dict()["epoch"] == 1
    assert loader.state_dict()["batches_consumed"] == 0


def test_state_dict_loads_with_weights_only() -> None:
    loader = _loader(10, 3, shuffle=True, seed=9)
    loader.set_epoch(4)
    it = iter(loader)
    next(it)
    buffer = io.BytesIO()
    torch.save(loader.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state == loader.state_dict()


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"batch_size": 5}, "batch_size"),
        ({"num_replicas": 2}, "num_replicas"),
        ({"shuffle": False}, "shuffle"),
        ({"drop_last": True}, "drop_last"),
    ],
)
def test_load_state_dict_rejects_another_configuration(change: dict[str, Any], key: str) -> None:
    state = _loader(12, 4, shuffle=True).state_dict()
    kwargs: dict[str, Any] = {"batch_size": 4, "shuffle": True, **change}
    batch_size = kwargs.pop("batch_size")
    with pytest.raises(ValueError, match=f"state was saved with {key}="):
        _loader(12, batch_size, **kwargs).load_state_dict(state)


def test_load_state_dict_rejects_bad_states() -> None:
    loader = _loader(12, 4, shuffle=True)
    with pytest.raises(ValueError, match="state was saved with dataset_size=13"):
        loader.load_state_dict(_loader(13, 4, shuffle=True).state_dict())
    with pytest.raises(ValueError, match="state version must be 2"):
        loader.load_state_dict({"epoch": 1})
    state = loader.state_dict()
    with pytest.raises(ValueError, match=r"state\['batches_consumed'\] must be <= 3 batches, got 4"):
        loader.load_state_dict({**state, "batches_consumed": 4})
    with pytest.raises(ValueError, match="state is missing 'epoch'"):
        loader.load_state_dict({k: v for k, v in state.items() if k != "epoch"})


# --------------------------------------------------------------------------------------------------
# Step groups


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("shuffle", "replicas"), [(False, 1), (True, 1), (True, 2)])
@pytest.mark.parametrize("group", [2, 3, 5])
def test_groups_are_the_same_batches_k_at_a_time(
    group: int, shuffle: bool, replicas: int, drop_last: bool
) -> None:
    kwargs: dict[str, Any] = {"shuffle": shuffle, "seed": 5, "num_replicas": replicas, "drop_last": drop_last}
    plain = _loader(23, 4, **kwargs)
    grouped = _loader(23, 4, steps_per_batch=group, **kwargs)
    plain.set_epoch(3)
    grouped.set_epoch(3)
    batches = _ids(plain)
    groups = list(grouped)
    assert len(groups) == len(grouped) == -(-len(batches) // group)
    assert all(isinstance(g, list) and 1 <= len(g) <= group for g in groups)
    assert all(len(g) == group for g in groups[:-1])  # only an epoch's last group may be short
    assert [y.tolist() for g in groups for _, y in g] == batches
    assert all(torch.equal(x.view(-1).long(), y) for g in groups for x, y in g)
    assert grouped.num_batches == plain.num_batches == len(batches)


def test_a_group_size_of_one_yields_plain_batches() -> None:
    batch = next(iter(_loader(10, 4, steps_per_batch=1)))
    assert isinstance(batch, tuple) and isinstance(batch[0], Tensor)


def test_group_state_resumes_mid_epoch_and_refuses_another_group_size() -> None:
    reference = _loader(50, 4, shuffle=True, seed=3, steps_per_batch=3)
    full = [[y.tolist() for _, y in g] for g in reference]
    loader = _loader(50, 4, shuffle=True, seed=3, steps_per_batch=3)
    it = iter(loader)
    taken = [[y.tolist() for _, y in next(it)] for _ in range(2)]
    state = loader.state_dict()
    assert state["batches_consumed"] == 2 and state["num_batches"] == len(full) == 5
    resumed = _loader(50, 4, shuffle=True, seed=3, steps_per_batch=3)
    resumed.load_state_dict(state)
    assert taken + [[y.tolist() for _, y in g] for g in resumed] == full
    with pytest.raises(
        ValueError, match="saved with steps_per_batch=3 but this loader has steps_per_batch=2"
    ):
        _loader(50, 4, shuffle=True, seed=3, steps_per_batch=2).load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"batch_size": -3}, "batch_size must be >= 1, got -3"),
        ({"batch_size": 2.5}, r"batch_size must be an int, got 2.5 \(float\)"),
        ({"num_replicas": 0}, "num_replicas must be >= 1, got 0"),
        ({"num_replicas": 2, "rank": 2}, r"rank must be in \[0, num_replicas=2\), got 2"),
        ({"rank": -1}, r"rank must be in \[0, num_replicas=1\), got -1"),
        ({"seed": "1"}, r"seed must be an int, got '1' \(str\)"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"batch_size": 4, **kwargs}
    batch_size = args.pop("batch_size")
    with pytest.raises(ValueError, match=f"^{message}$"):
        InMemoryBatchLoader(*_data(8), batch_size, **args)


def test_mismatched_lengths_raise_value_error() -> None:
    with pytest.raises(
        ValueError, match=r"^images and targets must have the same length, got 8 images and 7 targets$"
    ):
        InMemoryBatchLoader(_data(8)[0], torch.arange(7), 4)


def test_bad_epoch_and_tensor_types() -> None:
    loader = _loader(8, 4)
    with pytest.raises(ValueError, match=r"^epoch must be >= 0, got -1$"):
        loader.set_epoch(-1)
    with pytest.raises(TypeError, match=r"^images must be a torch\.Tensor, got list$"):
        InMemoryBatchLoader([1, 2], torch.arange(2), 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Lightning


class _Recorder(L.LightningModule):
    """Records the sample ids of every training batch as ``(epoch, ids)``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.seen.append((self.current_epoch, y.tolist()))
        return self.layer(x.view(x.shape[0], -1)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _ValidatingRecorder(_Recorder):
    """Also records the sample ids of every validation batch."""

    def __init__(self) -> None:
        super().__init__()
        self.val_seen: list[int] = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.val_seen.extend(batch[1].tolist())


class _SimulatedCrash(Exception):
    pass


class _CrashAfter(L.Callback):
    """Saves a checkpoint after batch ``batch_idx`` of epoch ``epoch``, then crashes the run."""

    def __init__(self, epoch: int, batch_idx: int, path: Path) -> None:
        self.epoch = epoch
        self.batch_idx = batch_idx
        self.path = path

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)
            raise _SimulatedCrash


def _trainer(root: Path, max_epochs: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks,
    )


_N, _BS, _SEED = 22, 4, 123  # 6 batches per epoch, the last one of 2 samples


def _train_loader() -> InMemoryBatchLoader:
    return _loader(_N, _BS, shuffle=True, seed=_SEED)


def test_fit_sets_the_epoch(tmp_path: Path) -> None:
    model = _ValidatingRecorder()
    _trainer(tmp_path, max_epochs=2).fit(
        model, train_dataloaders=_train_loader(), val_dataloaders=_loader(_N, 8)
    )
    expected = []
    for epoch in range(2):
        reference = _train_loader()
        reference.set_epoch(epoch)
        expected += [(epoch, ids) for ids in _ids(reference)]
    assert model.seen == expected
    assert [ids for e, ids in model.seen if e == 0] != [ids for e, ids in model.seen if e == 1]
    assert sorted(model.val_seen) == sorted(list(range(_N)) * 2)


@pytest.mark.parametrize(("crash_epoch", "crash_batch"), [(1, 2), (0, 0), (0, 5)])
def test_fit_resumes_mid_epoch_without_skipping_or_repeating(
    tmp_path: Path, crash_epoch: int, crash_batch: int
) -> None:
    uninterrupted = _Recorder()
    _trainer(tmp_path / "a", max_epochs=3).fit(uninterrupted, train_dataloaders=_train_loader())
    assert len(uninterrupted.seen) == 3 * 6

    ckpt = tmp_path / "crash.ckpt"
    crashed = _Recorder()
    trainer = _trainer(tmp_path / "b", max_epochs=3, callbacks=[_CrashAfter(crash_epoch, crash_batch, ckpt)])
    with pytest.raises(_SimulatedCrash):
        trainer.fit(crashed, train_dataloaders=_train_loader())
    stop = crash_epoch * 6 + crash_batch + 1
    assert crashed.seen == uninterrupted.seen[:stop]

    resumed = _Recorder()
    _trainer(tmp_path / "c", max_epochs=3).fit(
        resumed, train_dataloaders=_train_loader(), ckpt_path=ckpt, weights_only=True
    )
    assert crashed.seen + resumed.seen == uninterrupted.seen


def test_validate_with_sharded_eval_loader(tmp_path: Path) -> None:
    for rank in range(2):
        model = _ValidatingRecorder()
        loader = _loader(_N, 8, shuffle=True, pad_shards=False, num_replicas=2, rank=rank)
        _trainer(tmp_path, max_epochs=1).validate(model, dataloaders=loader, verbose=False)
        assert model.val_seen == loader.epoch_indices().tolist()
    model = _ValidatingRecorder()
    loader = _loader(_N, 8)
    _trainer(tmp_path, max_epochs=1).validate(model, dataloaders=loader, verbose=False)
    assert model.val_seen == list(range(_N))
