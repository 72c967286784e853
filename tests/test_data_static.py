"""Static-image pipelines: TFDS (mocked, offline) and Fashion-MNIST from IDX files."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import MockPolicy, mock_data

from sastc_jax import data
from sastc_jax.data import fashion_mnist, static

HOST = {"process_index": 0, "process_count": 1, "num_devices": 1, "num_threads": 1}
REAL_FASHION_DIR = fashion_mnist.DEFAULT_DIR


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the format of the Debian package)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_dir(directory, n_train: int, n_test: int, seed: int = 0):
    """Small Fashion-MNIST-shaped IDX files; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_stem, label_stem = fashion_mnist.FILES[split]
        write_idx(os.path.join(directory, image_stem + ".gz"), images)
        write_idx(os.path.join(directory, label_stem + ".gz"), labels)
        written[split] = (images, labels)
    return written


def first_epoch(ds: data.Dataset, epoch: int = 0) -> list[dict[str, np.ndarray]]:
    return list(ds.epoch(epoch))


# --------------------------------------------------------------------------- TFDS (mocked)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_end_to_end_under_mock(name, classes):
    with mock_data(num_examples=12, policy=MockPolicy.USE_CODE):
        raw = tfds.data_source(name, split="test")
        expected = np.stack([raw[i]["image"] for i in range(12)])
        labels = np.asarray([raw[i]["label"] for i in range(12)])
        test = data.get_dataset(name, "test", batch_size=8, train=False, **HOST)
        train = data.get_dataset(name, "train", batch_size=4, train=True, seed=3, **HOST)
        plain = data.get_dataset(
            name, "train", batch_size=4, train=True, seed=3, augment=False, **HOST
        )
        eval_batches = first_epoch(test)
        aug_batches, plain_batches = first_epoch(train, 2), first_epoch(plain, 2)

    assert (test.num_examples, test.num_classes, test.input_shape) == (12, classes, (32, 32, 3))
    assert test.steps_per_epoch == 2 and len(eval_batches) == 2
    images = np.concatenate([b["image"] for b in eval_batches])
    mask = np.concatenate([b["mask"] for b in eval_batches])
    assert images.dtype == np.float32 and images.shape == (16, 32, 32, 3)
    assert eval_batches[0]["label"].dtype == np.int32
    assert mask.tolist() == [True] * 12 + [False] * 4
    mean, std = (
        (static.CIFAR10_MEAN, static.CIFAR10_STD)
        if name == "cifar10"
        else (static.CIFAR100_MEAN, static.CIFAR100_STD)
    )
    np.testing.assert_allclose(images[:12], (expected / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in eval_batches])[:12], labels)

    assert train.steps_per_epoch == 3 and len(aug_batches) == 3
    for augmented, clean in zip(aug_batches, plain_batches, strict=True):
        np.testing.assert_array_equal(augmented["label"], clean["label"])
        assert augmented["image"].shape == (4, 32, 32, 3)
        assert augmented["mask"].all()
    assert any(
        not np.array_equal(a["image"], c["image"])
        for a, c in zip(aug_batches, plain_batches, strict=True)
    )


def test_fashion_mnist_tfds_source_under_mock():
    with mock_data(num_examples=9, policy=MockPolicy.USE_CODE):
        raw = tfds.data_source("fashion_mnist", split="test")
        expected = np.stack([raw[i]["image"] for i in range(9)])
        ds = data.get_dataset(
            "fashion_mnist", "test", batch_size=3, train=False, source="tfds", **HOST
        )
        images = np.concatenate([b["image"] for b in ds.epoch(0)])
    assert (ds.num_examples, ds.input_shape) == (9, (28, 28, 1))
    mean, std = static.FASHION_MNIST_MEAN[0], static.FASHION_MNIST_STD[0]
    np.testing.assert_allclose(images, (expected / 255.0 - mean) / std, atol=1e-5)


def test_imagenet_end_to_end_under_mock():
    with mock_data(num_examples=6, policy=MockPolicy.USE_CODE):
        raw = tfds.data_source("imagenet2012", split="validation")
        labels = [int(raw[i]["label"]) for i in range(6)]
        test = data.get_dataset("imagenet2012", "test", batch_size=4, train=False, **HOST)
        train = data.get_dataset("imagenet2012", "train", batch_size=2, train=True, **HOST)
        plain = data.get_dataset(
            "imagenet2012", "train", batch_size=2, train=True, augment=False, **HOST
        )
        eval_batches = first_epoch(test)
        aug_batches, plain_batches = first_epoch(train), first_epoch(plain)

    assert (test.num_examples, test.num_classes, test.input_shape) == (6, 1000, (224, 224, 3))
    assert [b["image"].shape for b in eval_batches] == [(4, 224, 224, 3)] * 2
    assert all(b["image"].dtype == np.float32 for b in eval_batches)
    assert np.concatenate([b["label"] for b in eval_batches])[:6].tolist() == labels
    assert np.concatenate([b["mask"] for b in eval_batches]).sum() == 6
    for augmented, clean in zip(aug_batches, plain_batches, strict=True):
        np.testing.assert_array_equal(augmented["label"], clean["label"])
        assert not np.array_equal(augmented["image"], clean["image"])


def test_imagenet_loader_normalises_and_crops():
    """A constant image normalises to (v/255 - mean)/std; eval crops the centre."""

    flat = np.full((300, 400, 3), 128, np.uint8)
    striped = np.zeros((256, 512, 3), np.uint8)
    striped[:, 128:384] = 255  # the centre square of side 256 is white
    loader = static.ImageNetLoader([{"image": flat, "label": 3}, {"image": striped, "label": 7}])
    images, labels = loader.load(np.array([0, 1]), rng=None)
    assert images.shape == (2, 224, 224, 3) and labels.tolist() == [3, 7]
    expected = (128 / 255 - np.asarray(static.IMAGENET_MEAN)) / np.asarray(static.IMAGENET_STD)
    np.testing.assert_allclose(images[0], np.broadcast_to(expected, (224, 224, 3)), atol=1e-5)
    white = (1 - np.asarray(static.IMAGENET_MEAN)) / np.asarray(static.IMAGENET_STD)
    np.testing.assert_allclose(images[1], np.broadcast_to(white, (224, 224, 3)), atol=1e-5)


def test_missing_tfds_dataset_fails_fast_with_instructions(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_dataset(
            "cifar10", "train", batch_size=8, train=True, data_dir=str(tmp_path), **HOST
        )
    message = str(error.value)
    assert str(tmp_path) in message and "tfds build cifar10" in message
    assert "array_record" in message


def test_missing_imagenet_names_manual_files(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_dataset(
            "imagenet2012", "test", batch_size=8, train=False, data_dir=str(tmp_path), **HOST
        )
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert os.path.join(manual, "ILSVRC2012_img_train.tar") in message
    assert os.path.join(manual, "ILSVRC2012_img_val.tar") in message


# --------------------------------------------------------------------------- Fashion-MNIST


def test_idx_reader_exact_pixels_and_labels(tmp_path):
    written = write_fashion_dir(tmp_path, n_train=7, n_test=5)
    for split, (images, labels) in written.items():
        source = fashion_mnist.FashionMnistIdxSource(split, str(tmp_path))
        assert len(source) == len(labels)
        assert source.images.dtype == np.uint8 and source.images.shape == (len(labels), 28, 28, 1)
        np.testing.assert_array_equal(source.images[..., 0], images)
        np.testing.assert_array_equal(source.labels, labels)
        record = source[2]
        assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8
        assert record["label"] == labels[2]


def test_fashion_pipeline_from_local_idx(tmp_path):
    written = write_fashion_dir(tmp_path, n_train=40, n_test=10)
    test = data.get_dataset(
        "fashion_mnist", "test", batch_size=4, train=False, data_dir=str(tmp_path), **HOST
    )
    batches = first_epoch(test)
    assert (test.num_examples, test.num_classes, test.input_shape) == (10, 10, (28, 28, 1))
    images = np.concatenate([b["image"] for b in batches])[:10]
    raw, labels = written["test"]
    expected = (raw[..., None] / 255.0 - static.FASHION_MNIST_MEAN[0]) / static.FASHION_MNIST_STD[0]
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], labels)

    train = data.get_dataset(
        "fashion_mnist", "train", batch_size=8, train=True, data_dir=str(tmp_path), **HOST
    )
    plain = data.get_dataset(
        "fashion_mnist",
        "train",
        batch_size=8,
        train=True,
        augment=False,
        data_dir=str(tmp_path),
        **HOST,
    )
    for augmented, clean in zip(first_epoch(train), first_epoch(plain), strict=True):
        np.testing.assert_array_equal(augmented["label"], clean["label"])
        assert not np.array_equal(augmented["image"], clean["image"])


def test_missing_idx_files_name_path_and_package(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.get_dataset(
            "fashion_mnist", "train", batch_size=8, train=True, data_dir=str(tmp_path), **HOST
        )
    message = str(error.value)
    assert os.path.join(str(tmp_path), "train-images-idx3-ubyte.gz") in message
    assert "dataset-fashion-mnist" in message


def test_truncated_idx_file_is_rejected(tmp_path):
    write_fashion_dir(tmp_path, n_train=3, n_test=3)
    path = os.path.join(tmp_path, "t10k-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as handle:
        content = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(content[:-10])
    with pytest.raises(ValueError, match="truncated"):
        fashion_mnist.FashionMnistIdxSource("test", str(tmp_path))


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL_FASHION_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason=f"Debian package dataset-fashion-mnist not installed ({REAL_FASHION_DIR} missing)",
)
def test_real_fashion_mnist_files():
    train = fashion_mnist.FashionMnistIdxSource("train")
    test = fashion_mnist.FashionMnistIdxSource("test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert np.bincount(train.labels, minlength=10).tolist() == [6000] * 10


# --------------------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_fix(tmp_path):
    write_fashion_dir(tmp_path, n_train=20, n_test=5)
    common = {"data_dir": str(tmp_path), "process_index": 0, "process_count": 1}
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'.*cifar10"):
        data.get_dataset("mnist", "train", batch_size=8, train=True, num_devices=1, **common)
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        data.get_dataset("fashion_mnist", "val", batch_size=8, train=True, num_devices=1, **common)
    with pytest.raises(ValueError, match="does not divide by the 4 local devices"):
        data.get_dataset(
            "fashion_mnist", "train", batch_size=6, train=True, num_devices=4, **common
        )
    with pytest.raises(ValueError, match=r"source 'x' is not a reader of fashion_mnist.*'tfds'"):
        data.get_dataset(
            "fashion_mnist", "train", batch_size=4, train=True, num_devices=1, source="x", **common
        )
    with pytest.raises(ValueError, match="fewer than one training batch"):
        data.get_dataset(
            "fashion_mnist", "train", batch_size=32, train=True, num_devices=1, **common
        )


def test_host_and_device_defaults_come_from_jax(tmp_path):
    import jax

    write_fashion_dir(tmp_path, n_train=16, n_test=16)
    ds = data.get_dataset(
        "fashion_mnist", "test", batch_size=8, train=False, data_dir=str(tmp_path)
    )
    assert (ds.process_index, ds.process_count) == (jax.process_index(), jax.process_count())
    with pytest.raises(ValueError, match="source 'local' is not a reader of cifar10"):
        data.get_dataset("cifar10", "test", batch_size=8, train=False, source="local")


def test_two_hosts_end_to_end(tmp_path):
    """Eval shards are disjoint and cover the split; both hosts run the same step count."""
    write_fashion_dir(tmp_path, n_train=50, n_test=11)
    seen = []
    steps = set()
    for host in range(2):
        ds = data.get_dataset(
            "fashion_mnist",
            "test",
            batch_size=4,
            train=False,
            data_dir=str(tmp_path),
            process_index=host,
            process_count=2,
            num_devices=2,
        )
        indices, mask = ds.host_indices(0)
        batches = first_epoch(ds)
        assert len(batches) == ds.steps_per_epoch
        assert np.array_equal(np.concatenate([b["mask"] for b in batches]), mask.reshape(-1))
        seen.append(set(indices[mask].tolist()))
        steps.add(ds.steps_per_epoch)
    assert len(steps) == 1
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(11))
