"""LIF dynamics and surrogate gradients (SPEC §1)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax.neurons import LIFConfig, heaviside, lif, lif_step


def test_three_step_example_by_hand():
    # Neuron 0: u = 0.8, 0.5*0.8 + 0.8 = 1.2 (spike, reset), 0 + 1.5 = 1.5 (spike).
    # Neuron 1: u = 1.2 (spike, reset), 0.3, 0.5*0.3 + 0.6 = 0.75.
    currents = jnp.array([[0.8, 1.2], [0.8, 0.3], [1.5, 0.6]])
    spikes, membrane = lif(currents, return_membrane=True)
    np.testing.assert_array_equal(spikes, [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_allclose(membrane, [[0.8, 1.2], [1.2, 0.3], [1.5, 0.75]], rtol=1e-6)


def test_threshold_is_strict():
    spikes = lif(jnp.array([[1.0], [0.0]]))
    np.testing.assert_array_equal(spikes[:, 0], [0.0, 0.0])  # u = 1.0 is not > v_th


@pytest.mark.parametrize(
    "kind, width, formula",
    [
        ("triangle", 1.0, lambda x, w: max(0.0, w - abs(x)) / w**2),
        ("triangle", 0.5, lambda x, w: max(0.0, w - abs(x)) / w**2),
        ("sigmoid", 4.0, lambda x, a: a * math.exp(-a * x) / (1 + math.exp(-a * x)) ** 2),
        ("arctan", 2.0, lambda x, a: a / 2 / (1 + (math.pi / 2 * a * x) ** 2)),
    ],
)
def test_spike_gradient_is_the_surrogate(kind, width, formula):
    config = LIFConfig(surrogate=kind, width=width)
    for u in (-0.7, 0.2, 0.9, 1.0, 1.3, 2.5):
        # One step from rest: u_1 = x_1, so ds/dx = ds/du = g(u - v_th).
        grad = jax.grad(lambda x: lif(x[None], config)[0])(jnp.float32(u))
        assert float(grad) == pytest.approx(formula(u - 1.0, width), rel=1e-4, abs=1e-6)


def test_gradient_flows_through_the_reset():
    # x_1 = 1.2 spikes, so v_1 = u_1 * (1 - s_1) = 0 and d v_1 / d x_1 is due to the
    # reset alone: (1 - s_1) - u_1 * g(u_1 - 1) = 0 - 1.2 * 0.8 = -0.96.
    # s_2 = H(0.5 * v_1 + x_2 - 1) with x_2 = 1.3: d s_2 / d x_1 = g(0.3) * 0.5 * -0.96.
    grad = jax.grad(lambda x: lif(x)[1])(jnp.array([1.2, 1.3]))
    assert float(grad[0]) == pytest.approx(0.7 * 0.5 * -0.96, rel=1e-5)

    def detached_reset_second_spike(x):
        v1, _ = jax.lax.stop_gradient(lif_step(0.0, x[0]))
        return lif_step(v1, x[1])[1][0]

    assert float(jax.grad(detached_reset_second_spike)(jnp.array([1.2, 1.3]))[0]) == 0.0


def test_jit_vmap_grad_jvp_agree():
    currents = jax.random.normal(jax.random.key(0), (4, 3, 5)) + 0.8
    eager = lif(currents)
    np.testing.assert_array_equal(jax.jit(lif)(currents), eager)
    # vmap over a batch axis (axis 1) gives the same as the batched call.
    np.testing.assert_array_equal(jax.vmap(lif, in_axes=1, out_axes=1)(currents), eager)

    def total_spikes(x):
        return jnp.sum(lif(x))

    grad = jax.grad(total_spikes)(currents)
    direction = jax.random.normal(jax.random.key(1), currents.shape)
    _, forward = jax.jvp(total_spikes, (currents,), (direction,))
    np.testing.assert_allclose(forward, jnp.vdot(grad, direction), rtol=1e-4)
    assert jnp.any(grad != 0)


def test_membrane_is_float32_and_spikes_keep_dtype():
    spikes, membrane = lif(jnp.ones((2, 3), jnp.bfloat16) * 1.5, return_membrane=True)
    assert spikes.dtype == jnp.bfloat16
    assert membrane.dtype == jnp.float32


def test_heaviside_value():
    np.testing.assert_array_equal(heaviside(jnp.array([-1.0, 0.0, 1e-6])), [0.0, 0.0, 1.0])


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="Unknown surrogate 'relu'"):
        LIFConfig(surrogate="relu")
    with pytest.raises(ValueError, match=r"tau is a decay factor in \[0, 1\]"):
        LIFConfig(tau=2.0)
    assert LIFConfig.default_for("sigmoid").width == 4.0
    assert LIFConfig.default_for("arctan").width == 2.0
