"""CIFAR-10/100 from the "python version" archives, as torchvision leaves them on disk.

    ROOT/cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/      train, test, meta

Each batch file is a pickled dict: b'data' uint8 (N, 3072), each row the 32x32 red, then
green, then blue plane (row-major); b'labels' (CIFAR-10) or b'fine_labels' (CIFAR-100,
whose b'coarse_labels' are not used) a list of N ints. The meta file names the classes
(b'label_names' / b'fine_label_names'). The files are unpickled with an unpickler that
admits only the NumPy array constructors these files use, so a tampered file cannot run
code. Returns what the TFDS `cifar10` / `cifar100` sources hold: uint8 (N, 32, 32, 3)
images and int64 labels, in file order.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import pickle

import numpy as np

from sastc_jax.data.errors import DataFileError, DatasetNotFoundError, reading

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import _reconstruct


@dataclasses.dataclass(frozen=True)
class Archive:
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int


ARCHIVES = {
    "cifar10": Archive(
        folder="cifar-10-batches-py",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key="labels",
        meta_file="batches.meta",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": Archive(
        folder="cifar-100-python",
        files={"train": ("train",), "test": ("test",)},
        label_key="fine_labels",
        meta_file="meta",
        names_key="fine_label_names",
        num_classes=100,
    ),
}
_PIXELS = 3 * 32 * 32
REMEDY = (
    "download the archive again (torchvision's CIFAR download) or point "
    "config.dataset.data_dir at an intact copy."
)

# The only globals a CIFAR pickle needs: NumPy's array reconstruction (Python 2 era
# pickles name numpy.core, NumPy 2 moved it to numpy._core), and the bytes constructor
# Python 3 writes into protocol-2 pickles.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR archive holds only dicts, lists "
                "and NumPy arrays"
            ) from None


def _load_dict(path: str) -> dict[str, object]:
    """Unpickle one archive file into a dict with str keys (the files use bytes keys)."""
    with reading(path, REMEDY):  # I/O errors; a broken pickle is named below
        try:
            with open(path, "rb") as handle:
                content = _ArrayUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise DataFileError(
                f"{path} is not a readable CIFAR python archive file (truncated or not the "
                "pickled dict torchvision's download holds): "
                f"{type(error).__name__}: {error}; {REMEDY}",
                path,
            ) from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR batch.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in content.items()}


def archive_dir(name: str, data_dir: str) -> str | None:
    """The archive folder of `name` at `data_dir` (torchvision's root, or the folder itself)."""
    archive = ARCHIVES[name]
    data_dir = os.path.expanduser(data_dir)
    for candidate in (os.path.join(data_dir, archive.folder), data_dir):
        if os.path.isfile(os.path.join(candidate, archive.files["test"][0])):
            return candidate
    return None


def load_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 32, 32, 3) and int64 labels (N,) of `split` ('train' or 'test')."""
    archive = ARCHIVES[name]
    directory = archive_dir(name, data_dir) if data_dir else None
    if directory is None:
        looked = (
            f"{os.path.join(data_dir, archive.folder)} nor {data_dir}"
            if data_dir
            else "nothing (data_dir is empty)"
        )
        raise DatasetNotFoundError(
            f"The {name} python archive was not found: looked at {looked}. Point data_dir at "
            f"the folder holding {archive.folder}/ (the root torchvision downloaded into), "
            f"which must contain {', '.join(archive.files['train'] + archive.files['test'])}."
        )
    missing = [f for f in archive.files[split] if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise DatasetNotFoundError(
            f"{name} {split} files missing in {directory}: {', '.join(missing)}. The archive "
            f"holds {', '.join(archive.files['train'] + archive.files['test'])}; extract it "
            "again."
        )
    _check_meta(archive, directory)
    images, labels = [], []
    for file in archive.files[split]:
        path = os.path.join(directory, file)
        batch = _load_dict(path)
        pixels = batch.get("data")
        if archive.label_key not in batch or not isinstance(pixels, np.ndarray):
            raise ValueError(
                f"{path} lacks the b'data' array or the b'{archive.label_key}' list of a "
                f"{name} batch (keys: {sorted(batch)})."
            )
        batch_labels = np.asarray(batch[archive.label_key], dtype=np.int64)
        if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != _PIXELS:
            raise ValueError(
                f"{path}: b'data' is {pixels.dtype} {pixels.shape}; a CIFAR batch is uint8 "
                f"(N, {_PIXELS})."
            )
        if batch_labels.shape != (pixels.shape[0],):
            raise ValueError(f"{path}: {pixels.shape[0]} images but {batch_labels.size} labels.")
        if batch_labels.size and not 0 <= batch_labels.min() <= batch_labels.max() < (
            archive.num_classes
        ):
            raise ValueError(
                f"{path}: labels span {batch_labels.min()}..{batch_labels.max()}, outside "
                f"0..{archive.num_classes - 1} for {name}."
            )
        images.append(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _check_meta(archive: Archive, directory: str) -> None:
    """When the meta file is there, it must name `num_classes` classes."""
    path = os.path.join(directory, archive.meta_file)
    if not os.path.isfile(path):
        return
    names = _load_dict(path).get(archive.names_key)
    if not isinstance(names, list) or len(names) != archive.num_classes:
        count = len(names) if isinstance(names, list) else "no"
        raise ValueError(
            f"{path} lists {count} b'{archive.names_key}', expected {archive.num_classes}: "
            f"is {directory} the {archive.folder} archive?"
        )
