"""ImageNet from a folder of images in torchvision's ImageFolder layout.

    ROOT/train/<class>/.../<image>    ROOT/val/<class>/.../<image>

The class index is the position of the class folder's name in the sorted list of class
folders (what `torchvision.datasets.ImageFolder` assigns); examples are ordered by class,
then by sorted path inside the class folder, also as ImageFolder does. Both splits must
hold the same class folders. Image files are recognised by extension (ImageFolder's list,
case-insensitive); names starting with '.' are skipped (e.g. macOS '._x.JPEG' companions).

Images are decoded with Pillow when a batch is built, on the grain threads of
:class:`~sastc_jax.data.pipeline.Dataset` (Pillow releases the GIL while decoding and
resizing, so the threads run in parallel). The transforms are torchvision's ImageNet
recipe on PIL images:

  training:   RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)), bilinear, then
              RandomHorizontalFlip; the crop box and flip of an example are drawn by
              :class:`ExampleRandom`, a pure function of (seed, epoch, example index);
  evaluation: Resize(resize) of the shorter side, then CenterCrop(size), bilinear.

Both are computed with Pillow exactly as torchvision computes them on a PIL image. With
`jpeg_draft`, a JPEG at least twice as large as needed (the crop side against the output
side in training, the shorter side against `resize` in evaluation) is decoded at 1/2, 1/4
or 1/8 scale in the DCT domain (`Image.draft`), never below what is needed: much cheaper
for large photos, and a close (not bit-equal) match of the full-scale result.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from PIL import Image

from sastc_jax.data import augment as aug
from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.errors import DatasetNotFoundError, UnreadableExampleError
from sastc_jax.data.static import IMAGENET_MEAN, IMAGENET_RESIZE, IMAGENET_SIZE, IMAGENET_STD

# What torchvision.datasets.folder.IMG_EXTENSIONS accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train": "train", "test": "val"}
_RRC_ATTEMPTS = 10
# Streams of ExampleRandom used here (the same kinds of draw as static.ImageNetLoader).
_STREAM_FLIP, _STREAM_RRC = 2, 16


# What Pillow raises for a file it cannot decode (empty, not an image, truncated, too large).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImageError(UnreadableExampleError):
    """An image file of the folder cannot be decoded; `path` names it, `index` its example."""


def is_image_folder_root(root: str) -> bool:
    """True when `root` holds a `train/` or `val/` folder (the layout auto-detection keys on)."""
    return any(os.path.isdir(os.path.join(root, folder)) for folder in SPLIT_FOLDERS.values())


def _visible(name: str) -> bool:
    return not name.startswith(".")


def find_classes(split_dir: str) -> list[str]:
    """Sorted names of the class folders in one split folder."""
    if not os.path.isdir(split_dir):
        raise DatasetNotFoundError(
            f"Image folder split not found: {split_dir} is not a directory. The folder layout "
            "is ROOT/train/<class>/<images> and ROOT/val/<class>/<images> (torchvision's "
            "ImageFolder layout, one sub-folder per class in each split)."
        )
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and _visible(e.name))
    if not classes:
        raise DatasetNotFoundError(
            f"No class folders in {split_dir}: expected one sub-folder per class holding "
            "that class's images (torchvision's ImageFolder layout)."
        )
    return classes


def check_same_classes(root: str) -> list[str]:
    """The sorted class names, after checking train/ and val/ hold the same class folders."""
    train_dir, val_dir = (os.path.join(root, f) for f in SPLIT_FOLDERS.values())
    train, val = find_classes(train_dir), find_classes(val_dir)
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        parts = []
        if only_train:
            parts.append(f"in {train_dir} only: {_some(only_train)}")
        if only_val:
            parts.append(f"in {val_dir} only: {_some(only_val)}")
        raise ValueError(
            f"The class folders of train/ and val/ in {root} differ ({'; '.join(parts)}). "
            "A label is the position of its folder name in the sorted list of class "
            "folders, so both splits need exactly the same class folders."
        )
    return train


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def list_images(split_dir: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Image paths (relative to `split_dir`) and int32 labels, in ImageFolder's order.

    Raises DatasetNotFoundError naming the class folders that hold no image.
    """
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        count = len(paths)
        class_dir = os.path.join(split_dir, name)
        for folder, subfolders, files in sorted(os.walk(class_dir, followlinks=True)):
            subfolders[:] = [s for s in subfolders if _visible(s)]
            relative = os.path.relpath(folder, split_dir)
            for file in sorted(files):
                if _visible(file) and file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(relative, file))
        labels.extend([label] * (len(paths) - count))
        if len(paths) == count:
            empty.append(name)
    if empty:
        what = "No image files" if len(empty) == len(classes) else "Class folders without images"
        raise DatasetNotFoundError(
            f"{what} in {split_dir}: {_some(empty)}. Every class folder needs at least one "
            f"image with one of the extensions {', '.join(IMAGE_EXTENSIONS)} (any case)."
        )
    return paths, np.asarray(labels, dtype=np.int32)


def eval_resize(size: int) -> int:
    """Shorter-side resize before the centre crop: 256 for 224, in proportion otherwise."""
    return round(size * IMAGENET_RESIZE / IMAGENET_SIZE)


def center_crop_geometry(
    width: int, height: int, size: int, resize: int
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """torchvision's Resize(resize) + CenterCrop(size) of a width x height image:
    ((resized width, resized height), crop box (left, top, right, bottom) in the resized
    image). The shorter side becomes `resize`, the longer int(resize * long / short); the
    crop starts at round((resized - size) / 2)."""
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return (new_w, new_h), (left, top, left + size, top + size)


@dataclasses.dataclass
class ImageFolderLoader:
    """One split of an ImageFolder tree; batches are float32 (B, size, size, 3).

    Fields: split_dir, the split folder; paths, image paths relative to it (example
    order); labels, int32 (N,); classes, the sorted class names; size, the crop side;
    resize, the evaluation shorter side (default size * 256 / 224); jpeg_draft, decode
    large JPEGs at a reduced DCT scale when the crop allows.
    """

    split_dir: str
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    size: int = IMAGENET_SIZE
    resize: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    jpeg_draft: bool = True

    def __post_init__(self):
        if self.resize is None:
            self.resize = eval_resize(self.size)
        if self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= the crop size ({self.size}).")
        self.num_examples = len(self.paths)
        self.input_shape = (self.size, self.size, 3)
        self._scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)
        self._shift = (np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)

    def load(self, indices: np.ndarray, rng: ExampleRandom | None) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.float32)
        if rng is None:
            uniforms = flips = None
        else:
            uniforms = rng.uniform(indices, _STREAM_RRC, 4 * _RRC_ATTEMPTS)
            uniforms = uniforms.reshape(len(indices), _RRC_ATTEMPTS, 4)
            flips = rng.coin(indices, _STREAM_FLIP)
        for k, index in enumerate(indices):
            crop = self.decode(int(index), None if uniforms is None else uniforms[k])
            if flips is not None and flips[k]:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            np.multiply(np.asarray(crop), self._scale, out=out[k])
            out[k] -= self._shift
        return out, self.labels[indices]

    def decode(self, index: int, uniforms: np.ndarray | None) -> Image.Image:
        """RGB (size x size) crop of example `index`: random-resized if `uniforms`
        ((attempts, 4) in [0, 1)) is given, else the evaluation centre crop."""
        path = os.path.join(self.split_dir, self.paths[index])
        bilinear = Image.Resampling.BILINEAR
        try:
            with Image.open(path) as image:
                width, height = image.size
                if uniforms is None:
                    resized, box = center_crop_geometry(width, height, self.size, self.resize)
                    scale = self._draft(image, min(width / resized[0], height / resized[1]))
                    # The whole image, also when its last reduced row/column is partial.
                    whole = (0, 0, width / scale, height / scale) if scale > 1 else None
                    crop = _rgb(image).resize(resized, bilinear, box=whole).crop(box)
                else:
                    top, left, crop_h, crop_w = aug.random_resized_crop_box(height, width, uniforms)
                    scale = self._draft(image, min(crop_w, crop_h) / self.size)
                    box = (left, top, left + crop_w, top + crop_h)
                    out = (self.size, self.size)
                    if scale > 1:  # the box in the reduced image, to the sub-pixel
                        box = tuple(c / scale for c in box)
                        crop = _rgb(image).resize(out, bilinear, box=box)
                    else:
                        crop = _rgb(image).crop(box).resize(out, bilinear)
        except DECODE_ERRORS as error:
            label = int(self.labels[index])
            raise UnreadableImageError(
                f"Cannot decode image {path} (example {index} of {self.split_dir}, class "
                f"{self.classes[label]!r}): {type(error).__name__}: {error}. Replace or "
                "delete the file (deleting it changes the example count), or set "
                "config.dataset.bad_examples = 'skip'.",
                path,
                index,
            ) from error
        return crop

    def _draft(self, image: Image.Image, factor: float) -> float:
        """Have a JPEG decoded at 1/2, 1/4 or 1/8 scale, at most 1/`factor` (the factor
        by which the image is larger than needed); returns the scale divisor used."""
        if not self.jpeg_draft or image.format != "JPEG" or factor < 2:
            return 1.0
        width, height = image.size
        # Pillow picks the largest of 8, 4, 2 not above min(width // w, height // h).
        drafted = image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        if drafted is None:
            return 1.0
        _, (_, _, reduced_width, _) = drafted
        return width / reduced_width


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def check_image(path: str) -> str | None:
    """None when the file at `path` decodes completely (full scale, to RGB), else the
    reason: the decoder's error type and message."""
    try:
        with Image.open(path) as image:
            image.load()
            _rgb(image)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def image_folder_loader(root: str, split: str, size: int | None = None) -> ImageFolderLoader:
    """The `split` ('train' or 'test' = val/) of the ImageFolder tree at `root`."""
    root = os.path.expanduser(root)
    classes = check_same_classes(root)
    split_dir = os.path.join(root, SPLIT_FOLDERS[split])
    paths, labels = list_images(split_dir, classes)
    return ImageFolderLoader(split_dir, paths, labels, classes, size=size or IMAGENET_SIZE)
