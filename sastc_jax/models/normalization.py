"""Batch normalization over every axis but the last, with a lean derivative.

:func:`batch_norm` computes what ``flax.linen.BatchNorm`` computes in training mode, op
for op (float32 statistics ``E[x]`` and ``E[x^2] - E[x]^2``, clipped at 0, then
``(x - mean) * (rsqrt(var + eps) * scale) + bias``). Its derivative is one
``jax.custom_jvp``, written so that the only full-size value it needs is ``x``
itself: autodiff of the forward also keeps ``x - mean`` for the backward pass, and
under a spiking layer's reshape XLA stores the incoming cotangent twice. The
memory this saves: docs/performance.md.
Being a JVP, forward mode works as well as reverse mode.

:class:`BatchNorm` is the linen layer over it, with flax's variable names
(``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``), so checkpoints,
the PyTorch import and the NIR export see no difference.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = jnp.dtype | type


def batch_statistics(x: Array) -> tuple[Array, Array]:
    """Float32 ``(mean, var)`` of ``x`` over every axis but the last, ``(C,)`` each.

    ``var = max(0, E[x^2] - E[x]^2)``: flax's fast variance, one pass over ``x``.
    """
    axes = tuple(range(x.ndim - 1))
    values = x.astype(jnp.float32)
    mean = values.mean(axes)
    mean_of_squares = jax.lax.square(values).mean(axes)
    return mean, jnp.maximum(0.0, mean_of_squares - jax.lax.square(mean))


def normalize(
    x: Array, mean: Array, var: Array, scale: Array, bias: Array, epsilon: float
) -> Array:
    """``(x - mean) * (rsqrt(var + eps) * scale) + bias`` in float32; per-channel ``(C,)`` stats."""
    multiplier = jax.lax.rsqrt(var + epsilon) * scale
    return (x - mean) * multiplier + bias


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm(
    x: Array, scale: Array, bias: Array, epsilon: float = 1e-5
) -> tuple[Array, Array, Array]:
    """Training-mode batch norm of ``x`` (``(..., C)``) with its own statistics.

    Returns ``(y, mean, var)``: ``y`` float32 with ``x``'s shape, ``mean`` and ``var``
    the float32 batch statistics ``(C,)`` (for the running averages). ``scale`` and
    ``bias`` are ``(C,)``.
    """
    mean, var = batch_statistics(x)
    return normalize(x, mean, var, scale, bias, epsilon), mean, var


@batch_norm.defjvp
def _batch_norm_jvp(epsilon, primals, tangents):
    x, scale, bias = primals
    x_dot, scale_dot, bias_dot = tangents
    outputs = batch_norm(x, scale, bias, epsilon)
    _, mean, var = outputs
    axes = tuple(range(x.ndim - 1))
    values, values_dot = x.astype(jnp.float32), x_dot.astype(jnp.float32)

    mean_dot = values_dot.mean(axes)
    # The clip max(0, .) passes no derivative where it bites.
    mean_of_squares_dot = 2.0 * (values * values_dot).mean(axes)
    var_dot = jnp.where(var > 0, mean_of_squares_dot - 2.0 * mean * mean_dot, 0.0)
    inv_std = jax.lax.rsqrt(var + epsilon)
    multiplier = inv_std * scale
    multiplier_dot = -0.5 * inv_std * inv_std * inv_std * var_dot * scale + inv_std * scale_dot
    # (x - mean) * multiplier_dot, written so that x, not x - mean, is what is kept.
    y_dot = (
        values_dot * multiplier
        + values * multiplier_dot
        - (mean_dot * multiplier + mean * multiplier_dot)
        + bias_dot
    )
    return outputs, (y_dot, mean_dot, var_dot)


class BatchNorm(nn.Module):
    """Batch norm over every axis but the last, as ``flax.linen.BatchNorm``.

    ``momentum`` is flax's (the running average keeps ``momentum`` of itself); the
    output has ``dtype``; parameters and statistics are float32. The running averages
    are not updated while the module is being initialised.
    """

    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = (x.shape[-1],)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, channels, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, channels, jnp.float32)

        if self.use_running_average:
            y = normalize(x, running_mean.value, running_var.value, scale, bias, self.epsilon)
        else:
            y, mean, var = batch_norm(x, scale, bias, self.epsilon)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)
