"""Vectorised augmentation helpers against straightforward per-example references."""

from __future__ import annotations

import numpy as np

from sastc_jax.data import augment as aug


def test_example_random_is_a_pure_function_of_its_key():
    random = aug.ExampleRandom(seed=1, epoch=2)
    indices = np.arange(1000)
    u = random.uniform(indices, stream=0)
    np.testing.assert_array_equal(u, aug.ExampleRandom(1, 2).uniform(indices, 0))
    np.testing.assert_array_equal(u[[5, 700]], random.uniform(np.array([5, 700]), 0))
    assert not np.array_equal(u, random.uniform(indices, stream=1))
    assert not np.array_equal(u, aug.ExampleRandom(1, 3).uniform(indices, 0))
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.05
    ints = random.integers(indices, 3, -2, 2)
    assert set(ints.tolist()) == {-2, -1, 0, 1, 2}
    assert 0.4 < random.coin(indices, 4).mean() < 0.6
    assert random.uniform(indices[:3], 5, size=7).shape == (3, 7)


def test_crop_and_flip_matches_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)
    pad = 2
    oy = rng.integers(0, 2 * pad + 1, 6)
    ox = rng.integers(0, 2 * pad + 1, 6)
    flip = rng.integers(0, 2, 6).astype(bool)
    out = aug.crop_and_flip(images, pad, oy, ox, flip)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for b in range(6):
        expected = padded[b, oy[b] : oy[b] + 5, ox[b] : ox[b] + 7]
        if flip[b]:
            expected = expected[:, ::-1]
        np.testing.assert_array_equal(out[b], expected)


def test_roll_and_flip_matches_reference():
    rng = np.random.default_rng(1)
    clips = rng.normal(size=(4, 3, 6, 5, 2)).astype(np.float32)
    dy, dx = np.array([0, 1, -2, 3]), np.array([2, -1, 0, 4])
    flip = np.array([False, True, True, False])
    out = aug.roll_and_flip(clips, dy, dx, flip)
    for b in range(4):
        expected = np.roll(clips[b], (dy[b], dx[b]), axis=(1, 2))
        if flip[b]:
            expected = expected[:, :, ::-1]
        np.testing.assert_array_equal(out[b], expected)


def test_normalisation_tables():
    table = aug.normalizer((0.5, 0.25), (0.5, 0.25))
    images = np.array([[[[0, 255], [51, 102]]]], np.uint8)
    expected = (images / 255.0 - np.array([0.5, 0.25])) / np.array([0.5, 0.25])
    np.testing.assert_allclose(aug.normalize_uint8(images, table), expected, atol=1e-6)
    np.testing.assert_allclose(
        aug.normalize_float(images.astype(np.float32), (0.5, 0.25), (0.5, 0.25)),
        expected,
        atol=1e-6,
    )


def test_resize_bilinear_identity_and_constant():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    np.testing.assert_allclose(aug.resize_bilinear(image, (0, 0, 9, 11), 9, 11), image)
    np.testing.assert_array_equal(
        aug.resize_bilinear(image, (2, 3, 4, 5), 4, 5), image[2:6, 3:8].astype(np.float32)
    )
    flat = np.full((40, 30, 3), 77, np.uint8)
    np.testing.assert_allclose(aug.resize_bilinear(flat, (5, 5, 20, 10), 16, 16), 77.0)


def test_random_resized_crop_boxes_stay_inside():
    rng = np.random.default_rng(3)
    for _ in range(200):
        height, width = rng.integers(1, 60, 2)
        top, left, h, w = aug.random_resized_crop_box(int(height), int(width), rng.random((10, 4)))
        assert top >= 0 and left >= 0 and h >= 1 and w >= 1
        assert top + h <= height and left + w <= width
    # No attempt fits a 1000x2 image: the fallback keeps the ratio within [3/4, 4/3].
    assert aug.random_resized_crop_box(1000, 2, np.full((10, 4), 0.99)) == (498, 0, 3, 2)


def test_area_resize_matrix_preserves_mean():
    matrix = aug.area_resize_matrix(128, 48)
    assert matrix.shape == (48, 128)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(axis=0), 48 / 128, atol=1e-6)
    np.testing.assert_array_equal(aug.area_resize_matrix(16, 16), np.eye(16, dtype=np.float32))
    block = aug.area_resize_matrix(8, 2)
    np.testing.assert_allclose(block, np.repeat(np.eye(2), 4, axis=1) / 4)
