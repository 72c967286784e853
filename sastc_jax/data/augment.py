"""Deterministic, vectorised NumPy augmentation for whole batches.

All randomness comes from :class:`ExampleRandom`, a counter-based generator: the random
numbers of an example are a pure function of (seed, epoch, example index, stream), so they
do not depend on the batch an example lands in, on the host count or on how far a resumed
run skipped. Images are channels-last; a batch is (B, H, W, C), DVS clips are (B, T, H, W, C).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _fold(h: np.ndarray, value: np.ndarray) -> np.ndarray:
    return _splitmix(h ^ (value + _GOLDEN))


def _as_u64(value: int | np.ndarray) -> np.ndarray:
    if isinstance(value, int):
        return np.array([value & _MASK64], dtype=np.uint64)
    return np.asarray(value).astype(np.uint64).reshape(-1)


@dataclasses.dataclass(frozen=True)
class ExampleRandom:
    """Per-example random numbers keyed by (seed, epoch, example index, stream).

    `stream` separates independent draws of one example (crop offset, flip, ...).
    """

    seed: int
    epoch: int

    def bits(self, indices: np.ndarray, stream: int, size: int | None = None) -> np.ndarray:
        """uint64 bits, shape (len(indices),) or (len(indices), size)."""
        key = _fold(_fold(_as_u64(self.seed), _as_u64(self.epoch)), _as_u64(0))
        idx = _as_u64(indices)
        n = 1 if size is None else size
        streams = _as_u64(np.arange(stream, stream + n, dtype=np.int64))
        h = _fold(np.broadcast_to(key, idx.shape), idx)[:, None]
        out = _fold(np.broadcast_to(h, (idx.size, n)), streams[None, :])
        return out[:, 0] if size is None else out

    def uniform(self, indices: np.ndarray, stream: int, size: int | None = None) -> np.ndarray:
        """float64 uniform in [0, 1), shape (len(indices),) or (len(indices), size)."""
        return (self.bits(indices, stream, size) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integers(self, indices: np.ndarray, stream: int, low: int, high: int) -> np.ndarray:
        """int64 uniform in [low, high] (inclusive), shape (len(indices),)."""
        span = high - low + 1
        return low + np.floor(self.uniform(indices, stream) * span).astype(np.int64)

    def coin(self, indices: np.ndarray, stream: int) -> np.ndarray:
        """bool, True with probability 1/2, shape (len(indices),)."""
        return (self.bits(indices, stream) >> np.uint64(63)).astype(bool)


def crop_and_flip(
    images: np.ndarray, pad: int, offset_y: np.ndarray, offset_x: np.ndarray, flip: np.ndarray
) -> np.ndarray:
    """Zero-pad each (H, W) image by `pad`, crop H x W at the given offsets, then flip.

    images: (B, H, W, C); offsets in [0, 2 * pad]; flip: bool (B,). Returns (B, H, W, C)
    with the dtype of `images`. One fancy-index gather, no per-example Python loop.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
    rows = offset_y[:, None] + np.arange(h)[None, :]
    cols = offset_x[:, None] + np.arange(w)[None, :]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def roll_and_flip(
    clips: np.ndarray, shift_y: np.ndarray, shift_x: np.ndarray, flip: np.ndarray
) -> np.ndarray:
    """Circularly translate (roll) every clip by (shift_y, shift_x) pixels, then flip.

    clips: (B, T, H, W, C); shifts: int (B,); flip: bool (B,). Returns (B, T, H, W, C).
    """
    b, _, h, w, _ = clips.shape
    rows = (np.arange(h)[None, :] - shift_y[:, None]) % h
    cols = (np.arange(w)[None, :] - shift_x[:, None]) % w
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    # Advanced indices around a slice move to the front: result is (B, H, W, T, C).
    out = clips[np.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2, 4))


def normalizer(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(256, C) float32 lookup table mapping a uint8 value of channel c to (v/255 - mean)/std."""
    values = np.arange(256, dtype=np.float64)[:, None] / 255.0
    return ((values - np.asarray(mean)) / np.asarray(std)).astype(np.float32)


def normalize_uint8(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 (..., C) -> float32 (..., C) through a :func:`normalizer` table."""
    channels = table.shape[1]
    if channels == 1:
        return table[:, 0][images]
    return table[images, np.arange(channels)]


def normalize_float(
    images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """float (..., C) in [0, 255] -> float32 (x/255 - mean)/std."""
    scale = (1.0 / (255.0 * np.asarray(std))).astype(np.float32)
    shift = (np.asarray(mean) / np.asarray(std)).astype(np.float32)
    return images.astype(np.float32) * scale - shift


def resize_bilinear(
    image: np.ndarray, box: tuple[int, int, int, int], out_h: int, out_w: int
) -> np.ndarray:
    """Crop `box` = (top, left, height, width) from an (H, W, C) image and resize it.

    Bilinear with half-pixel centres and no antialiasing (what `tf.image.resize` and
    `jax.image.resize(..., antialias=False)` compute). Returns float32 (out_h, out_w, C)
    in the input's value range.
    """
    top, left, height, width = box
    ys = (np.arange(out_h) + 0.5) * (height / out_h) - 0.5
    xs = (np.arange(out_w) + 0.5) * (width / out_w) - 0.5
    ys = np.clip(ys, 0, height - 1)
    xs = np.clip(xs, 0, width - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    upper = image[top + y0].astype(np.float32)
    lower = image[top + y1].astype(np.float32)
    rows = upper + (lower - upper) * wy  # (out_h, W, C)
    left_cols = rows[:, left + x0]
    right_cols = rows[:, left + x1]
    return left_cols + (right_cols - left_cols) * wx


def random_resized_crop_box(
    height: int,
    width: int,
    uniforms: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """Inception-style random crop box (top, left, height, width) of an H x W image.

    uniforms: (attempts, 4) numbers in [0, 1) (area, log-aspect, top, left per attempt).
    Falls back to the largest centred crop with an aspect ratio inside `ratio`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in uniforms:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(u_top * (height - crop_h + 1))
            left = int(u_left * (width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, min(height, round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, min(width, round(height * ratio[1]))
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def center_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """Centred square box of side `fraction * min(H, W)` (resize-then-crop in one step)."""
    side = max(1, round(fraction * min(height, width)))
    return (height - side) // 2, (width - side) // 2, side, side


def area_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix averaging input pixels over each output pixel.

    Row i integrates the input over [i, i+1) * in/out with fractional edge weights, so
    rows sum to 1 (area interpolation, what OpenCV calls INTER_AREA; identity when equal).
    """
    scale = in_size / out_size
    starts = np.arange(out_size)[:, None] * scale
    ends = starts + scale
    pixel = np.arange(in_size)[None, :]
    overlap = np.clip(np.minimum(ends, pixel + 1) - np.maximum(starts, pixel), 0.0, None)
    return (overlap / scale).astype(np.float32)
