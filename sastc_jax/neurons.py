"""Leaky integrate-and-fire (LIF) dynamics as pure functions (SPEC §1).

Per neuron, for t = 1..T with v_0 = 0::

    u_t = tau * v_{t-1} + x_t        leak, then integrate the input current
    s_t = H(u_t - v_th)              spike where u_t > v_th
    v_t = u_t * (1 - s_t)            hard reset to 0 (the reset is NOT detached)

``tau`` is a decay factor in [0, 1], not a time constant. The Heaviside step has
a surrogate derivative for the backward pass, defined with ``jax.custom_jvp`` so
forward- and reverse-mode autodiff both use it.

Inputs are time-major ``(T, ...)``; the update is scanned over T with
``jax.lax.scan``, unrolled. Layers live in :mod:`sastc_jax.models.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

SURROGATES = ("triangle", "sigmoid", "arctan")


def surrogate_gradient(kind: str, width: float, x: Array) -> Array:
    """Derivative used in place of dH/dx at ``x = u - v_th``.

    - ``triangle`` (paper default): ``max(0, w - |x|) / w**2`` with half-width ``w``.
    - ``sigmoid``: ``a * sig(a x) * (1 - sig(a x))``, slope ``a`` (SpikingJelly default 4).
    - ``arctan``: ``(a / 2) / (1 + (pi / 2 * a * x)**2)``, slope ``a`` (SpikingJelly default 2).
    """
    if kind == "triangle":
        return jnp.maximum(0.0, width - jnp.abs(x)) / (width * width)
    if kind == "sigmoid":
        sig = jax.nn.sigmoid(width * x)
        return width * sig * (1.0 - sig)
    if kind == "arctan":
        return (width / 2.0) / (1.0 + (math.pi / 2.0 * width * x) ** 2)
    raise ValueError(f"Unknown surrogate {kind!r}; choose one of {SURROGATES}.")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def heaviside(x: Array, kind: str = "triangle", width: float = 1.0) -> Array:
    """Spike function ``1[x > 0]`` whose derivative is the ``kind`` surrogate."""
    return (x > 0).astype(x.dtype)


@heaviside.defjvp
def _heaviside_jvp(kind, width, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return heaviside(x, kind, width), surrogate_gradient(kind, width, x) * x_dot


@dataclasses.dataclass(frozen=True)
class LIFConfig:
    """Neuron constants. ``width`` is the triangle half-width or the sigmoid/arctan slope."""

    tau: float = 0.5
    v_threshold: float = 1.0
    surrogate: str = "triangle"
    width: float = 1.0

    def __post_init__(self):
        if self.surrogate not in SURROGATES:
            raise ValueError(f"Unknown surrogate {self.surrogate!r}; choose one of {SURROGATES}.")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"LIF tau is a decay factor in [0, 1]; got {self.tau}.")
        if self.width <= 0:
            raise ValueError(f"Surrogate width/slope must be > 0; got {self.width}.")

    @classmethod
    def default_for(cls, surrogate: str, **kwargs) -> LIFConfig:
        """The usual parameter per surrogate: triangle 1.0, sigmoid 4.0, arctan 2.0."""
        defaults = {"triangle": 1.0, "sigmoid": 4.0, "arctan": 2.0}
        if surrogate not in defaults:
            raise ValueError(f"Unknown surrogate {surrogate!r}; choose one of {SURROGATES}.")
        kwargs.setdefault("width", defaults[surrogate])
        return cls(surrogate=surrogate, **kwargs)


def lif_step(
    v: Array, x: Array, config: LIFConfig = LIFConfig()
) -> tuple[Array, tuple[Array, Array]]:
    """One LIF update. Returns ``(v_t, (s_t, u_t))``; all arrays share ``x``'s shape."""
    u = config.tau * v + x
    spike = heaviside(u - config.v_threshold, config.surrogate, config.width)
    return u * (1.0 - spike), (spike, u)


def lif(
    currents: Array,
    config: LIFConfig = LIFConfig(),
    *,
    return_membrane: bool = False,
) -> Array | tuple[Array, Array]:
    """Run LIF neurons over a time-major input current ``(T, ...)``.

    The membrane is carried in float32 whatever the input dtype; spikes come
    back in the input dtype. With ``return_membrane=True`` also returns the
    pre-reset membrane potential ``u_t`` (float32, same shape) for analysis.
    """
    if currents.ndim < 1:
        raise ValueError("lif expects a time-major array (T, ...); got a scalar.")
    # zeros_like keeps the input's sharding/varying-axis type, as scan under shard_map needs.
    v0 = jnp.zeros_like(currents[0], dtype=jnp.float32)
    step = functools.partial(lif_step, config=config)
    # Unrolled (T is small): XLA fuses the whole elementwise update and its backward
    # over all time steps instead of running a loop of dynamic slices; the same
    # arithmetic (bit-identical on CPU), about 7x faster forward+backward there.
    _, (spikes, membrane) = jax.lax.scan(step, v0, currents.astype(jnp.float32), unroll=True)
    spikes = spikes.astype(currents.dtype)
    return (spikes, membrane) if return_membrane else spikes
