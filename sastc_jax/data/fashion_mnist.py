"""Fashion-MNIST read straight from the IDX files (offline, no TFDS preparation).

Debian's `dataset-fashion-mnist` package installs the four gzipped IDX files in
/usr/share/datasets/fashion-mnist. TFDS refuses them (they are re-compressed, so the
checksums differ); this module reads them directly and returns what the TFDS
`fashion_mnist` source returns: uint8 (28, 28, 1) images and int64 labels in 0..9,
60,000 train and 10,000 test examples.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sastc_jax.data.errors import DataFileError, reading

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08
REMEDY = (
    "replace it with an intact copy (reinstall `dataset-fashion-mnist`, or download the "
    "four IDX files again), or point config.dataset.data_dir at another copy."
)


def _open_idx(directory: str, stem: str):
    """Open `stem`.gz (or the uncompressed `stem`) in `directory` for binary reading."""
    gz_path = os.path.join(directory, stem + ".gz")
    if os.path.isfile(gz_path):
        return gzip.open(gz_path, "rb"), gz_path
    raw_path = os.path.join(directory, stem)
    if os.path.isfile(raw_path):
        return open(raw_path, "rb"), raw_path
    raise FileNotFoundError(
        f"Fashion-MNIST file not found: {gz_path} (nor uncompressed {raw_path}). "
        "Install the Debian package that provides it (`apt-get install dataset-fashion-mnist`, "
        f"files land in {DEFAULT_DIR}), or pass data_dir= pointing at a directory with the four "
        "IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), or use source='tfds'."
    )


def read_idx(directory: str, stem: str) -> np.ndarray:
    """Read one unsigned-byte IDX file into a uint8 array of the shape its header declares."""
    handle, path = _open_idx(directory, stem)
    with reading(path, REMEDY), handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DataFileError(
            f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r}); {REMEDY}", path
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DataFileError(
            f"{path} is truncated or corrupt: header declares shape {shape} "
            f"({expected} bytes) but {len(data) - header} bytes follow; {REMEDY}",
            path,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28, 1) and labels int64 (N,) of `split` ('train' or 'test')."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(FILES)}, got {split!r}.")
    image_stem, label_stem = FILES[split]
    images = read_idx(directory, image_stem)
    labels = read_idx(directory, label_stem)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, "
            f"labels {labels.shape}; expected (N, 28, 28) and (N,)."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"Fashion-MNIST {split} labels in {directory} exceed 9.")
    return images[..., None], labels.astype(np.int64)


class FashionMnistIdxSource(Sequence[dict[str, Any]]):
    """Random-access source with the records of `tfds.data_source('fashion_mnist')`.

    Each record is {'image': uint8 (28, 28, 1), 'label': int64}. The whole split is held in
    memory as `images` (N, 28, 28, 1) uint8 and `labels` (N,) int64 (47 MB for train).
    """

    def __init__(self, split: str, data_dir: str | None = None):
        self.directory = data_dir or DEFAULT_DIR
        self.split = split
        self.images, self.labels = load_split(self.directory, split)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return {"image": self.images[index], "label": self.labels[index]}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[int(i)] for i in indices]

    def __repr__(self) -> str:
        return f"FashionMnistIdxSource(split={self.split!r}, dir={self.directory!r}, n={len(self)})"
