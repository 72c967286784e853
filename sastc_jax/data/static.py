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
from sastc_jax.data.specs import DATASETS

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

TFDS_SPLITS = {
    "cifar10": {"train": "train", "test": "test"},
    "cifar100": {"train": "train", "test": "test"},
    "fashion_mnist": {"train": "train", "test": "test"},
    "imagenet2012": {"train": "train", "test": "validation"},
}


def _imagenet_hint(data_dir: str) -> str:
    manual = os.path.join(data_dir, "downloads", "manual")
    wanted = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    missing = [f for f in wanted if not os.path.isfile(os.path.join(manual, f))]
    if missing:
        files = ", ".join(os.path.join(manual, f) for f in missing)
        step = (
            f"The manual-download files are missing: {files}. Register at image-net.org, "
            f"download {' and '.join(wanted)} into {manual}, then prepare it"
        )
    else:
        step = f"The manual-download files are in {manual} but the dataset is not prepared; run"
    return (
        f"{step} once (this needs tensorflow in the preparing environment only): "
        f"`tfds build imagenet2012 --data_dir={data_dir} --file_format=array_record`."
    )


def tfds_source(name: str, split: str, data_dir: str | None) -> Any:
    """`tfds.data_source(name, split)` over ArrayRecord files, never downloading.

    Raises DatasetNotFoundError naming the directory looked at and the preparation command.
    """
    import tensorflow_datasets as tfds

    tfds_split = TFDS_SPLITS[name][split]
    try:
        return tfds.data_source(
            name,
            split=tfds_split,
            data_dir=data_dir,
            download=False,
            builder_kwargs={"file_format": "array_record"},
        )
    except Exception as error:  # TFDS raises KeyError/AssertionError/NotImplementedError here.
        root = data_dir or os.path.expanduser("~/tensorflow_datasets")
        try:
            looked_at = str(tfds.builder(name, data_dir=data_dir).data_dir)
        except Exception:
            looked_at = os.path.join(root, name)
        if name == "imagenet2012":
            hint = _imagenet_hint(root)
        else:
            hint = (
                "Prepare it once where the network and tensorflow are available: "
                f"`tfds build {name} --data_dir={root} --file_format=array_record`, "
                "then point data_dir at that directory"
            )
            if name == "fashion_mnist":
                hint += " (or use source='local' with the Debian IDX files)"
            hint += "."
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} split {tfds_split!r} is not available as ArrayRecord in "
            f"{looked_at} (data_dir={data_dir!r}); nothing is downloaded automatically. {hint} "
            f"TFDS said: {type(error).__name__}: {error}"
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


def cifar_loader(
    name: str, split: str, data_dir: str | None, source: str = "tfds"
) -> ArrayImageLoader:
    """CIFAR-10 or CIFAR-100 split from TFDS or ('cifar_python') torchvision's python
    archive, held in memory."""
    if source == "cifar_python":
        from sastc_jax.data import cifar_python

        images, labels = cifar_python.load_split(name, split, data_dir)
    else:
        images, labels = tfds_arrays(tfds_source(name, split, data_dir))
    spec = DATASETS[name]
    return ArrayImageLoader(images, labels, spec.mean, spec.std, pad=4)


def fashion_mnist_loader(split: str, data_dir: str | None, source: str) -> ArrayImageLoader:
    """Fashion-MNIST from the Debian IDX files (source 'local'/'auto') or TFDS ('tfds')."""
    from sastc_jax.data import fashion_mnist

    if source in ("auto", "local"):
        local = fashion_mnist.FashionMnistIdxSource(split, data_dir)
        images, labels = local.images, local.labels
    elif source == "tfds":
        images, labels = tfds_arrays(tfds_source("fashion_mnist", split, data_dir))
    else:
        raise ValueError(f"fashion_mnist source must be 'auto', 'local' or 'tfds', got {source!r}.")
    return ArrayImageLoader(images, labels, FASHION_MNIST_MEAN, FASHION_MNIST_STD, pad=2)


def imagenet_loader(split: str, data_dir: str | None, size: int | None = None) -> ImageNetLoader:
    """ImageNet (TFDS `imagenet2012`, manual-download layout); 'test' is the validation split.

    `size` is the crop side (default 224); evaluation first takes size * 256/224 of the
    shorter side."""
    size = size or IMAGENET_SIZE
    return ImageNetLoader(
        tfds_source("imagenet2012", split, data_dir),
        size=size,
        resize=round(size * IMAGENET_RESIZE / IMAGENET_SIZE),
    )
