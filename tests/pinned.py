"""Pinned numbers: summary statistics of pytrees, and their comparison across CPUs.

A statistic tuple is a scalar (a loss) followed by (sum, L2 norm) pairs, one pair per
pytree. XLA's CPU code sums float32 in an order that depends on the CPU's vector width,
so a sum of signed terms that nearly cancel (a gradient's sum) moves by a few 1e-6 of
the terms' size between CPUs. Its tolerance is therefore relative to the pytree's norm,
not to the sum itself; the scalar and the norms are held to a relative tolerance.
"""

import jax
import numpy as np

RTOL = 1e-6
SUM_TOL_PER_NORM = 1e-5


def sum_and_norm(tree) -> tuple[float, float]:
    """(sum, L2 norm) of all leaves, in float64."""
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]
    return float(sum(x.sum() for x in leaves)), float(np.sqrt(sum((x * x).sum() for x in leaves)))


def assert_matches_pinned(actual, pinned, *, rtol: float = RTOL) -> None:
    """Assert (scalar, sum, norm, sum, norm, ...) against pinned values, across CPUs.

    The scalar and every norm within `rtol`; every sum within
    `max(rtol, SUM_TOL_PER_NORM) * norm` of its pinned value.
    """
    actual, pinned = np.asarray(actual, np.float64), np.asarray(pinned, np.float64)
    assert actual.shape == pinned.shape and actual.size % 2 == 1, (actual.shape, pinned.shape)
    scalar_and_norms = np.r_[0, np.arange(2, actual.size, 2)]
    np.testing.assert_allclose(actual[scalar_and_norms], pinned[scalar_and_norms], rtol=rtol)
    for index in range(1, actual.size, 2):
        tolerance = max(rtol, SUM_TOL_PER_NORM) * pinned[index + 1]
        np.testing.assert_allclose(
            actual[index], pinned[index], rtol=0, atol=tolerance, err_msg=f"sum at {index}"
        )
