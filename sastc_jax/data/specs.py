"""One spec per dataset: its classes, example shape, normalisation and where it comes from.

Read by the readers (:mod:`sastc_jax.data.readers`: the spec names the readers that can
serve it, and gives them what they need) and by the NIR export (the input shape, the
normalisation written into the graph's metadata). A dataset is added with its spec
(here, or :func:`register_dataset` from outside the package) and, where no registered
reader serves it, its reader (:func:`sastc_jax.data.readers.register_reader`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    ``image_shape``: one example's (H, W, C) as the pipeline delivers it by default (DVS:
    one event frame, C = 2 polarities; the pipeline stacks T of them); ``resizable``:
    ``config.dataset.image_size`` sets H = W (ImageNet's crop, the DVS frame size).
    ``mean`` / ``std``: per-channel statistics of the training split on the [0, 1] scale
    that images are normalised with, ``(pixel / 255 - mean) / std``; ``None`` for event
    frames (event counts, not normalised). ``sources``: ``'auto'``, then the names of the
    readers (:data:`sastc_jax.data.readers.READERS`) that ``config.dataset.source`` may name,
    the default first ('auto' picks one, :func:`sastc_jax.data.resolve_source`);
    ``origin``: where the files come from.

    Settings of the readers: ``crop_padding``, the zero padding of the training crop of
    fixed-size images (0: no crop); ``flip``, whether a horizontal flip keeps the label
    (training augmentation); ``tfds_test_split``, TFDS's name of our 'test' split;
    ``tfds_manual_files``, the files TFDS needs downloaded by hand; ``tonic_class``, the
    tonic dataset class of an event dataset.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    sources: tuple[str, ...]
    origin: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resizable: bool = False
    crop_padding: int = 0
    flip: bool = True
    tfds_test_split: str = "test"
    tfds_manual_files: tuple[str, ...] = ()
    tonic_class: str | None = None

    @property
    def event_frames(self) -> bool:
        """Whether an example is T event frames (a DVS recording) rather than one image."""
        return self.mean is None

    def input_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """One example's (H, W, C) (one frame of an event dataset) at ``image_size``
        (ignored unless ``resizable``; ``None``: the default size)."""
        if image_size is None or not self.resizable:
            return self.image_shape
        return (image_size, image_size, self.image_shape[2])


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar10",
            10,
            (32, 32, 3),
            ("auto", "tfds", "cifar_python"),
            "TFDS `cifar10`, or torchvision's python archive cifar-10-batches-py/",
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            crop_padding=4,
        ),
        DatasetSpec(
            "cifar100",
            100,
            (32, 32, 3),
            ("auto", "tfds", "cifar_python"),
            "TFDS `cifar100`, or torchvision's python archive cifar-100-python/",
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            crop_padding=4,
        ),
        DatasetSpec(
            "imagenet2012",
            1000,
            (224, 224, 3),
            ("auto", "tfds", "folder"),
            "TFDS `imagenet2012` (manual download from image-net.org), or a folder of "
            "train/ and val/ class folders (torchvision's ImageFolder layout)",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            resizable=True,
            tfds_test_split="validation",
            tfds_manual_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        ),
        DatasetSpec(
            "fashion_mnist",
            10,
            (28, 28, 1),
            ("auto", "local", "tfds"),
            "the IDX files of Debian's fashion-mnist package, or TFDS `fashion_mnist`",
            mean=(0.2860,),
            std=(0.3530,),
            crop_padding=2,
        ),
        DatasetSpec(
            "dvs_gesture",
            11,
            (128, 128, 2),
            ("auto", "tonic"),
            "tonic's DVSGesture folder (IBM DVS128 Gesture, its train/test split)",
            resizable=True,
            # A mirror turns "right hand wave" into "left hand wave".
            flip=False,
            tonic_class="DVSGesture",
        ),
        DatasetSpec(
            "cifar10_dvs",
            10,
            (48, 48, 2),
            ("auto", "tonic"),
            "tonic's CIFAR10DVS folder (no official split; see sastc_jax.data.dvs)",
            resizable=True,
            tonic_class="CIFAR10DVS",
        ),
    )
}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under its name (names are unique); returns it."""
    if spec.name in DATASETS:
        raise ValueError(f"Dataset {spec.name!r} is already registered: {DATASETS[spec.name]}.")
    if not spec.sources or spec.sources[0] != "auto" or len(spec.sources) < 2:
        raise ValueError(
            f"{spec.name}: sources must be 'auto' followed by at least one reader; "
            f"got {spec.sources!r}."
        )
    DATASETS[spec.name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; ``ValueError`` listing the datasets if unknown."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """The per-call settings of a read (see :func:`sastc_jax.data.get_dataset`)."""

    data_dir: str | None = None
    time_steps: int = 1
    image_size: int | None = None
    cache_dir: str | None = None
    max_shift: int | None = None
    flip: bool | None = None
    num_threads: int = 1
