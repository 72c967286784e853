"""The CPU forms of a 2-D convolution: XLA's CPU backend runs them faster as matmuls.

Contract: :func:`conv_general_dilated` (and :class:`MatmulConv`, the same with its
``min_rows`` bound, for the ``conv_general_dilated`` field of ``flax.linen.Conv``) is a
drop-in for ``jax.lax.conv_general_dilated`` with the same arguments and result (equal
up to float32 summation order). It differs from XLA's in implementation only:

- a plain NHWC/HWIO 1x1 convolution (any stride) without padding, dilation or grouping
  is a strided slice and one ``dot_general`` (:func:`pointwise`); its gradients are the
  dot's;
- the kernel gradient of a plain stride-1 NHWC/HWIO convolution with a spatial kernel,
  no dilation or grouping and at least ``min_rows`` output positions in the batch is one
  matrix product per kernel offset (:func:`matmul_kernel_gradient`, a ``custom_vjp``);
  the forward pass and the input gradient stay XLA's.

Everything else is ``lax.conv_general_dilated`` unchanged. The replaced computations run
inside ``jax.named_scope(NAMED_SCOPE)``, which tells them apart in a jaxpr or HLO dump
(``tests/test_ops.py``). There is no backend test
here: whoever selects these forms gets them (:func:`sastc_jax.ops.select` picks them
only for the CPU backend). Why and by how much they are faster on the CPU:
docs/performance.md, "Convolution forms on the CPU" (``benchmarks/conv_weight_grad.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from sastc_jax.ops import remat

Array = jax.Array

# Below this many output positions in the batch (N * Ho * Wo) both gradients take
# microseconds; the matmul form is kept for the sizes where it was measured.
DEFAULT_MIN_ROWS = 1024
# The named scope of every computation of these forms (see ops.remat.NAMED_SCOPE).
NAMED_SCOPE = "cpu_matmul_conv"

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    if dimension_numbers is None or len(lhs_shape) != 4:
        return False
    wanted = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
    return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == wanted


def _explicit_padding(
    padding: str | Sequence[tuple[int, int]], in_size: Sequence[int], window, strides
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_size, window, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


# What conv_form decides (see the module docstring).
POINTWISE, MATMUL_KERNEL_GRADIENT, XLA = "pointwise", "matmul_kernel_gradient", "xla"


def conv_form(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> str:
    """How :func:`conv_general_dilated` computes this call (the arguments of
    ``lax.conv_general_dilated``, shapes in place of arrays): :data:`POINTWISE` (a plain
    1x1 convolution, any stride, without padding: one ``dot_general``),
    :data:`MATMUL_KERNEL_GRADIENT` (a plain stride-1 convolution with a spatial kernel and
    at least ``min_rows`` output positions: XLA's forward, the matmul kernel gradient) or
    :data:`XLA` (``lax.conv_general_dilated`` unchanged)."""
    if not _plain_nhwc(lhs_shape, rhs_shape, dimension_numbers):
        return XLA
    dilations = (*(lhs_dilation or ()), *(rhs_dilation or ()))
    if (feature_group_count, batch_group_count) != (1, 1) or any(d != 1 for d in dilations):
        return XLA
    pads = _explicit_padding(padding, lhs_shape[1:3], rhs_shape[:2], window_strides)
    if tuple(rhs_shape[:2]) == (1, 1):  # a 1x1 kernel gradient is a single dot already
        return POINTWISE if all(lo == 0 and hi == 0 for lo, hi in pads) else XLA
    if any(s != 1 for s in window_strides):  # strided: XLA's gradient (one per stage here)
        return XLA
    spatial = zip(lhs_shape[1:3], pads, rhs_shape[:2], window_strides, strict=True)
    out_size = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in spatial]
    rows = lhs_shape[0] * out_size[0] * out_size[1]
    return MATMUL_KERNEL_GRADIENT if rows >= min_rows else XLA


def uses_matmul_kernel_gradient(*args, **kwargs) -> bool:
    """Whether :func:`conv_general_dilated` replaces XLA's kernel gradient for this call
    (the arguments of :func:`conv_form`)."""
    return conv_form(*args, **kwargs) == MATMUL_KERNEL_GRADIENT


def is_pointwise(*args, **kwargs) -> bool:
    """Whether :func:`conv_general_dilated` computes this call as a ``dot_general``: a
    plain NHWC/HWIO 1x1 convolution (any stride) without padding, dilation or grouping
    (the arguments of :func:`conv_form`)."""
    return conv_form(*args, **kwargs) == POINTWISE


@remat.named(NAMED_SCOPE)
def pointwise(x: Array, kernel: Array, window_strides: Sequence[int]) -> Array:
    """A 1x1 NHWC/HWIO convolution without padding as one ``dot_general``.

    ``x``: ``(N, H, W, C_in)``; ``kernel``: ``(1, 1, C_in, C_out)``. Output positions
    read every ``stride``-th input pixel from the first, as the convolution's do.
    Returns ``(N, ceil(H / s_h), ceil(W / s_w), C_out)``.
    """
    stride_h, stride_w = window_strides
    if (stride_h, stride_w) != (1, 1):
        x = x[:, ::stride_h, ::stride_w, :]
    return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))


def matmul_kernel_gradient(
    x: Array, output_grad: Array, kernel_shape: Sequence[int], pads: Sequence[tuple[int, int]]
) -> Array:
    """``dL/dW`` of a stride-1 NHWC/HWIO convolution as one matrix product per offset.

    ``x``: the input ``(N, H, W, C_in)``; ``output_grad``: ``dL/dY`` ``(N, Ho, Wo,
    C_out)``; ``pads``: the forward's ``((lo, hi), (lo, hi))``. With ``Y[o] = sum_i
    X[o + i - lo] W[i]`` per spatial axis, ``dW[i] = sum_h X[h]^T dY[h - i + lo]``: the
    output gradient is shifted (not the input), so every window is built from ``dY``
    inside the backward pass and none can be scheduled early and held alive from the
    forward. Returns ``(kh, kw, C_in, C_out)`` in ``x``'s dtype, accumulated in float32.
    """
    kh, kw, c_in, c_out = kernel_shape
    n, height, width, _ = x.shape
    padded_grad = jnp.pad(output_grad, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    inputs = x.reshape(n * height * width, c_in)
    offsets = []
    for i in range(kh):
        for j in range(kw):
            top, left = pads[0][0] + kh - 1 - i, pads[1][0] + kw - 1 - j
            # Each window is cut only after the previous product is done, so XLA never
            # holds all kh*kw shifted copies of the gradient at once (it did).
            source = remat.after(padded_grad, offsets[-1]) if offsets else padded_grad
            window = lax.slice(source, (0, top, left, 0), (n, top + height, left + width, c_out))
            offsets.append(
                lax.dot_general(
                    inputs,
                    window.reshape(n * height * width, c_out),
                    (((0,), (0,)), ((), ())),
                    preferred_element_type=jnp.float32,
                )
            )
    return jnp.stack(offsets).reshape(kh, kw, c_in, c_out).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_nhwc(x: Array, kernel: Array, pads: tuple) -> Array:
    """The stride-1 NHWC/HWIO convolution whose kernel gradient is the matmul form."""
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


def _conv_nhwc_forward(x, kernel, pads):
    return _conv_nhwc(x, kernel, pads), (x, kernel)


@remat.named(NAMED_SCOPE)
def _matmul_kernel_gradient_backward(pads, residuals, output_grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(
        lambda inputs: lax.conv_general_dilated(
            inputs, kernel, (1, 1), pads, dimension_numbers=_NHWC
        ),
        x,
    )
    (input_grad,) = input_vjp(output_grad)
    return input_grad, matmul_kernel_gradient(x, output_grad, kernel.shape, pads)


_conv_nhwc.defvjp(_conv_nhwc_forward, _matmul_kernel_gradient_backward)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> Array:
    """``jax.lax.conv_general_dilated`` with the matmul forms where they apply.

    Same arguments and result; see the module docstring for when the computation
    differs in implementation (never in value beyond float32 summation order).
    ``min_rows``: the fewest output positions (N * Ho * Wo) that get the matmul
    kernel gradient.
    """
    layout = (
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
    )
    form = XLA
    if precision is None and preferred_element_type is None:
        form = conv_form(lhs.shape, rhs.shape, *layout, min_rows=min_rows)
    if form == POINTWISE:
        return pointwise(lhs, rhs, window_strides)
    if form == XLA:
        return lax.conv_general_dilated(lhs, rhs, *layout, precision, preferred_element_type)
    return _conv_nhwc(lhs, rhs, _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], (1, 1)))


@dataclasses.dataclass(frozen=True)
class MatmulConv:
    """:func:`conv_general_dilated` with a fixed ``min_rows``: a hashable value for the
    ``conv_general_dilated`` field of ``flax.linen.Conv`` (equal when ``min_rows`` is)."""

    min_rows: int = DEFAULT_MIN_ROWS

    def __call__(self, *args, **kwargs) -> Array:
        return conv_general_dilated(*args, **kwargs, min_rows=self.min_rows)
