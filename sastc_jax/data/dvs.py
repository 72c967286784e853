"""Neuromorphic datasets through tonic: DVS-Gesture and CIFAR10-DVS as T event frames.

Both are read with tonic's own dataset classes from the directory layout tonic extracts
(`data_dir` is tonic's `save_to`):

  DVS-Gesture  <data_dir>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy
               <data_dir>/DVSGesture/ibmGestureTest/...      (11 classes, tonic's split)
  CIFAR10-DVS  <data_dir>/CIFAR10DVS/<class name>/*.aedat4    (10 classes, no split)

CIFAR10-DVS has no official split. Ours is deterministic and per class: the recordings of
each class are sorted by file name (numbers compared as numbers) and the first
floor(0.9 * n_class) are 'train', the rest 'test' (900 / 100 per class on the full data).

Framing: tonic's `ToFrame(sensor_size=(128, 128, 2), n_time_bins=T)` accumulates each
polarity into T frames; frames are resized to `image_size` with area interpolation (each
output pixel is the mean event count of the input area it covers) and stored channels-last
as (T, H, W, 2). The framed split is cached once as a float16 .npy (memory-mapped when
read) under `cache_dir`, keyed by dataset, split, T and size; later runs skip framing.

Training augmentation: random circular translation (roll) by up to `max_shift` pixels in
each direction, and horizontal flip for CIFAR10-DVS. DVS-Gesture is not flipped by
default: a mirror turns "right hand wave" into "left hand wave" (and clockwise arm
rotations into counter-clockwise ones), so flipping without relabelling corrupts labels.

Nothing is downloaded: tonic's download step is replaced by an error naming the missing
path and where the files come from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import uuid
from typing import Any

import grain
import numpy as np

from sastc_jax.data import augment as aug
from sastc_jax.data.augment import ExampleRandom
from sastc_jax.data.errors import DatasetNotFoundError
from sastc_jax.data.specs import DatasetSpec, ReadOptions

SENSOR_SIZE = (128, 128, 2)  # tonic's (W, H, P) for both datasets.
CACHE_VERSION = 1
CIFAR10_DVS_TRAIN_FRACTION_TENTHS = 9
_STREAM_SHIFT_Y, _STREAM_SHIFT_X, _STREAM_FLIP = 0, 1, 2


def _require_tonic() -> None:
    if importlib.util.find_spec("tonic") is None:
        raise ImportError(
            "DVS datasets need tonic: install the `dvs` extra (`pip install 'sastc-jax[dvs]'`)."
        )


@functools.cache
def _offline_classes() -> dict[str, type]:
    """tonic's dataset classes with downloading replaced by an error.

    The subclasses keep tonic's class names because tonic derives the folder under
    `save_to` from the class name. The caller checks for the extracted files first, so
    tonic's archive-presence check (which would trigger a download) is skipped.
    """
    import tonic.datasets

    def refuse_download(self) -> None:
        raise DatasetNotFoundError(
            f"{type(self).__name__} data missing under {self.location_on_system}; "
            "downloads are disabled."
        )

    def assume_extracted(self) -> bool:
        return True

    classes = {}
    for base in (tonic.datasets.DVSGesture, tonic.datasets.CIFAR10DVS):
        classes[base.__name__] = type(
            base.__name__,
            (base,),
            {
                "download": refuse_download,
                "_check_exists": assume_extracted,
                "__doc__": f"tonic's {base.__name__}, reading extracted files only.",
            },
        )
    return classes


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _missing_gesture(root: str, split: str) -> str | None:
    import tonic.datasets

    folder = "ibmGestureTrain" if split == "train" else "ibmGestureTest"
    path = os.path.join(root, "DVSGesture", folder)
    found = os.path.isdir(path) and any(
        name.endswith(".npy") for _, _, names in os.walk(path) for name in names
    )
    if found:
        return None
    cls = tonic.datasets.DVSGesture
    archive = cls.train_filename if split == "train" else cls.test_filename
    url = cls.train_url if split == "train" else cls.test_url
    return (
        f"DVS-Gesture {split} split not found: no user*/<label>.npy files under {path}. "
        f"Get tonic's preprocessed archive {archive} ({url}) and extract it into "
        f"{os.path.join(root, 'DVSGesture')}, or run "
        f"`tonic.datasets.DVSGesture(save_to={root!r}, train={split == 'train'})` once on a "
        "machine with internet access."
    )


def _missing_cifar10_dvs(root: str) -> str | None:
    import tonic.datasets

    path = os.path.join(root, "CIFAR10DVS")
    found = os.path.isdir(path) and any(
        name.endswith(".aedat4") for _, _, names in os.walk(path) for name in names
    )
    if found:
        return None
    cls = tonic.datasets.CIFAR10DVS
    return (
        f"CIFAR10-DVS not found: no <class>/*.aedat4 files under {path}. Get {cls.filename} "
        f"({cls.url}), extract it and the per-class zips inside it into {path} (so that "
        f"{os.path.join(path, 'airplane')} holds .aedat4 files), or run "
        f"`tonic.datasets.CIFAR10DVS(save_to={root!r})` once on a machine with internet access."
    )


def cifar10_dvs_split(paths: list[str], targets: list[int], split: str) -> list[int]:
    """Positions (into `paths`) of the deterministic per-class 9:1 split, class-major order."""
    chosen = []
    for label in sorted(set(targets)):
        members = sorted(
            (i for i, t in enumerate(targets) if t == label), key=lambda i: _natural_key(paths[i])
        )
        n_train = len(members) * CIFAR10_DVS_TRAIN_FRACTION_TENTHS // 10
        chosen.extend(members[:n_train] if split == "train" else members[n_train:])
    return chosen


def open_split(tonic_class: str, split: str, data_dir: str) -> tuple[Any, list[int]]:
    """tonic dataset object of class `tonic_class` ('DVSGesture' or 'CIFAR10DVS') and the
    ordered positions of the examples of `split`."""
    _require_tonic()
    classes = _offline_classes()
    if tonic_class not in classes:
        raise ValueError(
            f"tonic dataset class {tonic_class!r} is not read here; choose one of "
            f"{', '.join(map(repr, classes))}."
        )
    if tonic_class == "DVSGesture":
        problem = _missing_gesture(data_dir, split)
        if problem:
            raise DatasetNotFoundError(problem)
        dataset = classes["DVSGesture"](save_to=data_dir, train=split == "train")
        order = sorted(range(len(dataset.data)), key=lambda i: _natural_key(dataset.data[i]))
        return dataset, order
    problem = _missing_cifar10_dvs(data_dir)
    if problem:
        raise DatasetNotFoundError(problem)
    if importlib.util.find_spec("aedat") is None:
        raise ImportError(
            "CIFAR10-DVS files are AEDAT4; tonic reads them with the `aedat` package: "
            "`pip install aedat` (part of the `dvs` extra)."
        )
    dataset = classes["CIFAR10DVS"](save_to=data_dir)
    return dataset, cifar10_dvs_split(list(dataset.data), list(dataset.targets), split)


def frame_events(events: np.ndarray, time_steps: int, image_size: int) -> np.ndarray:
    """Events -> float32 (T, S, S, 2) frames: tonic ToFrame at 128x128, then area resize."""
    from tonic.transforms import ToFrame

    frames = ToFrame(sensor_size=SENSOR_SIZE, n_time_bins=time_steps)(events)
    frames = np.asarray(frames, dtype=np.float32)  # (T, P, H, W)
    if frames.shape[0] != time_steps:  # tonic returns fewer bins for degenerate clips
        padded = np.zeros((time_steps, *frames.shape[1:]), np.float32)
        padded[: frames.shape[0]] = frames[:time_steps]
        frames = padded
    width, height, _ = SENSOR_SIZE
    if image_size == height == width:
        return np.ascontiguousarray(frames.transpose(0, 2, 3, 1))
    rows = aug.area_resize_matrix(height, image_size)
    cols = aug.area_resize_matrix(width, image_size)
    steps, polarities = frames.shape[:2]
    narrow = (frames.reshape(-1, width) @ cols.T).reshape(steps, polarities, height, image_size)
    resized = np.tensordot(rows, narrow, axes=([1], [2]))  # (S_h, T, P, S_w)
    return np.ascontiguousarray(resized.transpose(1, 0, 3, 2))


def _cache_paths(
    cache_dir: str, name: str, split: str, time_steps: int, size: int, files: list[str]
) -> tuple[str, str]:
    """Cache file names; they change with T, size, the file list and CACHE_VERSION."""
    digest = hashlib.sha1("\n".join(files).encode()).hexdigest()[:10]
    stem = f"{name}_{split}_T{time_steps}_S{size}_v{CACHE_VERSION}_{digest}"
    base = os.path.join(cache_dir, stem)
    return base + ".frames.npy", base + ".labels.npy"


def framed_split(
    spec: DatasetSpec,
    split: str,
    data_dir: str,
    time_steps: int,
    image_size: int,
    cache_dir: str | None = None,
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames float16 (N, T, S, S, 2) (memory-mapped) and int64 labels (N,) of a split.

    Builds the cache on first use (written to a temporary file, then renamed, so a crash
    or a concurrent host never leaves a half-written cache in place).
    """
    name = spec.name
    dataset, order = open_split(spec.tonic_class, split, data_dir)
    if not order:
        raise DatasetNotFoundError(f"{name} split {split!r} under {data_dir} has no examples.")
    files = [os.path.relpath(dataset.data[i], data_dir) for i in order]
    cache_dir = cache_dir or os.path.join(data_dir, "sastc_frames")
    frames_path, labels_path = _cache_paths(cache_dir, name, split, time_steps, image_size, files)
    shape = (len(order), time_steps, image_size, image_size, 2)
    if os.path.isfile(frames_path) and os.path.isfile(labels_path):
        frames = np.load(frames_path, mmap_mode="r")
        labels = np.load(labels_path)
        if frames.shape == shape and labels.shape == (len(order),):
            return frames, labels

    suffix = f".tmp-{uuid.uuid4().hex[:12]}.npy"  # unique per writer, also across hosts
    labels = np.asarray([dataset.targets[i] for i in order], dtype=np.int64)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        out = np.lib.format.open_memmap(
            frames_path + suffix, mode="w+", dtype=np.float16, shape=shape
        )
    except OSError as error:
        raise OSError(
            f"Cannot write the {name} frame cache in {cache_dir} ({error}); pass a writable "
            "cache_dir= to get_dataset."
        ) from error

    def frame_one(position: int) -> np.ndarray:
        events, _ = dataset[order[position]]
        return frame_events(events, time_steps, image_size)

    framed = grain.MapDataset.range(len(order)).map(frame_one)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    try:
        for position, frames in enumerate(framed.to_iter_dataset(options)):
            out[position] = frames
        out.flush()
    except BaseException:
        del out
        os.remove(frames_path + suffix)
        raise
    del out
    os.replace(frames_path + suffix, frames_path)
    with open(labels_path + suffix, "wb") as handle:
        np.save(handle, labels)
    os.replace(labels_path + suffix, labels_path)
    return np.load(frames_path, mmap_mode="r"), labels


@dataclasses.dataclass
class FrameLoader:
    """Framed DVS clips (N, T, S, S, 2); training adds roll (and optionally flip).

    Batches are float32 (B, T, S, S, 2) event counts (not normalised).
    """

    frames: np.ndarray
    labels: np.ndarray
    max_shift: int
    flip: bool

    def __post_init__(self):
        self.num_examples = int(self.labels.shape[0])
        self.input_shape = tuple(self.frames.shape[1:])
        self._labels = self.labels.astype(np.int32)

    def load(self, indices: np.ndarray, rng: ExampleRandom | None) -> tuple[np.ndarray, np.ndarray]:
        clips = np.asarray(self.frames[indices], dtype=np.float32)
        if rng is not None:
            flips = rng.coin(indices, _STREAM_FLIP) if self.flip else np.zeros(len(indices), bool)
            clips = aug.roll_and_flip(
                clips,
                rng.integers(indices, _STREAM_SHIFT_Y, -self.max_shift, self.max_shift),
                rng.integers(indices, _STREAM_SHIFT_X, -self.max_shift, self.max_shift),
                flips,
            )
        return clips, self._labels[indices]


def dvs_loader(spec: DatasetSpec, split: str, options: ReadOptions) -> FrameLoader:
    """FrameLoader of an event dataset read by tonic (``spec.tonic_class``; see the module
    docstring): T = ``options.time_steps`` frames of ``options.image_size`` (default: the
    spec's), flipped in training where ``spec.flip`` (or ``options.flip``) says so."""
    name, data_dir, time_steps = spec.name, options.data_dir, options.time_steps
    if time_steps < 1:
        raise ValueError(
            f"{name} needs time_steps >= 1 (the number of event frames T), got {time_steps}."
        )
    if data_dir is None:
        raise ValueError(
            f"{name} needs data_dir: tonic's save_to directory, the one containing "
            f"{spec.tonic_class}/ (see sastc_jax.data.dvs for the layout)."
        )
    size = options.image_size or spec.image_shape[0]
    if not 1 <= size <= SENSOR_SIZE[0]:
        raise ValueError(f"{name} image_size must be in [1, {SENSOR_SIZE[0]}], got {size}.")
    frames, labels = framed_split(
        spec, split, data_dir, time_steps, size, options.cache_dir, options.num_threads
    )
    shift = options.max_shift if options.max_shift is not None else max(1, size // 12)
    return FrameLoader(frames, labels, shift, spec.flip if options.flip is None else options.flip)
