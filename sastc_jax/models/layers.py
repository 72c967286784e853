"""Flax building blocks shared by the model zoo (docs/method.md §2-§4).

Layout conventions:

- ANN activations are ``(B, H, W, C)``.
- SNN activations are time-major ``(T, B, H, W, C)``. Stateless layers (conv,
  pooling) run once on the merged ``(T*B, ...)`` batch, and batch norm takes its
  statistics over all of it; only the elementwise LIF update is scanned over T
  (:class:`LIF`).

The helpers here accept any number of leading batch dimensions and merge them
for the duration of the call, so the same layer serves both layouts.

Initialisation follows the PyTorch source each model reproduces, named by one of
:data:`INIT_SCHEMES` (every model has an ``init_scheme`` attribute; batch norm always starts
at scale 1, bias 0):

- ``'pytorch'``: PyTorch's module defaults, ``kaiming_uniform_(a=sqrt(5))``, i.e.
  conv and linear weights uniform in +-1/sqrt(fan_in) (variance 1/(3 fan_in)),
  linear biases uniform in +-1/sqrt(fan_in). The release's spiking students and its
  calibration module keep these.
- ``'torchvision'``: convs Kaiming-normal fan-out (variance 2/fan_out), linear
  layers PyTorch's defaults (weights and biases). torchvision's ResNets, the
  release's ResNet-19 and PyramidNet teachers.
- ``'kaiming_fan_out'``: convs Kaiming-normal fan-out, linear weights PyTorch's
  default, linear biases zero. The release's WRN teacher.

Fan-in of a conv is ``k*k*C_in``, fan-out ``k*k*C_out``. Parameters are always
float32; ``dtype`` is only the compute dtype.

Every module with a convolution has an ``ops`` field (:class:`sastc_jax.ops.Ops`: the
convolution and rematerialisation forms); left out, it is ``ops.select('auto')`` at
construction (:func:`ops_field`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sastc_jax import ops as ops_lib
from sastc_jax.models.normalization import BatchNorm
from sastc_jax.neurons import LIFConfig, lif
from sastc_jax.ops import Ops

Array = jax.Array
Dtype = Any

INIT_SCHEMES = ("pytorch", "torchvision", "kaiming_fan_out")
BATCH_NORM_EPSILON = 1e-5  # PyTorch's default

# kaiming_uniform_(a=sqrt(5)): bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
pytorch_weight_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated normal.
kaiming_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def ops_field() -> Any:
    """The ``ops`` dataclass field: ``sastc_jax.ops.select('auto')`` when not given."""
    return dataclasses.field(default_factory=ops_lib.default)


def check_init_scheme(init_scheme: str) -> None:
    """Raise unless ``init_scheme`` names one of :data:`INIT_SCHEMES`."""
    if init_scheme not in INIT_SCHEMES:
        raise ValueError(f"Unknown init_scheme {init_scheme!r}; choose one of {INIT_SCHEMES}.")


def conv_kernel_init(init_scheme: str) -> nn.initializers.Initializer:
    """The conv kernel initialiser of a scheme (kernels are ``(k, k, C_in, C_out)``)."""
    check_init_scheme(init_scheme)
    return pytorch_weight_init if init_scheme == "pytorch" else kaiming_fan_out_init


def pytorch_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """``nn.Linear``'s bias default: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / fan_in**0.5

    def init(key: Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# --------------------------------------------------------------------------- layout


def merge_time(x: Array) -> Array:
    """``(T, B, ...) -> (T*B, ...)``."""
    return x.reshape((x.shape[0] * x.shape[1], *x.shape[2:]))


def split_time(x: Array, time_steps: int) -> Array:
    """``(T*B, ...) -> (T, B, ...)``."""
    if x.shape[0] % time_steps:
        raise ValueError(f"Leading dim {x.shape[0]} is not a multiple of T={time_steps}.")
    return x.reshape((time_steps, x.shape[0] // time_steps, *x.shape[1:]))


def apply_merged(fn: Callable[[Array], Array], x: Array) -> Array:
    """Apply a stateless per-sample layer to a time-major ``(T, B, ...)`` array.

    ``fn`` sees one merged ``(T*B, ...)`` batch (one conv / BN call for all time
    steps); its output is split back to ``(T, B, ...)``.
    """
    return split_time(fn(merge_time(x)), x.shape[0])


def apply_on_images(fn: Callable[[Array], Array], x: Array) -> Array:
    """Apply ``fn`` written for ``(N, H, W, C)`` to ``(..., H, W, C)``, merging the leading dims."""
    if x.ndim < 4:
        raise ValueError(f"Expected (..., N, H, W, C) feature maps; got shape {x.shape}.")
    leading = x.shape[:-3]
    y = fn(x.reshape((-1, *x.shape[-3:])))
    return y.reshape((*leading, *y.shape[1:]))


# ---------------------------------------------------------------------- input handling


def check_time_steps(time_steps: int) -> None:
    """Raise unless ``time_steps`` is a positive integer."""
    if not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be a positive int; got {time_steps!r}.")


def spiking_input(x: Array, time_steps: int) -> tuple[Array, bool]:
    """Validate an SNN input and bring it to the layout the encoder expects.

    Returns ``(x, is_static)``:

    - a static image batch ``(B, H, W, C)`` comes back unchanged with
      ``is_static=True`` (direct encoding: the caller repeats it over T);
    - event frames ``(B, T, H, W, C)`` (batch-major, as data loaders deliver
      them) come back time-major ``(T, B, H, W, C)`` with ``is_static=False``.
    """
    check_time_steps(time_steps)
    if x.ndim == 4:
        return x, True
    if x.ndim == 5:
        if x.shape[1] != time_steps:
            raise ValueError(
                f"Event-frame input has T={x.shape[1]} frames (shape {x.shape}, layout "
                f"(B, T, H, W, C)) but the model has time_steps={time_steps}."
            )
        return jnp.swapaxes(x, 0, 1), False
    raise ValueError(
        "SNN input must be images (B, H, W, C) or event frames (B, T, H, W, C); "
        f"got shape {x.shape}."
    )


def repeat_over_time(x: Array, time_steps: int) -> Array:
    """``(B, ...) -> (T, B, ...)`` by broadcasting (direct encoding)."""
    return jnp.broadcast_to(x[None], (time_steps, *x.shape))


def ann_input(x: Array) -> Array:
    """Validate an ANN input; event frames ``(B, T, H, W, C)`` are averaged over T."""
    if x.ndim == 5:
        return jnp.mean(x, axis=1)
    if x.ndim == 4:
        return x
    raise ValueError(
        "ANN input must be images (B, H, W, C) or event frames (B, T, H, W, C); "
        f"got shape {x.shape}."
    )


# ------------------------------------------------------------------------ layers


def conv(
    features: int,
    kernel_size: int = 3,
    stride: int = 1,
    *,
    dtype: Dtype = jnp.float32,
    init_scheme: str = "torchvision",
    ops: Ops | None = None,
    padding: int | None = None,
    name: str | None = None,
) -> nn.Conv:
    """Bias-free square conv with PyTorch-style symmetric ``padding`` (``None``:
    ``kernel_size // 2``).

    Explicit padding (not ``'SAME'``) keeps strided convs aligned with the
    PyTorch reference on even inputs. ``init_scheme`` names the scheme (module docstring);
    ``ops`` gives the convolution's form (``None``: ``ops.select('auto')``).
    """
    pad = kernel_size // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init(init_scheme),
        conv_general_dilated=(ops or ops_lib.default()).conv_general_dilated,
        name=name,
    )


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32, name: str | None = None) -> BatchNorm:
    """BatchNorm with PyTorch defaults (momentum 0.1 in PyTorch terms, eps 1e-5).

    Statistics over every axis but the channels (:mod:`sastc_jax.models.normalization`).
    They are per device (no ``axis_name``); the trainer averages ``batch_stats`` across
    devices explicitly.
    """
    return BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=BATCH_NORM_EPSILON,
        dtype=dtype,
        name=name,
    )


class Dense(nn.Module):
    """Dense layer with bias, ``(..., fan_in) -> (..., features)``, as ``nn.Linear``.

    The same computation and parameters (``kernel (fan_in, features)``, ``bias``) as
    ``flax.linen.Dense``; it exists because PyTorch's bias default depends on the
    fan-in, which only the call knows. Weights follow PyTorch's default; the bias
    too, or zero under ``init_scheme='kaiming_fan_out'``.
    """

    features: int
    init_scheme: str = "pytorch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, add_bias: bool = True) -> Array:
        """``x @ kernel + bias``; with ``add_bias=False`` only ``x @ kernel``, for a caller
        that adds the bias itself (:func:`dense_lif` adds it inside the neuron loop)."""
        check_init_scheme(self.init_scheme)
        fan_in = x.shape[-1]
        kernel = self.param("kernel", pytorch_weight_init, (fan_in, self.features), jnp.float32)
        bias_init = (
            nn.initializers.zeros
            if self.init_scheme == "kaiming_fan_out"
            else pytorch_bias_init(fan_in)
        )
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        # One 2-D product over the merged leading dims (T*B for a time-major input), so the
        # kernel gradient is one 2-D product too (docs/performance.md, "The layers' layouts").
        rows = x.reshape(-1, fan_in)
        y = jax.lax.dot_general(rows, kernel, (((1,), (0,)), ((), ())))
        y = y.reshape(*x.shape[:-1], self.features)
        return y + bias if add_bias else y


def dense(
    features: int,
    *,
    dtype: Dtype = jnp.float32,
    init_scheme: str = "pytorch",
    name: str | None = None,
) -> Dense:
    """:class:`Dense` with float32 parameters and compute ``dtype``."""
    return Dense(features, init_scheme=init_scheme, dtype=dtype, name=name)


class ConvBN(nn.Module):
    """Bias-free conv (symmetric ``padding``, ``None``: ``kernel_size // 2``) followed by
    batch norm, on ``(..., H, W, C)``.

    The conv runs on all leading dims merged into one batch; the batch norm's statistics
    cover them all, so a time-major SNN activation ``(T, B, H, W, C)`` is convolved and
    normalised over the T*B batch.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Dtype = jnp.float32
    init_scheme: str = "torchvision"
    ops: Ops = ops_field()
    padding: int | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        convolution = conv(
            self.features,
            self.kernel_size,
            self.stride,
            dtype=self.dtype,
            init_scheme=self.init_scheme,
            ops=self.ops,
            padding=self.padding,
            name="conv",
        )
        # Normalised in the caller's layout (the statistics are the same), so a spiking
        # layer's cotangent reaches the batch norm without a reshape (docs/performance.md).
        return batch_norm(train, dtype=self.dtype, name="bn")(apply_on_images(convolution, x))


class LIF(nn.Module):
    """LIF neurons on a time-major current ``(T, ...)``; spikes keep its shape and dtype."""

    config: LIFConfig = LIFConfig()

    @nn.compact
    def __call__(self, x: Array, bias: Array | None = None) -> Array:
        """Spikes of ``lif(x, bias=bias)``: ``bias`` is a constant current added at every step."""
        return lif(x, self.config, bias=bias)


def dense_lif(dense_layer: Dense, neuron_layer: LIF, x: Array) -> Array:
    """``neuron_layer(dense_layer(x))``, with the dense bias added inside the neuron loop.

    The same spikes (bit for bit in float32) without storing ``x @ kernel + bias`` as an
    array of its own: one ``(T, ..., features)`` array less in the forward and backward
    pass. Call it from a compact method, like the two layers.
    """
    currents = dense_layer(x, add_bias=False)
    return neuron_layer(currents, dense_layer.variables["params"]["bias"].astype(currents.dtype))


# ----------------------------------------------------------------------- pooling


def max_pool(x: Array, window: int, stride: int, padding: int = 0) -> Array:
    """Square max-pool on ``(..., H, W, C)``, padding with -inf (PyTorch ``MaxPool2d``)."""
    pads = ((padding, padding), (padding, padding))
    return apply_on_images(
        lambda y: nn.max_pool(y, (window, window), (stride, stride), padding=pads), x
    )


def avg_pool(x: Array, window: int = 2, *, ceil_mode: bool = False) -> Array:
    """Non-overlapping square average pool on ``(..., H, W, C)``.

    With ``ceil_mode=False`` odd borders are dropped (PyTorch ``AvgPool2d``
    default); with ``ceil_mode=True`` the partial border window is kept and
    averages only its valid entries (PyTorch ``ceil_mode=True``).
    """
    h, w = x.shape[-3], x.shape[-2]
    pads = ((0, -h % window), (0, -w % window)) if ceil_mode else ((0, 0), (0, 0))
    pooled = apply_on_images(
        lambda y: nn.avg_pool(
            y, (window, window), (window, window), padding=pads, count_include_pad=False
        ),
        x,
    )
    return pooled.astype(x.dtype)  # the valid-entry count is float32; keep the compute dtype


def global_avg_pool(x: Array) -> Array:
    """``(..., H, W, C) -> (..., C)``: mean over the spatial axes."""
    return jnp.mean(x, axis=(-3, -2))
