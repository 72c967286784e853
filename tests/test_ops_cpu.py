"""ops.cpu: the matmul forms (kernel gradient, 1x1 convolution) equal XLA's and are used
exactly where documented."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sastc_jax.ops import cpu

NHWC = ("NHWC", "HWIO", "NHWC")


# The matmul gradient on the small maps of these tests too.
EVERY_SIZE = cpu.MatmulConv(min_rows=0)


def gradients(conv_fn, x, kernel, padding):
    def loss(x, kernel):
        out = conv_fn(x, kernel, (1, 1), padding, dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


@pytest.mark.parametrize(
    ("kernel_hw", "padding"),
    [((3, 3), ((1, 1), (1, 1))), ((3, 3), "SAME"), ((5, 3), ((2, 2), (0, 1))), ((3, 3), "VALID")],
)
def test_gradients_equal_xla(kernel_hw, padding):
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (3, 9, 7, 4))
    kernel = jax.random.normal(keys[1], (*kernel_hw, 4, 6))
    assert cpu.uses_matmul_kernel_gradient(
        x.shape, kernel.shape, (1, 1), padding, dimension_numbers=NHWC, min_rows=0
    )
    (loss, (dx, dw)) = gradients(EVERY_SIZE, x, kernel, padding)
    (ref_loss, (ref_dx, ref_dw)) = gradients(lax.conv_general_dilated, x, kernel, padding)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_array_equal(dx, ref_dx)  # XLA's own input gradient
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref_dw))))
    assert float(jnp.max(jnp.abs(dw))) > 0


def test_kernel_gradient_formula_on_a_hand_example():
    """One input pixel and one output-gradient pixel: dW[i, j] is their product at the
    offset that connects them."""
    x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(2.0)
    output_grad = jnp.zeros((1, 4, 4, 1)).at[0, 2, 2, 0].set(3.0)
    dw = cpu.matmul_kernel_gradient(x, output_grad, (3, 3, 1, 1), ((1, 1), (1, 1)))
    # Y[2, 2] reads X[2 + i - 1, 2 + j - 1]; X[1, 2] is offset (i, j) = (0, 1).
    expected = np.zeros((3, 3, 1, 1), np.float32)
    expected[0, 1, 0, 0] = 6.0
    np.testing.assert_array_equal(dw, expected)


def test_flax_conv_with_it_matches_the_default():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    plain = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    fast = nn.Conv(
        5,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        conv_general_dilated=EVERY_SIZE,
    )
    variables = plain.init(jax.random.key(2), x)

    def grads(module):
        return jax.grad(lambda v: jnp.sum(module.apply(v, x) ** 2))(variables)

    np.testing.assert_array_equal(fast.apply(variables, x), plain.apply(variables, x))
    np.testing.assert_allclose(
        grads(fast)["params"]["kernel"], grads(plain)["params"]["kernel"], rtol=1e-5
    )


SHAPES = {"lhs_shape": (8, 16, 16, 32), "rhs_shape": (3, 3, 32, 32)}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, True),  # 8 x 16 x 16 output positions, stride 1, 3x3
        ({"min_rows": 8 * 16 * 16 + 1}, False),
        ({"window_strides": (2, 2)}, False),
        ({"rhs_shape": (1, 1, 32, 32)}, False),
        ({"lhs_shape": (2, 8, 8, 32)}, False),  # 128 output positions: too small to matter
        ({"rhs_dilation": (2, 2)}, False),
        ({"feature_group_count": 2, "rhs_shape": (3, 3, 16, 32)}, False),
        ({"dimension_numbers": ("NCHW", "OIHW", "NCHW"), "lhs_shape": (8, 32, 16, 16)}, False),
    ],
)
def test_where_the_matmul_gradient_is_used(overrides, expected):
    arguments = {
        **SHAPES,
        "window_strides": (1, 1),
        "padding": ((1, 1), (1, 1)),
        "dimension_numbers": NHWC,
        **overrides,
    }
    assert cpu.uses_matmul_kernel_gradient(**arguments) is expected


@pytest.mark.parametrize(
    ("strides", "padding"), [((1, 1), "SAME"), ((2, 2), "SAME"), ((2, 1), "VALID")]
)
def test_pointwise_convolution_equals_xla(strides, padding):
    keys = jax.random.split(jax.random.key(3), 2)
    x = jax.random.normal(keys[0], (3, 9, 7, 4))
    kernel = jax.random.normal(keys[1], (1, 1, 4, 6))
    assert cpu.is_pointwise(x.shape, kernel.shape, strides, padding, dimension_numbers=NHWC)

    def loss(conv_fn, x, kernel):
        out = conv_fn(x, kernel, strides, padding, dimension_numbers=NHWC)
        return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape) / out.size), out

    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    (dx, dw), out = jax.jit(grad, static_argnums=0)(cpu.conv_general_dilated, x, kernel)
    (ref_dx, ref_dw), ref_out = jax.jit(grad, static_argnums=0)(lax.conv_general_dilated, x, kernel)
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(dx))) > 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, True),
        ({"window_strides": (2, 2)}, True),
        ({"rhs_shape": (3, 3, 32, 32)}, False),
        ({"padding": ((1, 1), (1, 1))}, False),  # a padded 1x1 reads zeros at the border
        ({"rhs_dilation": (2, 2)}, False),
        ({"feature_group_count": 2, "rhs_shape": (1, 1, 16, 32)}, False),
        ({"dimension_numbers": ("NCHW", "OIHW", "NCHW"), "lhs_shape": (8, 32, 16, 16)}, False),
    ],
)
def test_where_the_pointwise_dot_is_used(overrides, expected):
    arguments = {
        "lhs_shape": (8, 16, 16, 32),
        "rhs_shape": (1, 1, 32, 32),
        "window_strides": (1, 1),
        "padding": "SAME",
        "dimension_numbers": NHWC,
        **overrides,
    }
    assert cpu.is_pointwise(**arguments) is expected


def test_matmul_conv_is_a_hashable_value():
    assert cpu.MatmulConv(64) == cpu.MatmulConv(64) != cpu.MatmulConv(0)
    assert hash(cpu.MatmulConv(64)) == hash(cpu.MatmulConv(64))
