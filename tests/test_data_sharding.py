"""Shuffling, host sharding, padding and resume of the epoch iterator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sastc_jax.data import Dataset, sharding
from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.static import ArrayImageLoader


def index_loader(n: int) -> ArrayImageLoader:
    """Images whose first two pixels spell the example index (so batches reveal it)."""
    images = np.zeros((n, 8, 8, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    return ArrayImageLoader(images, np.arange(n) % 10, mean=(0.0,), std=(1 / 255,), pad=0)


def make(n: int, *, host: int = 0, hosts: int = 1, batch: int = 4, train: bool, seed: int = 0):
    return Dataset(
        index_loader(n),
        name="toy",
        split="train" if train else "test",
        num_classes=10,
        batch_size=batch,
        seed=seed,
        train=train,
        augment=False,
        process_index=host,
        process_count=hosts,
        num_threads=2,
        prefetch=2,
    )


def decoded_indices(batches) -> np.ndarray:
    images = np.concatenate([b["image"] for b in batches])
    return np.rint(images[:, 0, 0, 0] + 256 * images[:, 0, 1, 0]).astype(np.int64)


@pytest.mark.parametrize("n,hosts,batch", [(23, 2, 4), (10, 3, 2), (5, 2, 8), (1, 2, 1)])
def test_eval_shards_cover_split_exactly_once(n, hosts, batch):
    seen, steps = [], set()
    for host in range(hosts):
        ds = make(n, host=host, hosts=hosts, batch=batch, train=False)
        batches = list(ds.epoch(0))
        assert len(batches) == ds.steps_per_epoch
        steps.add(ds.steps_per_epoch)
        mask = np.concatenate([b["mask"] for b in batches])
        assert all(b["image"].shape[0] == batch for b in batches)
        seen.append(decoded_indices(batches)[mask])
    assert steps == {max(1, math.ceil(math.ceil(n / hosts) / batch))}  # same on every host
    everything = np.concatenate(seen)
    assert sorted(everything.tolist()) == list(range(n))  # disjoint and complete


def test_train_shards_disjoint_equal_and_drop_remainder():
    n, hosts, batch = 103, 2, 8
    shares = []
    for host in range(hosts):
        ds = make(n, host=host, hosts=hosts, batch=batch, train=True, seed=5)
        batches = list(ds.epoch(4))
        assert ds.steps_per_epoch == (n // hosts) // batch == len(batches)
        assert all(b["mask"].all() and b["image"].shape[0] == batch for b in batches)
        got = decoded_indices(batches)
        np.testing.assert_array_equal(got, ds.host_indices(4)[0].reshape(-1))
        np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), got % 10)
        shares.append(set(got.tolist()))
    assert not shares[0] & shares[1]
    assert len(shares[0]) == len(shares[1]) == 6 * batch


def test_epoch_shuffle_is_reproducible_and_changes_per_epoch():
    first = decoded_indices(make(64, train=True, seed=11).epoch(3))
    again = decoded_indices(make(64, train=True, seed=11).epoch(3))
    following = decoded_indices(make(64, train=True, seed=11).epoch(4))
    other_seed = decoded_indices(make(64, train=True, seed=12).epoch(3))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, following)
    assert not np.array_equal(first, other_seed)
    assert sorted(first.tolist()) == list(range(64))


def test_permutation_is_global_and_host_independent():
    """Global batches are consecutive slices of one permutation of (seed, epoch), whatever
    the host count: host p holds the p-th part of each (so resuming on another number of
    hosts, or a single-process run, sees the same global batches)."""
    permutation = sharding.epoch_permutation(42, seed=1, epoch=2)
    parts = [sharding.train_host_indices(42, 4, 1, 2, host, 2) for host in range(2)]
    global_batches = np.concatenate(parts, axis=1)  # (steps, hosts * batch)
    np.testing.assert_array_equal(global_batches.reshape(-1), permutation[:40])
    one_host = sharding.train_host_indices(42, 8, 1, 2, 0, 1)
    np.testing.assert_array_equal(global_batches, one_host)
    assert sharding.train_steps(42, 4, 2) == sharding.train_steps(42, 8, 1) == 5


def test_resume_mid_epoch_gives_the_same_batches():
    ds = make(50, train=True, seed=2, batch=5)
    full = list(ds.epoch(1))
    resumed = list(ds.epoch(1, start_step=4))
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert list(ds.epoch(1, start_step=ds.steps_per_epoch)) == []
    with pytest.raises(ValueError, match="start_step"):
        ds.epoch(1, start_step=ds.steps_per_epoch + 1)


def test_augmentation_is_deterministic_per_example():
    """The crop/flip of an example depends on (seed, epoch, index), not on its batch."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 12, 12, 3), dtype=np.uint8)
    loader = ArrayImageLoader(images, np.zeros(30, np.int64), (0.5,) * 3, (0.25,) * 3, pad=3)
    random = ExampleRandom(seed=4, epoch=7)
    together, _ = loader.load(np.array([3, 9, 17]), random)
    alone, _ = loader.load(np.array([17]), random)
    np.testing.assert_array_equal(together[2], alone[0])
    other_epoch, _ = loader.load(np.array([3, 9, 17]), ExampleRandom(seed=4, epoch=8))
    assert not np.array_equal(together, other_epoch)
