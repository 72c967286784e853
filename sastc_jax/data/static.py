"""Static image datasets: CIFAR-10/100, ImageNet (TFDS) and Fashion-MNIST (IDX or TFDS).

TFDS is used through `tfds.data_source` (random access over ArrayRecord files, no
TensorFlow needed); `download=False` always, so a missing dataset fails fast with
instructions instead of reaching for the network. Decoding the stored PNG/JPEG images of a
real (non-mock) dataset needs Pillow or OpenCV, which TFDS imports itself.

Augmentation (training only):
  CIFAR: zero-pad 4, random 32x32 crop, horizontal flip.
  Fashion-MNIST: zero-pad 2, random 28x28 crop, horizontal flip.
  ImageNet: Inception random-resized crop (scale 0.08..1, ratio 3/4..4/3) to 224, flip.
  ImageNet evaluation: resize the shorter side to 256, centre crop 224 (done as one crop
  of 224/256 of the shorter side, then one bilinear resize).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from sastc_jax.data import augment as aug
from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.errors import DatasetNotFoundError
from sastc_jax.data.specs import DATASETS, DatasetSpec

# Per-channel statistics of the training splits, on the [0, 1] scale (from the specs).
CIFAR10_MEAN, CIFAR10_STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std
CIFAR100_MEAN, CIFAR100_STD = DATASETS["cifar100"].mean, DATASETS["cifar100"].std
IMAGENET_MEAN, IMAGENET_STD = DATASETS["imagenet2012"].mean, DATASETS["imagenet2012"].std
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (
    DATASETS["fashion_mnist"].mean,
    DATASETS["fashion_mnist"].std,
)

IMAGENET_SIZE = DATASETS["imagenet2012"].image_shape[0]
IMAGENET_RESIZE = 256
_RRC_ATTEMPTS = 10

# Streams of ExampleRandom used here (distinct per kind of draw).
_STREAM_CROP_Y, _STREAM_CROP_X, _STREAM_FLIP, _STREAM_RRC = 0, 1, 2, 16


def _manual_download_hint(spec: DatasetSpec, data_dir: str) -> str:
    manual = os.path.join(data_dir, "downloads", "manual")
    wanted = spec.tfds_manual_files
    missing = [f for f in wanted if not os.path.isfile(os.path.join(manual, f))]
    if missing:
        files = ", ".join(os.path.join(manual, f) for f in missing)
        step = (
            f"The manual-download files are missing: {files}. Download "
            f"{' and '.join(wanted)} into {manual} (from {spec.origin}), then prepare it"
        )
    else:
        step = f"The manual-download files are in {manual} but the dataset is not prepared; run"
    return (
        f"{step} once (this needs tensorflow in the preparing environment only): "
        f"`tfds build {spec.name} --data_dir={data_dir} --file_format=array_record`."
    )


def tfds_source(spec: DatasetSpec, split: str, data_dir: str | None) -> Any:
    """`tfds.data_source(spec.name, split)` over ArrayRecord files, never downloading
    (our 'test' split is TFDS's ``spec.tfds_test_split``).

    Raises DatasetNotFoundError naming the directory looked at and the preparation command.
    """
    import tensorflow_datasets as tfds

    tfds_split = spec.tfds_test_split if split == "test" else split
    try:
        return tfds.data_source(
            spec.name,
            split=tfds_split,
            data_dir=data_dir,
            download=False,
            builder_kwargs={"file_format": "array_record"},
        )
    except Exception as error:  # TFDS raises KeyError/AssertionError/NotImplementedError here.
        root = data_dir or os.path.expanduser("~/tensorflow_datasets")
        try:
            looked_at = str(tfds.builder(spec.name, data_dir=data_dir).data_dir)
        except Exception:
            looked_at = os.path.join(root, spec.name)
        if spec.tfds_manual_files:
            hint = _manual_download_hint(spec, root)
        else:
            hint = (
                "Prepare it once where the network and tensorflow are available: "
                f"`tfds build {spec.name} --data_dir={root} --file_format=array_record`, "
                "then point data_dir at that directory"
            )
            others = [source for source in spec.sources if source not in ("auto", "tfds")]
            if others:
                hint += f" (or use source={others[0]!r}: {spec.origin})"
            hint += "."
        raise DatasetNotFoundError(
            f"TFDS dataset {spec.name!r} split {tfds_split!r} is not available as ArrayRecord "
            f"in {looked_at} (data_dir={data_dir!r}); nothing is downloaded automatically. "
            f"{hint} TFDS said: {type(error).__name__}: {error}"
        ) from error


def tfds_arrays(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """Read a fixed-size image split fully: uint8 images (N, H, W, C), int64 labels (N,)."""
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"], dtype=np.uint8) for r in records])
    return images, np.asarray([int(r["label"]) for r in records], dtype=np.int64)


@dataclasses.dataclass
class ArrayImageLoader:
    """Fixed-size uint8 images held in memory; pad-and-crop + flip, then normalise.

    images: uint8 (N, H, W, C); labels: int (N,). Batches are float32 (B, H, W, C).
    """

    images: np.ndarray
    labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool = True

    def __post_init__(self):
        self.num_examples = int(self.labels.shape[0])
        self.input_shape = tuple(self.images.shape[1:])
        self._table = aug.normalizer(self.mean, self.std)
        self._labels = self.labels.astype(np.int32)

    def load(self, indices: np.ndarray, rng: ExampleRandom | None) -> tuple[np.ndarray, np.ndarray]:
        images = self.images[indices]
        if rng is not None:
            span = 2 * self.pad
            flips = rng.coin(indices, _STREAM_FLIP) if self.flip else np.zeros(len(indices), bool)
            images = aug.crop_and_flip(
                images,
                self.pad,
                rng.integers(indices, _STREAM_CROP_Y, 0, span),
                rng.integers(indices, _STREAM_CROP_X, 0, span),
                flips,
            )
        return aug.normalize_uint8(images, self._table), self._labels[indices]


@dataclasses.dataclass
class ImageNetLoader:
    """ImageNet-style variable-size images read per batch from a TFDS data source.

    Training (rng given): random-resized crop to `size` and horizontal flip; otherwise
    centre crop of size/resize of the shorter side. Batches are float32 (B, size, size, 3).
    """

    source: Any
    size: int = IMAGENET_SIZE
    resize: int = IMAGENET_RESIZE
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        self.num_examples = len(self.source)
        self.input_shape = (self.size, self.size, 3)

    def load(self, indices: np.ndarray, rng: ExampleRandom | None) -> tuple[np.ndarray, np.ndarray]:
        records = [self.source[int(i)] for i in indices]
        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.float32)
        uniforms = None
        if rng is not None:
            uniforms = rng.uniform(indices, _STREAM_RRC, 4 * _RRC_ATTEMPTS)
            uniforms = uniforms.reshape(len(indices), _RRC_ATTEMPTS, 4)
        for k, record in enumerate(records):
            image = np.asarray(record["image"])
            if image.ndim == 2:
                image = image[:, :, None]
            if image.shape[-1] == 1:
                image = np.repeat(image, 3, axis=-1)
            height, width = image.shape[:2]
            if uniforms is None:
                box = aug.center_crop_box(height, width, self.size / self.resize)
            else:
                box = aug.random_resized_crop_box(height, width, uniforms[k])
            out[k] = aug.resize_bilinear(image, box, self.size, self.size)
        if rng is not None:
            flips = rng.coin(indices, _STREAM_FLIP)
            out[flips] = out[flips, :, ::-1]
        labels = np.asarray([int(r["label"]) for r in records], dtype=np.int32)
        return aug.normalize_float(out, self.mean, self.std), labels


def array_loader(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray) -> ArrayImageLoader:
    """Fixed-size uint8 images ``(N, H, W, C)`` of ``spec`` held in memory, normalised and
    augmented as the spec says (``crop_padding``, ``flip``)."""
    return ArrayImageLoader(images, labels, spec.mean, spec.std, spec.crop_padding, spec.flip)


def resized_loader(spec: DatasetSpec, source: Any, size: int | None = None) -> ImageNetLoader:
    """Variable-size images of ``spec`` read per batch from a TFDS data source (ImageNet's
    'test' is its validation split).

    `size` is the crop side (default: the spec's); evaluation first takes size * 256/224 of
    the shorter side."""
    size = size or spec.image_shape[0]
    return ImageNetLoader(
        source,
        size=size,
        resize=round(size * IMAGENET_RESIZE / IMAGENET_SIZE),
        mean=spec.mean,
        std=spec.std,
    )
