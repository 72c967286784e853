"""CIFAR-10/100 from torchvision's python archives, written here in the same pickle format."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from sastc_jax import data
from sastc_jax.data import cifar_python, static

HOST = {"process_index": 0, "process_count": 1, "num_devices": 1, "num_threads": 1}


def dump(path: str, content: dict, python2_names: bool = False) -> None:
    """Pickle `content` with protocol 2 and bytes keys, as the archive files are written.

    python2_names: name NumPy's array constructor numpy.core.multiarray, as the
    original files (pickled by Python 2) do.
    """
    blob = pickle.dumps(content, protocol=2)
    if python2_names:
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"cnumpy.core.multiarray\n" in blob
    with open(path, "wb") as handle:
        handle.write(blob)


def write_archive(root, name: str, sizes: dict[str, int], seed: int = 0):
    """A cifar-10-batches-py/ or cifar-100-python/ folder under `root`.

    sizes: images per file ('data_batch_1', 'test', ...). Returns {file: (data, labels)}
    with data uint8 (N, 3072) as stored.
    """
    archive = cifar_python.ARCHIVES[name]
    folder = os.path.join(root, archive.folder)
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    written = {}
    for file, n in sizes.items():
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, archive.num_classes, size=n).tolist()
        content = {
            b"batch_label": f"{file} of {name}".encode(),
            b"data": pixels,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        if name == "cifar10":
            content[b"labels"] = labels
        else:
            content[b"fine_labels"] = labels
            content[b"coarse_labels"] = [label // 5 for label in labels]
        dump(os.path.join(folder, file), content, python2_names=file.startswith("data_batch"))
        written[file] = (pixels, np.asarray(labels))
    names = [f"class_{i}".encode() for i in range(archive.num_classes)]
    dump(os.path.join(folder, archive.meta_file), {archive.names_key.encode(): names})
    return written


CIFAR10_SIZES = {**{f"data_batch_{i}": 2 + i for i in range(1, 6)}, "test_batch": 5}
CIFAR100_SIZES = {"train": 12, "test": 7}


def as_images(pixels: np.ndarray) -> np.ndarray:
    """Reference decoding, one example at a time: R, G, B planes of 32 rows of 32."""
    out = np.empty((len(pixels), 32, 32, 3), np.uint8)
    for i, row in enumerate(pixels):
        for c in range(3):
            out[i, :, :, c] = row[c * 1024 : (c + 1) * 1024].reshape(32, 32)
    return out


@pytest.mark.parametrize(
    "name,sizes,train_files",
    [
        ("cifar10", CIFAR10_SIZES, [f"data_batch_{i}" for i in range(1, 6)]),
        ("cifar100", CIFAR100_SIZES, ["train"]),
    ],
)
def test_exact_pixels_and_labels(tmp_path, name, sizes, train_files):
    written = write_archive(tmp_path, name, sizes)
    test_file = "test_batch" if name == "cifar10" else "test"
    for split, files in (("train", train_files), ("test", [test_file])):
        images, labels = cifar_python.load_split(name, split, str(tmp_path))
        expected = np.concatenate([as_images(written[f][0]) for f in files])
        assert images.dtype == np.uint8 and images.shape == expected.shape
        np.testing.assert_array_equal(images, expected)
        # CIFAR-100: the fine labels (the coarse ones, label // 5, would differ).
        np.testing.assert_array_equal(labels, np.concatenate([written[f][1] for f in files]))
        assert labels.dtype == np.int64


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_pipeline_auto_detects_the_archive(tmp_path, name, classes):
    sizes = CIFAR10_SIZES if name == "cifar10" else CIFAR100_SIZES
    written = write_archive(tmp_path, name, sizes)
    assert data.resolve_source(name, str(tmp_path)) == "cifar_python"
    test = data.get_dataset(name, "test", batch_size=4, train=False, data_dir=str(tmp_path), **HOST)
    batches = list(test.epoch(0))
    assert (test.num_examples, test.num_classes, test.input_shape) == (
        sizes["test_batch" if name == "cifar10" else "test"],
        classes,
        (32, 32, 3),
    )
    raw, labels = written["test_batch" if name == "cifar10" else "test"]
    mask = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[mask]
    mean, std = (
        (static.CIFAR10_MEAN, static.CIFAR10_STD)
        if name == "cifar10"
        else (static.CIFAR100_MEAN, static.CIFAR100_STD)
    )
    np.testing.assert_allclose(images, (as_images(raw) / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], labels)

    # The archive folder itself is accepted as data_dir too; training augments (pad 4,
    # crop, flip) exactly like the TFDS path, deterministically per (seed, epoch).
    folder = os.path.join(tmp_path, cifar_python.ARCHIVES[name].folder)
    common = dict(batch_size=4, train=True, seed=5, data_dir=folder, **HOST)
    train = data.get_dataset(name, "train", **common)
    plain = data.get_dataset(name, "train", augment=False, **common)
    aug_batches = list(train.epoch(1))
    for augmented, clean in zip(aug_batches, plain.epoch(1), strict=True):
        np.testing.assert_array_equal(augmented["label"], clean["label"])
    assert any(
        not np.array_equal(a["image"], c["image"])
        for a, c in zip(aug_batches, plain.epoch(1), strict=True)
    )
    again = list(data.get_dataset(name, "train", **common).epoch(1, start_step=1))
    for resumed, whole in zip(again, aug_batches[1:], strict=True):
        np.testing.assert_array_equal(resumed["image"], whole["image"])


def test_source_selection(tmp_path):
    write_archive(tmp_path, "cifar10", CIFAR10_SIZES)
    assert data.resolve_source("cifar10", str(tmp_path), "tfds") == "tfds"
    assert data.resolve_source("cifar100", str(tmp_path)) == "tfds"  # no cifar-100-python/
    assert data.resolve_source("cifar10", None) == "tfds"
    with pytest.raises(ValueError, match=r"source 'folder' is not a reader of cifar10"):
        data.resolve_source("cifar10", str(tmp_path), "folder")


def test_missing_archive_names_where_it_looked(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.get_dataset(
            "cifar100",
            "train",
            batch_size=4,
            train=True,
            data_dir=str(tmp_path),
            source="cifar_python",
            **HOST,
        )
    message = str(error.value)
    assert os.path.join(str(tmp_path), "cifar-100-python") in message
    assert "torchvision" in message


def test_missing_batch_file_is_named(tmp_path):
    write_archive(tmp_path, "cifar10", CIFAR10_SIZES)
    os.remove(os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_4"))
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_4"):
        cifar_python.load_split("cifar10", "train", str(tmp_path))


def test_truncated_file_names_the_file(tmp_path):
    write_archive(tmp_path, "cifar10", CIFAR10_SIZES)
    path = os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as handle:
        blob = handle.read()
    with open(path, "wb") as handle:
        handle.write(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"data_batch_2 is not a readable CIFAR python archive"):
        cifar_python.load_split("cifar10", "train", str(tmp_path))


def test_code_in_a_pickle_is_refused(tmp_path):
    write_archive(tmp_path, "cifar10", CIFAR10_SIZES)
    path = os.path.join(tmp_path, "cifar-10-batches-py", "test_batch")
    with open(path, "wb") as handle:
        # What pickle.dumps of an object whose __reduce__ returns (os.system, ('...',)) holds.
        handle.write(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.")
    with pytest.raises(ValueError, match=r"refusing to load os\.system"):
        cifar_python.load_split("cifar10", "test", str(tmp_path))


def test_wrong_archive_contents_are_rejected(tmp_path):
    write_archive(tmp_path, "cifar100", CIFAR100_SIZES)
    folder = os.path.join(tmp_path, "cifar-100-python")
    dump(os.path.join(folder, "meta"), {b"fine_label_names": [b"a"] * 10})
    with pytest.raises(ValueError, match=r"lists 10 b'fine_label_names', expected 100"):
        cifar_python.load_split("cifar100", "test", str(tmp_path))
    os.remove(os.path.join(folder, "meta"))
    dump(os.path.join(folder, "test"), {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"lacks the b'data' array or the b'fine_labels'"):
        cifar_python.load_split("cifar100", "test", str(tmp_path))
    dump(
        os.path.join(folder, "test"),
        {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]},
    )
    with pytest.raises(ValueError, match=r"labels span 0\.\.100, outside 0\.\.99"):
        cifar_python.load_split("cifar100", "test", str(tmp_path))
