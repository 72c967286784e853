"""Building blocks of the model zoo: time-major layout helpers, ConvBN, LIF layer, pooling."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from init_statistics import assert_kaiming_fan_out, assert_pytorch_uniform, fans

from sastc_jax.models.layers import (
    LIF,
    ConvBN,
    ann_input,
    apply_merged,
    avg_pool,
    conv,
    dense,
    dense_lif,
    max_pool,
    merge_time,
    repeat_over_time,
    spiking_input,
    split_time,
)
from sastc_jax.neurons import LIFConfig, lif


def test_merge_and_split_time_round_trip():
    x = jnp.arange(3 * 2 * 4 * 5).reshape(3, 2, 4, 5)
    merged = merge_time(x)
    assert merged.shape == (6, 4, 5)
    np.testing.assert_array_equal(merged[2 + 1], x[1, 1])  # row t*B + b
    np.testing.assert_array_equal(split_time(merged, 3), x)
    with pytest.raises(ValueError, match="multiple"):
        split_time(merged, 4)


def test_apply_merged_equals_per_time_step():
    layer = conv(4, 3, 2)
    x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 2))
    params = layer.init(jax.random.key(1), x[0])
    merged = apply_merged(lambda y: layer.apply(params, y), x)
    per_step = jnp.stack([layer.apply(params, x[t]) for t in range(3)])
    assert merged.shape == (3, 2, 4, 4, 4)
    np.testing.assert_allclose(merged, per_step, rtol=1e-5, atol=1e-5)


def test_conv_bn_normalises_over_the_merged_time_batch():
    layer = ConvBN(features=4, kernel_size=3, stride=1)
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 2)) * 2.0 + 0.5
    variables = layer.init(jax.random.key(1), x)
    time_major, stats_tm = layer.apply(variables, x, mutable=["batch_stats"])
    merged, stats_merged = layer.apply(variables, merge_time(x), mutable=["batch_stats"])
    np.testing.assert_allclose(time_major, split_time(merged, 3), rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(np.testing.assert_allclose, stats_tm, stats_merged)
    # zero mean, unit variance per channel over (T, B, H, W) in training mode
    np.testing.assert_allclose(time_major.mean(axis=(0, 1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(time_major.var(axis=(0, 1, 2, 3)), 1.0, atol=1e-3)


def test_lif_layer_is_neurons_lif():
    config = LIFConfig(tau=0.25, v_threshold=0.5)
    currents = jax.random.normal(jax.random.key(0), (4, 2, 3, 3, 5))
    spikes = LIF(config).apply({}, currents)
    np.testing.assert_array_equal(spikes, lif(currents, config))
    assert spikes.dtype == currents.dtype


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_lif_is_lif_of_dense(dtype):
    # The bias added inside the neuron loop: the same spikes as LIF(Dense(x)), bit for bit,
    # the same parameter tree, and the same parameter gradients to float32 rounding.
    x = jax.random.normal(jax.random.key(0), (12, 3, 16)) + 0.4

    class Separate(nn.Module):
        @nn.compact
        def __call__(self, x):
            return LIF(name="lif")(dense(8, dtype=dtype, name="fc")(x))

    class Fused(nn.Module):
        @nn.compact
        def __call__(self, x):
            return dense_lif(dense(8, dtype=dtype, name="fc"), LIF(name="lif"), x)

    params = Separate().init(jax.random.key(1), x)
    assert jax.tree.structure(Fused().init(jax.random.key(1), x)) == jax.tree.structure(params)
    spikes = Fused().apply(params, x)
    assert spikes.dtype == dtype
    np.testing.assert_array_equal(spikes, Separate().apply(params, x))
    assert 0 < float(spikes.astype(jnp.float32).mean()) < 1

    def loss(model):
        return lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32) * jnp.arange(8.0))

    fused, separate = jax.grad(loss(Fused()))(params), jax.grad(loss(Separate()))(params)
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(separate), strict=True):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_max_pool_pads_with_minus_infinity():
    x = -jnp.ones((1, 4, 4, 1))
    pooled = max_pool(x, window=3, stride=2, padding=1)
    assert pooled.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(pooled, -1.0)


def test_avg_pool_floor_and_ceil_modes():
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    assert avg_pool(x, 2).shape == (1, 1, 1, 1)
    np.testing.assert_allclose(avg_pool(x, 2)[0, 0, 0, 0], (0 + 1 + 3 + 4) / 4)
    ceil = avg_pool(x, 2, ceil_mode=True)
    np.testing.assert_allclose(ceil[0, :, :, 0], [[2.0, 3.5], [6.5, 8.0]])
    time_major = jnp.broadcast_to(x, (2, 1, 3, 3, 1))
    assert avg_pool(time_major, 2, ceil_mode=True).shape == (2, 1, 2, 2, 1)
    assert avg_pool(x.astype(jnp.bfloat16), 2, ceil_mode=True).dtype == jnp.bfloat16


def test_spiking_input_layouts():
    images = jnp.zeros((2, 8, 8, 3))
    out, is_static = spiking_input(images, 4)
    assert is_static and out.shape == (2, 8, 8, 3)
    assert repeat_over_time(out, 4).shape == (4, 2, 8, 8, 3)
    frames = jnp.arange(2 * 4).reshape(2, 4, 1, 1, 1) * jnp.ones((1, 1, 8, 8, 2))
    out, is_static = spiking_input(frames, 4)
    assert not is_static and out.shape == (4, 2, 8, 8, 2)
    np.testing.assert_array_equal(out[3, 1], frames[1, 3])
    with pytest.raises(ValueError, match="T=4"):
        spiking_input(frames, 3)
    with pytest.raises(ValueError, match="got shape"):
        spiking_input(jnp.zeros((8, 8, 3)), 4)
    with pytest.raises(ValueError, match="positive"):
        spiking_input(images, 0)


def test_ann_input_collapses_time():
    frames = jax.random.uniform(jax.random.key(0), (2, 5, 4, 4, 2))
    np.testing.assert_allclose(ann_input(frames), frames.mean(axis=1))
    with pytest.raises(ValueError, match="got shape"):
        ann_input(jnp.zeros((4, 4, 2)))


# ------------------------------------------------------------------ initialisation

CONV_SHAPES = [(3, 3, 128, 128), (1, 1, 64, 256), (7, 7, 3, 64), (3, 3, 3, 16)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_pytorch_scheme_is_uniform_in_inverse_sqrt_fan_in(shape):
    k, _, c_in, c_out = shape
    layer = conv(c_out, k, init_scheme="pytorch")
    kernel = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, c_in)))["params"]["kernel"]
    assert kernel.shape == shape
    assert_pytorch_uniform(kernel, fans(np.asarray(kernel))[0], f"conv {shape}")


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
@pytest.mark.parametrize("scheme", ["torchvision", "kaiming_fan_out"])
def test_conv_kaiming_schemes_are_normal_with_variance_two_over_fan_out(shape, scheme):
    k, _, c_in, c_out = shape
    layer = conv(c_out, k, init_scheme=scheme)
    kernel = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, c_in)))["params"]["kernel"]
    assert_kaiming_fan_out(np.asarray(kernel), f"conv {shape} {scheme}")


@pytest.mark.parametrize("fan_in, features", [(512, 10), (64, 4096), (256, 256)])
@pytest.mark.parametrize("scheme", ["pytorch", "torchvision", "kaiming_fan_out"])
def test_dense_weights_and_biases_follow_the_scheme(fan_in, features, scheme):
    params = dense(features, init_scheme=scheme).init(jax.random.key(0), jnp.zeros((2, fan_in)))
    kernel, bias = np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"])
    assert kernel.shape == (fan_in, features) and bias.shape == (features,)
    assert_pytorch_uniform(kernel, fan_in, f"dense kernel {fan_in}->{features}")
    if scheme == "kaiming_fan_out":
        np.testing.assert_array_equal(bias, 0)
    else:
        assert_pytorch_uniform(bias, fan_in, f"dense bias {fan_in}->{features}")


def test_dense_equals_flax_dense_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(1), (3, 5, 16))
    params = dense(8).init(jax.random.key(0), x)
    np.testing.assert_allclose(
        dense(8).apply(params, x), nn.Dense(8).apply(params, x), rtol=1e-6, atol=1e-6
    )


def test_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match=r"init_scheme 'xavier'.*pytorch"):
        conv(4, init_scheme="xavier").init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="init_scheme 'xavier'"):
        dense(4, init_scheme="xavier").init(jax.random.key(0), jnp.zeros((1, 3)))
