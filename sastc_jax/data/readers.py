"""The readers of datasets, by the source name a :class:`~sastc_jax.data.specs.DatasetSpec`
lists in its ``sources``.

A :class:`Reader` opens one split ('train' or 'test') of any dataset whose spec names it,
from what the spec says (its shape, normalisation, augmentation and reader settings) and
the :class:`ReadOptions` of the call. Built in:

- ``'tfds'``: TFDS ArrayRecord files (:mod:`sastc_jax.data.static`), never downloaded;
  fixed-size images are held in memory, ``resizable`` ones (ImageNet) read per batch;
- ``'cifar_python'``: torchvision's CIFAR python archives (:mod:`sastc_jax.data.cifar_python`);
- ``'local'``: the Fashion-MNIST IDX files (:mod:`sastc_jax.data.fashion_mnist`);
- ``'folder'``: a folder of class folders in torchvision's ImageFolder layout
  (:mod:`sastc_jax.data.image_folder`); its class count is the number of class folders;
- ``'tonic'``: event recordings read by tonic and framed (:mod:`sastc_jax.data.dvs`).

Each reader imports what it needs when it opens a split, so an optional package is
needed only by the datasets that use it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from sastc_jax.data.pipeline import BatchLoader
from sastc_jax.data.specs import DatasetSpec, ReadOptions


@dataclasses.dataclass(frozen=True)
class Reader:
    """How one source reads a dataset.

    ``open(spec, split, options) -> (loader, num_classes)``: the random-access loader of
    split 'train' or 'test'. ``finds(spec, data_dir) -> bool`` (optional): whether
    ``data_dir`` holds this reader's layout of the dataset, for ``source='auto'``.
    ``decodes_per_example``: examples are decoded one at a time in the batch loop, so a
    bad one can be skipped there (``bad_examples='skip'``,
    :mod:`sastc_jax.data.bad_examples`).
    """

    open: Callable[[DatasetSpec, str, ReadOptions], tuple[BatchLoader, int]]
    finds: Callable[[DatasetSpec, str], bool] | None = None
    decodes_per_example: bool = False


READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader) -> Reader:
    """Add ``reader`` to :data:`READERS` under ``name`` (names are unique); returns it."""
    if name in READERS or name == "auto":
        raise ValueError(f"Reader name {name!r} is taken.")
    READERS[name] = reader
    return reader


def get_reader(spec: DatasetSpec, source: str) -> Reader:
    """The reader ``source`` (not 'auto') of ``spec``; ``ValueError`` if unregistered."""
    if source not in READERS:
        raise ValueError(
            f"{spec.name} names the source {source!r}, which is no registered reader; "
            f"registered: {', '.join(map(repr, READERS))}."
        )
    return READERS[source]


def resolve(spec: DatasetSpec, data_dir: str | None, source: str = "auto") -> str:
    """The reader ``source`` stands for: itself, or for 'auto' the first reader of
    ``spec.sources`` that finds its layout in ``data_dir``, else the spec's default (the
    first one after 'auto')."""
    if source not in spec.sources:
        raise ValueError(
            f"source {source!r} is not a reader of {spec.name}; choose one of "
            f"{', '.join(map(repr, spec.sources))}."
        )
    if source != "auto":
        return source
    readers = spec.sources[1:]
    if data_dir:
        for name in readers:
            finds = get_reader(spec, name).finds
            if finds is not None and finds(spec, data_dir):
                return name
    return readers[0]


# ----------------------------------------------------------------------- built in


def _open_tfds(spec: DatasetSpec, split: str, options: ReadOptions):
    from sastc_jax.data import static

    source = static.tfds_source(spec, split, options.data_dir)
    if spec.resizable:
        return static.resized_loader(spec, source, options.image_size), spec.num_classes
    return static.array_loader(spec, *static.tfds_arrays(source)), spec.num_classes


def _open_cifar_python(spec: DatasetSpec, split: str, options: ReadOptions):
    from sastc_jax.data import cifar_python, static

    images, labels = cifar_python.load_split(spec.name, split, options.data_dir)
    return static.array_loader(spec, images, labels), spec.num_classes


def _finds_cifar_python(spec: DatasetSpec, data_dir: str) -> bool:
    from sastc_jax.data import cifar_python

    return cifar_python.archive_dir(spec.name, data_dir) is not None


def _open_idx(spec: DatasetSpec, split: str, options: ReadOptions):
    from sastc_jax.data import fashion_mnist, static

    files = fashion_mnist.FashionMnistIdxSource(split, options.data_dir)
    return static.array_loader(spec, files.images, files.labels), spec.num_classes


def _open_folder(spec: DatasetSpec, split: str, options: ReadOptions):
    from sastc_jax.data.image_folder import image_folder_loader

    if not options.data_dir:
        raise ValueError(
            f"{spec.name} from an image folder needs data_dir: the folder holding train/ "
            "and val/ with one sub-folder per class."
        )
    loader = image_folder_loader(options.data_dir, split, options.image_size)
    return loader, len(loader.classes)


def _finds_folder(spec: DatasetSpec, data_dir: str) -> bool:
    from sastc_jax.data.image_folder import is_image_folder_root

    return is_image_folder_root(os.path.expanduser(data_dir))


def _open_tonic(spec: DatasetSpec, split: str, options: ReadOptions):
    from sastc_jax.data.dvs import dvs_loader

    return dvs_loader(spec, split, options), spec.num_classes


register_reader("tfds", Reader(_open_tfds))
register_reader("cifar_python", Reader(_open_cifar_python, _finds_cifar_python))
register_reader("local", Reader(_open_idx))
register_reader("folder", Reader(_open_folder, _finds_folder, decodes_per_example=True))
register_reader("tonic", Reader(_open_tonic))
