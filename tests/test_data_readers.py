"""A dataset is its spec and its reader: a toy dataset and reader defined here, outside the
package, are served by ``get_dataset``; 'auto' follows the readers the spec names."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sastc_jax import configuration, data
from sastc_jax.data import readers, specs, static

HOST = {"process_index": 0, "process_count": 1, "num_devices": 1, "num_threads": 1}
TOY = specs.DatasetSpec(
    "toy_stripes",
    3,
    (4, 4, 1),
    ("auto", "toy_memory", "toy_files"),
    "made in the test",
    mean=(0.5,),
    std=(0.25,),
    crop_padding=1,
    flip=False,
)
MARKER = "toy_stripes.npz"


def toy_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Example i: every pixel ``10 * i`` (train) or ``10 * i + 5`` (test); label ``i % 3``."""
    count = 12 if split == "train" else 6
    values = 10 * np.arange(count) + (0 if split == "train" else 5)
    images = np.broadcast_to(values[:, None, None, None], (count, 4, 4, 1)).astype(np.uint8)
    return images, np.arange(count) % 3


def open_memory(spec, split, options):
    return static.array_loader(spec, *toy_arrays(split)), spec.num_classes


def open_files(spec, split, options):
    with np.load(os.path.join(options.data_dir, MARKER)) as stored:
        images, labels = stored[f"{split}_images"], stored[f"{split}_labels"]
    return static.array_loader(spec, images, labels), 2


def finds_files(spec, data_dir):
    return os.path.isfile(os.path.join(data_dir, MARKER))


@pytest.fixture
def toy_dataset():
    """:data:`TOY` and its two readers, registered for one test."""
    data.register_reader("toy_memory", data.Reader(open_memory))
    data.register_reader("toy_files", data.Reader(open_files, finds_files))
    data.register_dataset(TOY)
    yield TOY
    del specs.DATASETS[TOY.name]
    del readers.READERS["toy_memory"], readers.READERS["toy_files"]


def test_a_registered_dataset_is_served_with_its_spec(toy_dataset):
    assert data.NUM_CLASSES[TOY.name] == 3 and data.SOURCES[TOY.name] == TOY.sources
    assert TOY.name in data.DATASET_NAMES
    assert data.resolve_source(TOY.name, None) == "toy_memory"
    test = data.get_dataset(TOY.name, "test", batch_size=4, train=False, **HOST)
    assert (test.num_examples, test.num_classes, test.input_shape) == (6, 3, (4, 4, 1))
    batches = list(test.epoch(0))
    images = np.concatenate([batch["image"] for batch in batches])
    labels = np.concatenate([batch["label"] for batch in batches])
    masks = np.concatenate([batch["mask"] for batch in batches])
    assert images.shape == (8, 4, 4, 1) and masks.tolist() == [True] * 6 + [False] * 2
    expected = ((10 * np.arange(6) + 5) / 255 - 0.5) / 0.25  # normalised with the spec's
    np.testing.assert_allclose(images[:6, 0, 0, 0], expected, rtol=1e-6)
    assert labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    # Training crops with the spec's padding: a pixel is its example's value or the pad's.
    train = data.get_dataset(TOY.name, "train", batch_size=4, train=True, seed=1, **HOST)
    shifted = 0
    for batch in train.epoch(0):
        for image, label in zip(batch["image"] * 0.25 + 0.5, batch["label"], strict=True):
            values = set(np.round(image.ravel() * 255).astype(int).tolist())
            assert values <= {0, *range(10 * label, 120, 30)}
            shifted += len(values) == 2
    assert shifted > 0


def test_auto_picks_the_reader_that_finds_its_files(toy_dataset, tmp_path):
    images, labels = toy_arrays("test")
    np.savez(tmp_path / MARKER, test_images=images[:2], test_labels=labels[:2] % 2)
    assert data.resolve_source(TOY.name, str(tmp_path)) == "toy_files"
    assert data.resolve_source(TOY.name, str(tmp_path), "toy_memory") == "toy_memory"
    ds = data.get_dataset(
        TOY.name, "test", batch_size=2, train=False, data_dir=str(tmp_path), **HOST
    )
    assert (ds.num_examples, ds.num_classes) == (2, 2)  # the reader's class count
    with pytest.raises(ValueError, match="source 'tfds' is not a reader of toy_stripes"):
        data.resolve_source(TOY.name, None, "tfds")


def test_a_config_may_name_the_registered_dataset_and_its_readers(toy_dataset):
    config = configuration.base_config()
    config.dataset.name = TOY.name
    configuration.validate(config)
    config.dataset.source = "toy_files"
    configuration.validate(config)
    config.dataset.source = "tfds"
    with pytest.raises(ValueError, match="allowed: auto, toy_memory, toy_files"):
        configuration.validate(config)


def test_registration_refuses_taken_names_and_unknown_readers(toy_dataset):
    with pytest.raises(ValueError, match="'toy_stripes' is already registered"):
        data.register_dataset(TOY)
    with pytest.raises(ValueError, match="'tfds' is taken"):
        data.register_reader("tfds", data.Reader(open_memory))
    with pytest.raises(ValueError, match="sources must be 'auto' followed by"):
        data.register_dataset(specs.DatasetSpec("other", 2, (4, 4, 1), ("toy_memory",), "-"))
    orphan = specs.DatasetSpec("orphan", 2, (4, 4, 1), ("auto", "nowhere"), "-")
    with pytest.raises(ValueError, match="'nowhere', which is no registered reader"):
        readers.resolve(orphan, "/tmp")
