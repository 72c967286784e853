"""The validation split: class-balanced, disjoint from training, independent of the seed."""

import numpy as np
import pytest
from test_data_static import HOST, write_fashion_dir

from sastc_jax import data
from sastc_jax.data import static, validation


def test_validation_indices_are_class_balanced_and_fixed():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    held_out = validation.validation_indices(labels, 0.1)
    np.testing.assert_array_equal(np.bincount(labels[held_out]), [1, 2, 3, 4])
    assert np.all(np.diff(held_out) > 0)
    np.testing.assert_array_equal(held_out, validation.validation_indices(labels, 0.1))
    # A class's draw depends on that class alone: permuting the others changes nothing.
    relabelled = labels.copy()
    relabelled[labels == 3] = 7
    same = validation.validation_indices(relabelled, 0.1)
    np.testing.assert_array_equal(same[labels[same] != 3], held_out[labels[held_out] != 3])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_validation_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        validation.validation_indices(np.zeros(10, int), fraction)


def fashion_split(directory, split, seed, **kwargs):
    return data.get_dataset(
        "fashion_mnist",
        split,
        batch_size=8,
        train=split == "train",
        seed=seed,
        data_dir=str(directory),
        validation_fraction=0.25,
        **HOST,
        **kwargs,
    )


def test_validation_split_is_disjoint_from_training_and_stable_across_seeds(tmp_path):
    written = write_fashion_dir(tmp_path, n_train=80, n_test=10)
    _, labels = written["train"]
    train_parts = [fashion_split(tmp_path, "train", seed, augment=False) for seed in (0, 3)]
    validation_parts = [fashion_split(tmp_path, "validation", seed) for seed in (0, 3)]
    held_out = validation_parts[0].loader.indices
    np.testing.assert_array_equal(held_out, validation_parts[1].loader.indices)
    np.testing.assert_array_equal(train_parts[0].loader.indices, train_parts[1].loader.indices)
    kept = train_parts[0].loader.indices
    assert np.intersect1d(kept, held_out).size == 0
    np.testing.assert_array_equal(np.union1d(kept, held_out), np.arange(80))
    assert validation_parts[0].num_examples == held_out.size
    # Every image trained on, for every seed and epoch, is a kept (never a held-out) one.
    raw = written["train"][0].reshape(80, -1)
    for part in train_parts:
        for epoch in (0, 1):
            for batch in part.epoch(epoch):
                pixels = batch["image"].reshape(len(batch["image"]), -1)
                unnormalised = np.round(
                    255 * (pixels * static.FASHION_MNIST_STD[0] + static.FASHION_MNIST_MEAN[0])
                )
                for image in unnormalised:
                    (source,) = np.flatnonzero(np.all(raw == image, axis=1))
                    assert source in kept
    # The validation split reads exactly the held-out examples, in order.
    read = np.concatenate([b["label"][b["mask"]] for b in validation_parts[0].epoch(0)])
    np.testing.assert_array_equal(read, labels[held_out])
    # The test split is untouched.
    assert fashion_split(tmp_path, "test", 0).num_examples == 10


def test_validation_split_needs_a_fraction(tmp_path):
    write_fashion_dir(tmp_path, n_train=20, n_test=4)
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        data.get_dataset(
            "fashion_mnist", "validation", batch_size=4, train=False, data_dir=str(tmp_path), **HOST
        )
