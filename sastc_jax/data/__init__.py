"""Input pipelines: one call from (dataset, split, per-host batch, T, seed) to batches.

    ds = get_dataset('cifar10', 'train', batch_size=128, train=True, data_dir=...)
    for batch in ds.epoch(epoch):   # {'image': f32 (B, *ds.input_shape), 'label': i32 (B,),
        ...                         #  'mask': bool (B,)}

Datasets: 'cifar10', 'cifar100', 'imagenet2012' (TFDS, ArrayRecord, never downloaded),
'fashion_mnist' (Debian IDX files by default, or TFDS), 'dvs_gesture' and 'cifar10_dvs'
(tonic, `dvs` extra; T event frames per example, cached on disk); their classes, shapes,
normalisation and sources are in DATASETS (sastc_jax.data.specs). CIFAR can also be read
from torchvision's python archives ('cifar_python') and ImageNet from a folder of images
in torchvision's ImageFolder layout ('folder'); source='auto' picks them when data_dir
holds them (see SOURCES and resolve_source). The readers, by source name, are in
READERS (sastc_jax.data.readers); a spec names the ones that serve it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from sastc_jax.data.bad_examples import BadExamples, check_policy
from sastc_jax.data.errors import (
    BatchLargerThanSplitError,
    DataFileError,
    DatasetNotFoundError,
    UnreadableExampleError,
)
from sastc_jax.data.pipeline import BatchLoader, Dataset
from sastc_jax.data.readers import READERS, Reader, ReadOptions, register_reader
from sastc_jax.data.readers import resolve as _resolve
from sastc_jax.data.specs import DATASETS, DatasetSpec, dataset_spec, register_dataset


class _SpecField(Mapping[str, Any]):
    """``{dataset name: one field of its spec}``, read from DATASETS when asked (so a
    dataset registered later is in it)."""

    def __init__(self, field: str):
        self._field = field

    def __getitem__(self, name: str) -> Any:
        return getattr(DATASETS[name], self._field)

    def __iter__(self) -> Iterator[str]:
        return iter(DATASETS)

    def __len__(self) -> int:
        return len(DATASETS)


# Derived from the one spec per dataset (sastc_jax.data.specs).
NUM_CLASSES = _SpecField("num_classes")
DATASET_NAMES = DATASETS.keys()
SPLITS = ("train", "validation", "test")
# The readers of each dataset ('auto' picks one, see resolve_source).
SOURCES = _SpecField("sources")

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "NUM_CLASSES",
    "READERS",
    "SOURCES",
    "BadExamples",
    "BatchLargerThanSplitError",
    "BatchLoader",
    "DataFileError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetSpec",
    "ReadOptions",
    "Reader",
    "UnreadableExampleError",
    "dataset_spec",
    "get_dataset",
    "register_dataset",
    "register_reader",
    "resolve_source",
]


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def resolve_source(name: str, data_dir: str | None, source: str = "auto") -> str:
    """The reader `source` stands for: 'auto' becomes the first reader of the dataset's
    spec that finds its layout in data_dir ('cifar_python' for the CIFAR python archive,
    'folder' for ImageNet's train/ or val/), else the spec's default reader ('tfds',
    'local' for Fashion-MNIST, 'tonic' for the DVS datasets)."""
    return _resolve(dataset_spec(name), data_dir, source)


def get_dataset(
    name: str,
    split: str,
    *,
    batch_size: int,
    time_steps: int = 1,
    seed: int = 0,
    train: bool,
    data_dir: str | None = None,
    source: str = "auto",
    process_index: int | None = None,
    process_count: int | None = None,
    num_devices: int | None = None,
    augment: bool = True,
    image_size: int | None = None,
    cache_dir: str | None = None,
    max_shift: int | None = None,
    flip: bool | None = None,
    num_threads: int | None = None,
    prefetch: int | None = None,
    validation_fraction: float = 0.0,
    bad_examples: str = "error",
) -> Dataset:
    """One split of a dataset, sharded for this host, ready to iterate epoch by epoch.

    Args:
      name: one of DATASET_NAMES.
      split: 'train', 'validation' or 'test' ('test' is ImageNet's validation split).
        With ``validation_fraction > 0``, 'validation' is a fixed class-balanced share
        of the training split and 'train' the rest (:mod:`sastc_jax.data.validation`);
        'validation' needs ``validation_fraction > 0``.
      batch_size: per-host batch (global batch / process_count); must divide by num_devices.
      time_steps: T, the number of event frames of DVS datasets (>= 1); ignored otherwise
        (static images are repeated over T by the model).
      seed: shuffling and augmentation seed; epoch e's order depends only on (seed, e).
      train: True shuffles every epoch, augments (if `augment`) and drops the last
        incomplete batch; False keeps the split order and pads the last batch (mask False).
      data_dir: TFDS data_dir; tonic's save_to root for DVS; the IDX directory for
        fashion_mnist's local source (default /usr/share/datasets/fashion-mnist); the root
        holding cifar-10-batches-py/ or cifar-100-python/ for 'cifar_python'; the root
        holding train/ and val/ class folders for ImageNet's 'folder'.
      source: the reader, one of SOURCES[name]: 'tfds'; 'local' (Fashion-MNIST IDX
        files); 'cifar_python' (torchvision's CIFAR archives); 'folder' (ImageNet in
        ImageFolder layout; the class count is the number of class folders); 'tonic'
        (event recordings); 'auto' detects them from data_dir (resolve_source).
      process_index, process_count: this host and the host count (default: jax's).
      num_devices: local devices the batch is split over (default jax.local_device_count()).
      augment: train-time augmentation on/off.
      image_size: DVS frame size (default 48 for cifar10_dvs, 128 for dvs_gesture);
        ImageNet crop size (default 224; evaluation resizes the shorter side to
        round(image_size * 256 / 224) first).
      cache_dir: where framed DVS splits are cached (default <data_dir>/sastc_frames).
      max_shift: DVS roll range in pixels (default image_size // 12).
      flip: DVS horizontal flip (default on for cifar10_dvs, off for dvs_gesture).
      num_threads: grain threads preparing batches ahead (default min(8, cpus)).
      prefetch: batches prepared ahead (default num_threads).
      validation_fraction: share of the training split held out as 'validation' (0 = none).
      bad_examples: 'error' (an undecodable example raises UnreadableExampleError naming
        its file) or 'skip' (it is replaced with the next good example of its class; the
        Dataset's `bad_examples` records it; see :mod:`sastc_jax.data.bad_examples` for
        the readers this applies to).

    Raises:
      ValueError for bad arguments, DatasetNotFoundError (a FileNotFoundError) for data
      that is not on disk, ImportError for a missing optional package; each message names
      the problem and the fix.
    """
    _check_arguments(name, split, batch_size, validation_fraction, bad_examples)
    process_index, process_count, threads = _host_share(
        batch_size, process_index, process_count, num_devices, num_threads
    )
    source_split = "train" if split == "validation" else split
    source = resolve_source(name, data_dir, source)
    spec = dataset_spec(name)
    reader = READERS[source]
    options = ReadOptions(
        data_dir, time_steps, image_size, cache_dir, max_shift, flip, num_threads=max(1, threads)
    )
    loader, num_classes = reader.open(spec, source_split, options)
    if validation_fraction and split != "test":
        from sastc_jax.data.validation import split_off_validation

        loader = split_off_validation(loader, validation_fraction, split)
    skipper = None
    # Only readers that decode one example at a time can meet a bad one mid-run (the
    # image folder); the others decode whole files above, where a failure stays an error.
    if bad_examples == "skip" and reader.decodes_per_example:
        skipper = BadExamples(loader, split=split, process_index=process_index)
    return Dataset(
        loader,
        name=name,
        split=split,
        num_classes=num_classes,
        batch_size=batch_size,
        seed=seed,
        train=train,
        augment=augment,
        process_index=process_index,
        process_count=process_count,
        num_threads=threads,
        prefetch=threads if prefetch is None else prefetch,
        bad_examples=skipper,
    )


def _check_arguments(
    name: str, split: str, batch_size: int, validation_fraction: float, bad_examples: str
) -> None:
    """Raise ``ValueError`` for a dataset, split, batch or policy :func:`get_dataset`
    cannot serve."""
    dataset_spec(name)  # raises for an unknown dataset, naming the known ones
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}.")
    if split == "validation" and not validation_fraction:
        raise ValueError(
            "The 'validation' split is carved from 'train' and needs validation_fraction > 0."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    check_policy(bad_examples)


def _host_share(
    batch_size: int,
    process_index: int | None,
    process_count: int | None,
    num_devices: int | None,
    num_threads: int | None,
) -> tuple[int, int, int]:
    """``(process_index, process_count, threads)`` with jax's defaults filled in; raises
    ``ValueError`` when the per-host batch does not split over the local devices."""
    if process_index is None or process_count is None or num_devices is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        num_devices = jax.local_device_count() if num_devices is None else num_devices
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count); got {process_index} of {process_count}."
        )
    if num_devices < 1 or batch_size % num_devices:
        raise ValueError(
            f"Per-host batch_size {batch_size} does not divide by the {num_devices} local "
            f"devices; use a multiple of {num_devices} (global batch = per-host batch x "
            f"{process_count} hosts)."
        )
    threads = _default_threads() if num_threads is None else num_threads
    if threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {threads}.")
    return process_index, process_count, threads
