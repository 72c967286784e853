"""Batch norm: flax.linen.BatchNorm's values and variables, and autodiff's derivatives."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax.models.normalization import BatchNorm, batch_norm


def flax_batch_norm(train: bool, dtype=jnp.float32) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def ours(train: bool, dtype=jnp.float32) -> BatchNorm:
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


def features(shape, key=0, dtype=jnp.float32):
    # A channel mean far from 0 and unequal spreads, as a conv's output has.
    channels = shape[-1]
    centres = jnp.linspace(-2.0, 3.0, channels)
    spreads = jnp.linspace(0.5, 2.0, channels)
    return (centres + spreads * jax.random.normal(jax.random.key(key), shape)).astype(dtype)


def trained_variables(channels: int) -> dict:
    """Variables with non-trivial scale, bias and running statistics."""
    return {
        "params": {
            "scale": jnp.linspace(0.5, 1.5, channels),
            "bias": jnp.linspace(-0.3, 0.4, channels),
        },
        "batch_stats": {
            "mean": jnp.linspace(-1.0, 1.0, channels),
            "var": jnp.linspace(0.5, 4.0, channels),
        },
    }


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (3, 4, 5, 5, 6)])
@pytest.mark.parametrize("train", [True, False])
def test_values_and_running_statistics_equal_flax(shape, train):
    x = features(shape)
    variables = trained_variables(shape[-1])
    expected, expected_state = jax.jit(
        lambda v, x: flax_batch_norm(train).apply(v, x, mutable=["batch_stats"])
    )(variables, x)
    got, state = jax.jit(lambda v, x: ours(train).apply(v, x, mutable=["batch_stats"]))(
        variables, x
    )
    assert got.shape == shape and got.dtype == jnp.float32
    # The same operations: equal up to the order XLA sums in.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(
            state["batch_stats"][name], expected_state["batch_stats"][name], rtol=1e-6
        )
    if train:  # the running averages moved from the values they were given
        assert not np.allclose(state["batch_stats"]["mean"], variables["batch_stats"]["mean"])


def test_variables_are_flax_batch_norms():
    x = features((4, 3, 3, 5))
    got = ours(True).init(jax.random.key(0), x)
    expected = flax_batch_norm(True).init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), got) == jax.tree.map(
        lambda a: (a.shape, a.dtype), expected
    )
    np.testing.assert_array_equal(got["params"]["scale"], np.ones(5))
    np.testing.assert_array_equal(got["batch_stats"]["var"], np.ones(5))
    # Initialising does not move the running averages.
    np.testing.assert_array_equal(got["batch_stats"]["mean"], np.zeros(5))


def test_bfloat16_output_with_float32_statistics():
    x = features((6, 4, 4, 8), dtype=jnp.bfloat16)
    variables = trained_variables(x.shape[-1])
    got, state = ours(True, jnp.bfloat16).apply(variables, x, mutable=["batch_stats"])
    expected, expected_state = flax_batch_norm(True, jnp.bfloat16).apply(
        variables, x, mutable=["batch_stats"]
    )
    assert got.dtype == jnp.bfloat16 and state["batch_stats"]["mean"].dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(expected, np.float32), rtol=1e-2, atol=1e-2
    )
    np.testing.assert_allclose(
        state["batch_stats"]["var"], expected_state["batch_stats"]["var"], rtol=1e-6
    )


def loss_of(module):
    """``loss(params, x)`` of a 6-channel batch norm in training mode."""
    stats = {"mean": jnp.zeros(6), "var": jnp.ones(6)}

    # A loss that weighs every element differently, so no derivative cancels by symmetry.
    def loss(params, x):
        y, _ = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        return jnp.sum(jnp.tanh(y) * weights)

    return loss


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (3, 4, 5, 5, 6)])
def test_reverse_mode_equals_autodiff_of_flax(shape):
    x = features(shape)
    params = {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(-0.3, 0.4, 6)}
    got = jax.jit(jax.grad(loss_of(ours(True)), argnums=(0, 1)))(params, x)
    expected = jax.jit(jax.grad(loss_of(flax_batch_norm(True)), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_forward_mode_equals_reverse_mode():
    x = features((4, 3, 3, 6))
    scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-0.3, 0.4, 6)

    def outputs(x):
        y, mean, var = batch_norm(x, scale, bias)
        return jnp.concatenate([jnp.tanh(y).ravel(), mean, var])

    np.testing.assert_allclose(jax.jacfwd(outputs)(x), jax.jacrev(outputs)(x), rtol=1e-5, atol=1e-6)


def test_statistics_derivatives_equal_autodiff():
    """The (mean, var) outputs carry their own derivatives (for a loss on the statistics)."""
    x = features((10, 6))

    def via_ours(x):
        _, mean, var = batch_norm(x, jnp.ones(6), jnp.zeros(6))
        return jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

    def reference(x):
        mean = x.mean(0)
        var = jnp.maximum(0.0, (x * x).mean(0) - mean**2)
        return jnp.sum(mean**2) + jnp.sum(jnp.sqrt(var))

    np.testing.assert_allclose(jax.grad(via_ours)(x), jax.grad(reference)(x), rtol=1e-5, atol=1e-7)


def test_constant_channel_derivatives_equal_autodiff_of_flax():
    x = features((6, 3, 3, 6)).at[..., 2].set(3.0)  # variance 0: the clip max(0, .) holds
    params = {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(-0.3, 0.4, 6)}
    got = jax.grad(loss_of(ours(True)), argnums=1)(params, x)
    expected = jax.grad(loss_of(flax_batch_norm(True)), argnums=1)(params, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
