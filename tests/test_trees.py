"""Pytree structure and shape comparison."""

import jax
import numpy as np

from sastc_jax import trees


def test_the_first_difference_is_named_with_the_count_of_the_others():
    expected = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 4))}, "bias": np.zeros(4)}}
    assert trees.shape_mismatch(expected, jax.tree.map(np.ones_like, expected)) is None
    wider = {"params": {"conv": {"kernel": np.zeros((3, 3, 1, 8))}, "bias": np.zeros(8)}}
    assert trees.shape_mismatch(expected, wider) == (
        "['params']['bias'] has shape (8,), expected (4,) (and 1 more difference(s))"
    )
    assert trees.shape_mismatch(expected, {"params": {"bias": np.zeros(4)}}) == (
        "['params']['conv']['kernel'] is missing"
    )
    extra = {"params": {**expected["params"], "dense": np.zeros(2)}}
    assert trees.shape_mismatch(expected, extra) == "['params']['dense'] is not expected"


def test_shape_structs_compare_as_arrays():
    abstract = jax.eval_shape(lambda: {"w": np.zeros((2, 3), np.float32)})
    assert trees.leaf_shapes(abstract) == {"['w']": (2, 3)}
    assert trees.shape_mismatch(abstract, {"w": np.zeros((2, 3))}) is None
