"""LIF dynamics and surrogate gradients (docs/method.md §2)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax.neurons import (
    FULL_UNROLL_MAX_T,
    SURROGATES,
    LIFConfig,
    heaviside,
    lif,
    lif_step,
)


def reference_lif(currents, config=LIFConfig(), unroll=None):
    """``lif`` as it was: a scan of ``lif_step`` over T, differentiated by JAX.

    It was fully unrolled; by default the loop form is used at T > 4 (unrolled, T = 50
    takes a minute to compile on 2 cores, T = 500 far longer), which gives bit-identical
    values and derivatives (``test_reference_loop_equals_the_unrolled_reference``).
    """
    step = functools.partial(lif_step, config=config)
    v0 = jnp.zeros_like(currents[0], dtype=jnp.float32)
    unroll = currents.shape[0] <= 4 if unroll is None else unroll
    _, (spikes, membrane) = jax.lax.scan(step, v0, currents.astype(jnp.float32), unroll=unroll)
    return spikes.astype(currents.dtype), membrane


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


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("time_steps", [1, 2, 4, 50, 500])
def test_lif_equals_the_scan_of_lif_step(surrogate, time_steps):
    # Spikes and membrane bit for bit; reverse- and forward-mode derivatives to 1e-6,
    # for a loss on the spikes alone and for one on spikes and membrane together.
    config = LIFConfig.default_for(surrogate)
    neurons = 32 if time_steps == 500 else 128
    keys = jax.random.split(jax.random.key(time_steps), 4)
    currents = jax.random.normal(keys[0], (time_steps, neurons)) * 0.8 + 0.6
    spike_weights = jax.random.normal(keys[1], currents.shape)
    membrane_weights = jax.random.normal(keys[2], currents.shape)
    direction = jax.random.normal(keys[3], currents.shape)

    spikes, membrane = jax.jit(lambda c: lif(c, config, return_membrane=True))(currents)
    ref_spikes, ref_membrane = jax.jit(lambda c: reference_lif(c, config))(currents)
    np.testing.assert_array_equal(spikes, ref_spikes)
    np.testing.assert_array_equal(membrane, ref_membrane)
    assert 0 < float(spikes.mean()) < 1

    def losses(run):
        def on_spikes(c):
            return jnp.sum(spike_weights * run(c)[0])

        def on_both(c):
            spikes, membrane = run(c)
            return jnp.sum(spike_weights * spikes) + jnp.sum(membrane_weights * membrane)

        return on_spikes, on_both

    ours = losses(lambda c: lif(c, config, return_membrane=True))
    reference = losses(lambda c: reference_lif(c, config))
    for loss, ref_loss in zip(ours, reference, strict=True):
        grad = jax.jit(jax.grad(loss))(currents)
        ref_grad = jax.jit(jax.grad(ref_loss))(currents)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6 * np.abs(ref_grad).max())
        assert np.abs(ref_grad).max() > 0
        tangent = jax.jit(functools.partial(jax.jvp, loss))((currents,), (direction,))[1]
        ref_tangent = jax.jit(functools.partial(jax.jvp, ref_loss))((currents,), (direction,))[1]
        np.testing.assert_allclose(tangent, ref_tangent, rtol=1e-6)


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("time_steps", [2, 50])
def test_bias_inside_the_loop_equals_adding_it_first(surrogate, time_steps):
    # lif(y, bias=b) == lif(y + b): spikes and membrane bit for bit; derivatives in both
    # modes, for y and for b, to float32 rounding (b's cotangent is summed in another order).
    config = LIFConfig.default_for(surrogate)
    keys = jax.random.split(jax.random.key(7), 4)
    currents = jax.random.normal(keys[0], (time_steps, 4, 32)) * 0.8 + 0.3
    bias = jax.random.normal(keys[1], (32,)) * 0.3
    weights = jax.random.normal(keys[2], currents.shape)

    def inside(c, b):
        return lif(c, config, bias=b, return_membrane=True)

    def first(c, b):
        return lif(c + b, config, return_membrane=True)

    outputs = jax.jit(inside)(currents, bias), jax.jit(first)(currents, bias)
    for got, want in zip(*outputs, strict=True):
        np.testing.assert_array_equal(got, want)

    def loss(run):
        return lambda c, b: jnp.sum(weights * run(c, b)[0]) + 0.1 * jnp.sum(run(c, b)[1])

    grads = jax.jit(jax.grad(loss(inside), (0, 1)))(currents, bias)
    ref_grads = jax.jit(jax.grad(loss(first), (0, 1)))(currents, bias)
    for got, want in zip(grads, ref_grads, strict=True):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    directions = (jax.random.normal(keys[3], currents.shape), bias[::-1])
    tangent = jax.jvp(loss(inside), (currents, bias), directions)[1]
    ref_tangent = jax.jvp(loss(first), (currents, bias), directions)[1]
    np.testing.assert_allclose(tangent, ref_tangent, rtol=1e-6)


def test_bias_shape_and_dtype():
    currents = (jax.random.normal(jax.random.key(3), (3, 2, 4)) * 0.6 + 0.5).astype(jnp.bfloat16)
    # Where currents + bias is not float32 it is formed first, as lif(currents + bias).
    for bias in (jnp.full((4,), 0.45, jnp.bfloat16), jnp.full((4,), 0.45, jnp.float32)):
        spikes = lif(currents, bias=bias)
        np.testing.assert_array_equal(spikes, lif(currents + bias))
        assert spikes.dtype == (currents + bias).dtype
        assert 0 < float(spikes.astype(jnp.float32).mean()) < 1
    with pytest.raises(ValueError, match=r"bias must broadcast to one step's shape \(2, 4\)"):
        lif(currents, bias=jnp.ones((3, 2, 4)))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        lif(currents, bias=jnp.ones(5))


@pytest.mark.parametrize("time_steps", [4, 50])
def test_reverse_mode_saves_only_the_membrane(time_steps):
    # The residuals of jax.vjp: u_t (one float32 per neuron-step; the unrolled form also
    # one step's zeros), against two or more per neuron-step (s_t, u_t, the surrogate
    # slope) for the plain scan.
    currents = jax.random.normal(jax.random.key(0), (time_steps, 4, 16)) + 0.6

    def residual_bytes(function):
        _, pullback = jax.vjp(function, currents)
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(pullback) if hasattr(leaf, "nbytes")]
        return sum(leaf.nbytes for leaf in leaves)

    one_float, one_step = currents.size * 4, currents[0].size * 4
    membrane_only = one_float if time_steps > FULL_UNROLL_MAX_T else one_float + one_step
    assert residual_bytes(lif) == membrane_only
    assert residual_bytes(lambda c: lif(c, return_membrane=True)) == membrane_only
    assert residual_bytes(lambda c: reference_lif(c)[0]) >= 2 * one_float


def test_the_backward_loop_writes_over_the_membrane():
    # XLA's temporaries for jit(grad) at T = 50: the currents' cotangent is written over
    # u_t, in the buffer the gradient is returned in, so less than a quarter of one
    # (T, B, N) float32 array; JAX's autodiff of the scan of lif_step needs a whole one
    # or more (its saved values, and a new, zero-filled buffer for the cotangent).
    currents = jax.random.normal(jax.random.key(0), (50, 16, 128)) + 0.6
    bias = jnp.zeros(128)

    def temp_bytes(loss, *args):
        compiled = jax.jit(jax.grad(loss, range(len(args)))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def spike_total(c, b):
        return jnp.sum(lif(c, bias=b))

    def reference_spike_total(c, b):
        return jnp.sum(reference_lif(c + b)[0])

    assert temp_bytes(spike_total, currents, bias) < currents.nbytes / 4
    assert temp_bytes(reference_spike_total, currents, bias) >= currents.nbytes


def test_loop_form_under_vmap_jacobians_hessian_and_shard_map():
    # T = 20 runs the loop form, whose reverse mode is its own transpose: every JAX
    # transformation composes with it and agrees with the reference scan.
    config = LIFConfig.default_for("sigmoid")
    currents = jax.random.normal(jax.random.key(4), (20, 3, 6)) * 0.8 + 0.6
    bias = jax.random.normal(jax.random.key(5), (6,)) * 0.2

    def loss(run):
        return lambda c, b: jnp.sum(jnp.sin(run(c, b)[1]) * (1.0 + run(c, b)[0]))

    ours = loss(lambda c, b: lif(c, config, bias=b, return_membrane=True))
    reference = loss(lambda c, b: reference_lif(c + b, config))
    grads = jax.grad(ours, (0, 1))(currents, bias)
    for got, want in zip(grads, jax.grad(reference, (0, 1))(currents, bias), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # vmap of grad over the batch axis equals the batched gradient, per example.
    per_example = jax.vmap(jax.grad(ours), in_axes=(1, None), out_axes=1)(currents, bias)
    np.testing.assert_allclose(per_example, grads[0], rtol=1e-6, atol=1e-7)

    one_neuron = currents[:, 0, 0]
    spikes_of = functools.partial(lif, config=config)
    np.testing.assert_allclose(
        jax.jacfwd(spikes_of)(one_neuron), jax.jacrev(spikes_of)(one_neuron), rtol=1e-6, atol=1e-7
    )
    hessian = jax.hessian(lambda c: ours(c, bias[0]))(one_neuron)
    ref_hessian = jax.hessian(lambda c: reference(c, bias[0]))(one_neuron)
    assert np.abs(ref_hessian).max() > 0
    np.testing.assert_allclose(hessian, ref_hessian, rtol=1e-5, atol=1e-6)

    # Under shard_map the currents vary over the mesh axis and the bias does not.
    mesh = jax.make_mesh((1,), ("data",))
    specs = (jax.P(None, "data"), jax.P())
    sharded = [
        jax.device_put(x, jax.NamedSharding(mesh, p))
        for x, p in zip((currents, bias), specs, strict=True)
    ]

    def per_device(c, b):
        currents_grad, bias_grad = jax.grad(ours, (0, 1))(c, b)
        return currents_grad, jax.lax.psum(bias_grad, "data")

    sharded_grads = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=specs))(
        *sharded
    )
    for got, want in zip(sharded_grads, grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_forward_mode_jacobian_and_bfloat16_gradients():
    currents = jax.random.normal(jax.random.key(2), (6, 5)) + 0.7
    np.testing.assert_allclose(jax.jacfwd(lif)(currents), jax.jacrev(lif)(currents), rtol=1e-6)
    half = currents.astype(jnp.bfloat16)
    grad = jax.grad(lambda c: jnp.sum(lif(c).astype(jnp.float32)))(half)
    ref_grad = jax.grad(lambda c: jnp.sum(reference_lif(c)[0].astype(jnp.float32)))(half)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_array_equal(grad, ref_grad)


@pytest.mark.slow
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_reference_loop_equals_the_unrolled_reference(surrogate):
    config = LIFConfig.default_for(surrogate)
    currents = jax.random.normal(jax.random.key(5), (50, 128)) * 0.8 + 0.6
    weights = jax.random.normal(jax.random.key(6), currents.shape)

    def values_and_grads(unroll):
        run = functools.partial(reference_lif, config=config, unroll=unroll)
        grad = jax.jit(jax.grad(lambda c: jnp.sum(weights * run(c)[0]) + jnp.sum(run(c)[1])))
        return jax.jit(run)(currents), grad(currents)

    for unrolled, loop in zip(values_and_grads(True), values_and_grads(1), strict=True):
        np.testing.assert_array_equal(jax.tree.leaves(unrolled), jax.tree.leaves(loop))
