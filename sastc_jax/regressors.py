"""The regressors of the calibration (docs/method.md §5.4): a (student, teacher) tap pair brought
to one spatial size, then ``R_ij``: conv3x3(C_i -> 2 C_j) -> per-time-step BN -> ReLU ->
conv1x1(2 C_j -> C_j), no biases.

Shapes: student taps ``(T, B, H, W, C_i)`` (merged to ``(T*B, ...)`` for the
convolutions), teacher taps ``(B, H, W, C_j)``. The regressors that read one aligned
student tap run as one :class:`RegressorGroup` (:func:`fused_regressors`: one 3x3
convolution for all of them); the convolution and rematerialisation forms come from
``ops`` (:mod:`sastc_jax.ops`). Initialisation as PyTorch's ``nn.Conv2d`` /
``nn.BatchNorm2d`` defaults (the release's).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax.models.layers import ops_field, pytorch_weight_init
from sastc_jax.ops import Ops

Array = jax.Array


def adaptive_pool(x: Array, out_hw: tuple[int, int], reduce: str) -> Array:
    """Adaptive max/avg pooling of ``(N, H, W, C)`` to ``(N, *out_hw, C)``.

    Bins follow PyTorch's adaptive pooling: ``[floor(k*H/out), ceil((k+1)*H/out))``.
    Integer ratios (the normal case) reduce to one reshape and one reduction.
    """
    reducer = {"max": jnp.max, "avg": jnp.mean}[reduce]
    (h, w), (out_h, out_w) = x.shape[1:3], out_hw
    if (h, w) == (out_h, out_w):
        return x
    if h % out_h == 0 and w % out_w == 0:
        n, c = x.shape[0], x.shape[-1]
        blocks = x.reshape(n, out_h, h // out_h, out_w, w // out_w, c)
        return reducer(blocks, axis=(2, 4))

    def bins(size, out):
        return [(k * size // out, -(-(k + 1) * size // out)) for k in range(out)]

    rows = [
        jnp.stack([reducer(x[:, r0:r1, c0:c1], axis=(1, 2)) for c0, c1 in bins(w, out_w)], 1)
        for r0, r1 in bins(h, out_h)
    ]
    return jnp.stack(rows, axis=1)


def align_pair(student: Array, teacher: Array) -> tuple[Array, Array]:
    """Bring one (student, teacher) pair to the same spatial size (docs/method.md §5.4).

    ``student`` is ``(N, H_i, W_i, C_i)`` (N = T*B), ``teacher`` ``(B, H_j, W_j, C_j)``.
    A larger student map is max-pooled down to the teacher's size; otherwise the
    teacher map is average-pooled down to the student's size.
    """
    if student.shape[1] > teacher.shape[1]:
        return adaptive_pool(student, teacher.shape[1:3], "max"), teacher
    return student, adaptive_pool(teacher, student.shape[1:3], "avg")


def time_step_batch_norm(x: Array, scale: Array, bias: Array, epsilon: float = 1e-5) -> Array:
    """Batch norm of ``(T, B, H, W, C)`` with each time step's own batch statistics,
    reduced over (B, H, W) in float32; ``scale``, ``bias``: ``(C,)``. Keeps ``x``'s dtype."""
    stats_input = x.astype(jnp.float32)
    mean = jnp.mean(stats_input, axis=(1, 2, 3), keepdims=True)
    var = jnp.var(stats_input, axis=(1, 2, 3), keepdims=True)
    normed = (stats_input - mean) * jax.lax.rsqrt(var + epsilon)
    return (normed * scale + bias).astype(x.dtype)


class TimeStepBatchNorm(nn.Module):
    """Batch norm of ``(T, B, H, W, C)`` with each time step's own batch statistics.

    Scale and bias are shared over time; the statistics are reduced over (B, H, W)
    separately for every t, as the release does by calling the regressor once per
    step. There are no running averages: the calibration module only ever runs
    in training mode (it is not used at inference).
    """

    epsilon: float = 1e-5

    @nn.compact
    def parameters(self, channels: int) -> dict:
        """``{'scale': (C,), 'bias': (C,)}``, created at init (scale 1, bias 0)."""
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return {"scale": scale, "bias": bias}

    def __call__(self, x: Array) -> Array:
        params = self.parameters(x.shape[-1])
        return time_step_batch_norm(x, params["scale"], params["bias"], self.epsilon)


class ConvKernel(nn.Module):
    """The kernel ``(k, k, C_in, features)`` of a bias-free convolution, initialised as
    ``nn.Conv2d``'s (PyTorch's default); the parameter is ``kernel``, as ``nn.Conv``'s."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_channels: int) -> Array:
        shape = (self.kernel_size, self.kernel_size, in_channels, self.features)
        return self.param("kernel", pytorch_weight_init, shape, jnp.float32)


class Regressor(nn.Module):
    """conv3x3(C_i -> 2 C_j) -> BN -> ReLU -> conv1x1(2 C_j -> C_j), no biases.

    Input ``(T, B, H, W, C_i)``; the convolutions run once on the merged T*B
    batch, the batch norm per time step. Output ``(T, B, H, W, C_j)``. Parameters:
    ``conv3x3/kernel``, ``bn/scale``, ``bn/bias``, ``conv1x1/kernel``. Computed as a
    group of one (:func:`fused_regressors`).
    """

    out_channels: int
    dtype: jnp.dtype = jnp.float32
    ops: Ops = ops_field()

    def setup(self):
        self.conv3x3 = ConvKernel(2 * self.out_channels, 3)
        self.bn = TimeStepBatchNorm()
        self.conv1x1 = ConvKernel(self.out_channels, 1)

    def parameters(self, in_channels: int) -> dict:
        """The parameter dict for input channels ``in_channels`` (created at init)."""
        return {
            "conv3x3": {"kernel": self.conv3x3(in_channels)},
            "bn": self.bn.parameters(2 * self.out_channels),
            "conv1x1": {"kernel": self.conv1x1(2 * self.out_channels)},
        }

    def __call__(self, x: Array) -> Array:
        params = self.parameters(x.shape[-1])
        return fused_regressors([params], x, self.ops, self.dtype)[0]


def _conv(x: Array, kernel: Array, ops: Ops, dtype) -> Array:
    """The bias-free stride-1 'SAME' convolution of ``nn.Conv`` on ``(N, H, W, C)``."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    return ops.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def squared_error(regressed: Array, teacher: Array) -> Array:
    """``mean_{h,w,c}(regressed - teacher)^2`` of ``(T, B, H, W, C)`` against the
    teacher's ``(B, H, W, C)``; returns ``(T, B)``."""
    diff = regressed.astype(jnp.float32) - teacher.astype(jnp.float32)[None]
    return jnp.mean(diff * diff, axis=(2, 3, 4))


def fused_regressor_errors(
    params: Sequence[dict],
    x: Array,
    teachers: Sequence[Array],
    ops: Ops,
    dtype: jnp.dtype = jnp.float32,
) -> list:
    """:func:`fused_regressors` followed by :func:`squared_error` against each teacher."""
    outputs = fused_regressors(params, x, ops, dtype)
    return [squared_error(out, teacher) for out, teacher in zip(outputs, teachers, strict=True)]


def fused_regressors(
    params: Sequence[dict], x: Array, ops: Ops, dtype: jnp.dtype = jnp.float32
) -> list:
    """Several :class:`Regressor` s that read the same input, run as one.

    ``params`` are the regressors' parameter dicts, ``x`` their common input
    ``(T, B, H, W, C_i)``. Their conv3x3 kernels are concatenated along the output
    channels (one convolution instead of one per regressor), the per-time-step batch
    norm and the ReLU act per channel on the concatenation, and each regressor's
    conv1x1 reads its own slice of it: every output channel sees the arithmetic of one
    regressor alone. Both convolutions are ``ops.conv_general_dilated``. Returns the
    regressors' outputs ``(T, B, H, W, C_j)`` in order.
    """
    steps, batch = x.shape[:2]
    merged = x.reshape(steps * batch, *x.shape[2:])
    kernel = jnp.concatenate([p["conv3x3"]["kernel"] for p in params], axis=-1)
    hidden = _conv(merged, kernel, ops, dtype).reshape(steps, batch, *merged.shape[1:3], -1)
    scale = jnp.concatenate([p["bn"]["scale"] for p in params])
    bias = jnp.concatenate([p["bn"]["bias"] for p in params])
    hidden = nn.relu(time_step_batch_norm(hidden, scale, bias, TimeStepBatchNorm.epsilon))
    hidden = hidden.reshape(steps * batch, *hidden.shape[2:])
    outputs, start = [], 0
    for p in params:
        width = p["conv3x3"]["kernel"].shape[-1]
        out = _conv(hidden[..., start : start + width], p["conv1x1"]["kernel"], ops, dtype)
        outputs.append(out.reshape(steps, batch, *out.shape[1:]))
        start += width
    return outputs


class RegressorGroup(nn.Module):
    """The regressors that read one aligned student tap, run together.

    ``regressors`` are :class:`Regressor` s owned by the parent (their parameters stay
    ``regressors_{i}_{j}`` there; the group has none of its own). ``__call__(student,
    teachers, previous)``: ``student`` ``(T, B, H, W, C_i)``, one aligned teacher
    ``(B, H, W, C_j)`` per regressor; returns their squared errors, ``(T, B)`` each.
    ``remat``: recompute the group's activations in the backward pass (``ops.checkpoint``);
    its parameters are then read after ``previous`` (the previous group's errors), so
    on the CPU one group's backward pass runs at a time.
    """

    regressors: Sequence[Regressor]
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    ops: Ops = ops_field()

    def __call__(
        self, student: Array, teachers: Sequence[Array], previous: Sequence[Array] | None = None
    ) -> list:
        params = [regressor.parameters(student.shape[-1]) for regressor in self.regressors]
        run = functools.partial(fused_regressor_errors, ops=self.ops, dtype=self.dtype)
        if not self.remat:
            return run(params, student, teachers)
        if previous is not None:
            params = self.ops.after(params, previous)
        return self.ops.checkpoint(run)(params, student, teachers)
