"""ops.remat: the same gradients as no rematerialisation, and less memory on XLA's CPU backend."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sastc_jax.models.snn import SpikingBasicBlock
from sastc_jax.ops import remat

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv3x3(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def conv_block(kernels, x):
    """Two 3x3 convolutions with tanh and a residual sum: ``(N, H, W, C) -> same``."""
    y = jnp.tanh(conv3x3(x, kernels[0]))
    return jnp.tanh(conv3x3(y, kernels[1]) + x)


def chain_loss(block, kernels, x):
    for kernel_pair in kernels:
        x = block(kernel_pair, x)
    return jnp.sum(x**2)


def kernels_and_input(blocks=4, channels=16, size=16, batch=8):
    keys = jax.random.split(jax.random.key(0), blocks + 1)
    kernels = [0.1 * jax.random.normal(k, (2, 3, 3, channels, channels)) for k in keys[:-1]]
    return kernels, jax.random.normal(keys[-1], (batch, size, size, channels))


def test_checkpoint_gives_the_plain_gradients():
    kernels, x = kernels_and_input()
    grad_fn = jax.jit(jax.grad(chain_loss, argnums=(1, 2)), static_argnums=0)
    plain = grad_fn(conv_block, kernels, x)
    rematted = grad_fn(remat.checkpoint(conv_block), kernels, x)
    for expected, actual in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_binary_arguments_are_restored_exactly():
    """A spike input saved as int8 gives the same value and gradients as float32."""
    spikes = (jax.random.uniform(jax.random.key(1), (4, 6)) > 0.5).astype(jnp.float32)
    weights = jax.random.normal(jax.random.key(2), (6, 3))

    def layer(w, s):
        return jnp.sum(jnp.sin(s @ w) * s.sum())

    plain = jax.value_and_grad(layer, argnums=(0, 1))(weights, spikes)
    compact = jax.value_and_grad(remat.checkpoint(layer, binary_argnames=("s",)), argnums=(0, 1))(
        weights, spikes
    )
    for expected, actual in zip(jax.tree.leaves(plain), jax.tree.leaves(compact), strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="measures XLA's CPU buffers")
def test_checkpoint_lowers_the_cpu_temporary_buffer():
    """XLA's CPU compiler drops jax.checkpoint's barriers; remat.checkpoint still saves."""
    kernels, x = kernels_and_input(blocks=8, channels=32, size=32, batch=16)

    def temp_bytes(block):
        step = jax.jit(jax.grad(lambda k, inputs: chain_loss(block, k, inputs)))
        return step.lower(kernels, x).compile().memory_analysis().temp_size_in_bytes

    plain, rematted = temp_bytes(conv_block), temp_bytes(remat.checkpoint(conv_block))
    activation = x.size * x.dtype.itemsize
    assert rematted < 0.7 * plain, (rematted / activation, plain / activation)


def test_remat_module_gives_the_plain_gradients_and_batch_stats():
    block_args = dict(features=8, stride=2)
    plain_block = SpikingBasicBlock(**block_args)
    remat_block = remat.remat(
        SpikingBasicBlock, static_argnames=("train",), binary_argnames=("spikes",)
    )(**block_args)
    spikes = (jax.random.uniform(jax.random.key(3), (2, 4, 8, 8, 4)) > 0.6).astype(jnp.float32)
    variables = plain_block.init(jax.random.key(4), spikes, True)
    assert jax.tree.structure(variables) == jax.tree.structure(
        remat_block.init(jax.random.key(4), spikes, True)
    )

    def loss(module: nn.Module, params, inputs):
        out, mutated = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            inputs,
            True,
            mutable=["batch_stats"],
        )
        return jnp.sum(out * jnp.arange(out.shape[-1])), mutated["batch_stats"]

    results = {}
    for name, module in (("plain", plain_block), ("remat", remat_block)):
        grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
        results[name] = grad_fn(module, variables["params"], spikes)
    for expected, actual in zip(
        jax.tree.leaves(results["plain"]), jax.tree.leaves(results["remat"]), strict=True
    ):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def test_after_keeps_values_and_depends_on_its_second_argument():
    tree = {"w": jnp.arange(3.0), "count": jnp.array(2)}
    value = jnp.array([5.0, -1.0])
    later = remat.after(tree, value)
    np.testing.assert_array_equal(later["w"], tree["w"])
    assert later["count"].dtype == tree["count"].dtype and int(later["count"]) == 2
    jaxpr = jax.make_jaxpr(remat.after)(tree, value).jaxpr
    value_var = jaxpr.invars[-1]
    assert any(value_var in eqn.invars for eqn in jaxpr.eqns)


def test_arguments_are_named_and_checked():
    def layer(w, s):
        return jnp.sum(w * s)

    with pytest.raises(ValueError, match=r"no argument\(s\) \['spikes'\]"):
        remat.checkpoint(layer, binary_argnames=("spikes",))
    with pytest.raises(ValueError, match="params"):
        remat.checkpoint(layer, binary_argnames=("w",))
    with pytest.raises(ValueError, match="no argument"):
        remat.remat(SpikingBasicBlock, binary_argnames=("x",))
    integer_spikes = jnp.ones((3,), jnp.int32)
    with pytest.raises(TypeError, match="float or bool spike array"):
        jax.grad(remat.checkpoint(layer, binary_argnames=("s",)))(jnp.ones(3), integer_spikes)
