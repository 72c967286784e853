"""Leaky integrate-and-fire (LIF) dynamics as pure functions (docs/method.md §2).

Per neuron, for t = 1..T with v_0 = 0::

    u_t = tau * v_{t-1} + x_t        leak, then integrate the input current
    s_t = H(u_t - v_th)              spike where u_t > v_th
    v_t = u_t * (1 - s_t)            hard reset to 0 (the reset is NOT detached)

``tau`` is a decay factor in [0, 1], not a time constant. The Heaviside step has
a surrogate derivative for the backward pass, defined with ``jax.custom_jvp`` so
forward- and reverse-mode autodiff both use it.

Inputs are time-major ``(T, ...)``. :func:`lif` is one ``jax.custom_jvp`` over
the whole sequence: the forward is a loop over T that keeps the pre-reset
membrane ``u_t`` (float32, written over the currents' own buffer; ``v_t`` follows
from it) and writes the spikes ``s_t`` as it goes, and the tangent is a second
scan, linear in the input tangent, that applies the surrogate chain step by step
(recomputing ``s_t`` and ``g(u_t - v_th)`` from ``u_t``). Forward mode runs that
scan. Reverse mode saves ``u_t`` alone, one float32 per neuron-step, and runs a reverse loop:

- short sequences (T <= ``FULL_UNROLL_MAX_T``) are unrolled, so that XLA fuses the
  update with its neighbours, and reverse mode is JAX's transpose of the tangent
  scan (under ``jax.checkpoint``, so that it saves ``u_t`` only);
- longer ones run as loops, whose compile time does not grow with T. There the
  tangent map is the primitive ``lif_tangent`` with its own transpose,
  :func:`_cotangent_loop`, which writes each step's cotangent over ``u_t`` in the
  membrane's buffer: no second ``(T, ...)`` array and no zero fill (JAX's transpose
  of a scan writes into a new, zeroed one). Its JVP, vmap and lowering rules let it
  compose with every JAX transformation, ``shard_map`` included.

A constant ``bias`` current (a dense layer's bias) can be added inside the forward
loop, so that ``y + b`` is never stored as an array of its own. The arithmetic per
step is :func:`lif_step`'s and that of its autodiff, so spikes are bit-identical
to a scan of it and the derivatives agree with its autodiff (the tests assert
1e-6). docs/performance.md has the measurements. Layers live in
:mod:`sastc_jax.models.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.extend
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

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


# Up to this many steps the scans are unrolled (XLA fuses across the steps); beyond it the
# loop is faster. The timings that set it: docs/performance.md, "LIF unrolling threshold".
FULL_UNROLL_MAX_T = 8


def _membrane_and_spikes(
    currents: Array, bias: Array | None, config: LIFConfig
) -> tuple[Array, Array]:
    """The pre-reset membrane ``u_t`` and the spikes ``s_t`` of every step: two
    ``(T, ...)`` float32 arrays from float32 currents.

    ``bias`` (or None) is added to every step's input inside the loop: ``x_t + bias``.
    """

    # The carry is u_{t-1}: v_{t-1} is recomputed from it, so each step writes one array
    # (u_t is both the carry and the output), which XLA's CPU loop handles without a copy
    # of the carry per step.
    def step(u_prev, x_t):
        v_prev = u_prev * (1.0 - _spike(u_prev, config))
        u = config.tau * v_prev + (x_t if bias is None else x_t + bias)
        return u, u

    # zeros_like keeps the input's sharding/varying-axis type, as scan under shard_map needs.
    u_init = jnp.zeros_like(currents[0])
    if currents.shape[0] <= FULL_UNROLL_MAX_T:
        membrane = jax.lax.scan(step, u_init, currents, unroll=True)[1]
        return membrane, _spike(membrane, config)

    # The loop writes u_t over x_t in the currents' own buffer (read and written at the
    # same index, so XLA updates it in place), and s_t into a buffer of its own. With the
    # spikes computed after the loop from u_t, the membrane would have a second reader
    # besides the backward loop that writes over it, and XLA would copy it whole.
    def write_step(t, carry):
        u_prev, buffer, spikes = carry
        u, _ = step(u_prev, jax.lax.dynamic_index_in_dim(buffer, t, keepdims=False))
        spikes = jax.lax.dynamic_update_index_in_dim(spikes, _spike(u, config), t, 0)
        return u, jax.lax.dynamic_update_index_in_dim(buffer, u, t, 0), spikes

    carry = (u_init, currents, jnp.zeros_like(currents))
    return jax.lax.fori_loop(0, currents.shape[0], write_step, carry)[1:]


def _spike(u: Array, config: LIFConfig) -> Array:
    """``s = H(u - v_th)``, the primal of :func:`heaviside` (no derivative)."""
    return (u - config.v_threshold > 0).astype(u.dtype)


def _tangent_scan(
    membrane: Array,
    currents_dot: Array,
    bias_dot: Array | None,
    config: LIFConfig,
    with_membrane: bool,
):
    """Tangents ``(s_dot, u_dot)`` of the sequence, linear in ``currents_dot`` and ``bias_dot``.

    Per step, the forward-mode derivative of :func:`lif_step` term by term:
    ``u_dot = tau v_dot + x_dot``, ``s_dot = g(u - v_th) u_dot``,
    ``v_dot = u_dot (1 - s) + u (-s_dot)`` (the reset is not detached), where
    ``x_dot = currents_dot[t] + bias_dot``.
    """

    # The carry is tau * v_dot, so the previous step and x_dot enter only through their sum
    # u_dot: in JAX's transpose of this scan the cotangent carried back and the cotangent of
    # x_dot are then one value, and the reverse loop writes one array per step. bias_dot is
    # a constant of the loop, so its cotangent is summed in the reverse loop's carry.
    # Checkpointed so that reverse mode saves u_t alone and recomputes s_t and g(u_t - v_th)
    # inside the reverse loop, instead of saving them as two more arrays.
    @jax.checkpoint
    def step(decayed_v_dot, u, x_dot):
        u_dot = decayed_v_dot + (x_dot if bias_dot is None else x_dot + bias_dot)
        slope = surrogate_gradient(config.surrogate, config.width, u - config.v_threshold)
        spike_dot = slope * u_dot
        v_dot = u_dot * (1.0 - _spike(u, config)) + u * (-spike_dot)
        return config.tau * v_dot, ((spike_dot, u_dot) if with_membrane else (spike_dot,))

    carry_init = jnp.zeros_like(currents_dot[0])
    unroll = membrane.shape[0] <= FULL_UNROLL_MAX_T
    _, outs = jax.lax.scan(
        lambda carry, xs: step(carry, *xs), carry_init, (membrane, currents_dot), unroll=unroll
    )
    return outs


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _lif_sequence(
    inputs: tuple[Array] | tuple[Array, Array], config: LIFConfig, with_membrane: bool
) -> tuple[Array, ...]:
    """float32 ``(currents,)`` or ``(currents, bias)`` -> ``(spikes,)`` or ``(spikes, membrane)``.

    ``currents`` is ``(T, ...)``; ``bias`` is broadcast against one step, ``(...)``.
    """
    return _outputs(*_membrane_and_spikes(*_currents_and_bias(inputs), config), with_membrane)


def _currents_and_bias(inputs: tuple[Array] | tuple[Array, Array]) -> tuple[Array, Array | None]:
    return (inputs[0], inputs[1]) if len(inputs) == 2 else (inputs[0], None)


def _outputs(membrane: Array, spikes: Array, with_membrane: bool) -> tuple[Array, ...]:
    return (spikes, membrane) if with_membrane else (spikes,)


@_lif_sequence.defjvp
def _lif_sequence_jvp(config, with_membrane, primals, tangents):
    (inputs,), (inputs_dot,) = primals, tangents
    membrane, spikes = _membrane_and_spikes(*_currents_and_bias(inputs), config)
    out = _outputs(membrane, spikes, with_membrane)
    currents_dot, bias_dot = _currents_and_bias(inputs_dot)
    if membrane.shape[0] <= FULL_UNROLL_MAX_T:
        return out, _tangent_scan(membrane, currents_dot, bias_dot, config, with_membrane)
    # The loop form: reverse mode runs _cotangent_loop, through _lif_tangent_p's transpose.
    # The bias tangent is added first; its cotangent is then one sum of the currents'.
    if bias_dot is not None:
        currents_dot = currents_dot + bias_dot
    tangents_out = _lif_tangent_p.bind(
        membrane, currents_dot, config=config, with_membrane=with_membrane
    )
    return out, tuple(tangents_out)


# ------------------------------------------------- the loop form's tangent as a primitive
#
# JAX's transpose of the tangent scan writes the currents' cotangent into a new, zero-filled
# (T, ...) buffer, while the membrane it reads is dead once read. _lif_tangent_p is that
# tangent map (membrane, currents_dot) -> (spikes_dot[, membrane_dot]) with its own
# transpose, _cotangent_loop, which writes each step's cotangent over the membrane's buffer:
# the backward pass then holds one float32 per neuron-step and no zero fill. It is linear in
# currents_dot; its JVP, batching and lowering rules make it compose like any JAX op (the
# lowering and the JVP in the membrane are those of _tangent_scan).


def _tangent_map(membrane: Array, currents_dot: Array, *, config: LIFConfig, with_membrane: bool):
    return list(_tangent_scan(membrane, currents_dot, None, config, with_membrane))


def _cotangent_loop(
    membrane: Array, spikes_bar: Array, membrane_bar: Array | None, config: LIFConfig
) -> Array:
    """The transpose of :func:`_tangent_scan` in ``currents_dot`` (no bias): its cotangent.

    A reverse loop over t; per step, with ``later_bar`` the cotangent of ``u_dot`` at t + 1::

        v_bar = tau * later_bar
        s_bar = spikes_bar[t] - u_t * v_bar                 (through the reset)
        u_bar = v_bar * (1 - s_t) + g(u_t - v_th) * s_bar (+ membrane_bar[t])

    ``u_bar`` is the cotangent of ``currents_dot[t]``, written over ``u_t`` in
    ``membrane``'s buffer (read and written at one index, so XLA updates it in place).
    """

    # The carry is u_bar itself, not tau * u_bar: with the scaled value carried, XLA fuses
    # the step's arithmetic into each of its consumers, each reading the buffer at t, and
    # then copies the whole buffer every step (docs/performance.md, "The LIF layer").
    def step(index, carry):
        later_bar, buffer = carry
        t = membrane.shape[0] - 1 - index
        u = jax.lax.dynamic_index_in_dim(buffer, t, keepdims=False)
        v_bar = config.tau * later_bar
        s_bar = jax.lax.dynamic_index_in_dim(spikes_bar, t, keepdims=False) - u * v_bar
        slope = surrogate_gradient(config.surrogate, config.width, u - config.v_threshold)
        u_bar = v_bar * (1.0 - _spike(u, config)) + slope * s_bar
        if membrane_bar is not None:
            u_bar = u_bar + jax.lax.dynamic_index_in_dim(membrane_bar, t, keepdims=False)
        return u_bar, jax.lax.dynamic_update_index_in_dim(buffer, u_bar, t, 0)

    carry_init = (jnp.zeros_like(membrane[0]), membrane)
    return jax.lax.fori_loop(0, membrane.shape[0], step, carry_init)[1]


def _lif_tangent_abstract_eval(membrane, currents_dot, *, config, with_membrane):
    # The outputs are typed as currents_dot, the float32 tangent of the currents that made
    # the membrane: the same shape and, under shard_map, the same varying manual axes.
    del membrane, config
    return [currents_dot] * (2 if with_membrane else 1)


def _lif_tangent_transpose(cotangents, membrane, currents_dot, *, config, with_membrane):
    if ad.is_undefined_primal(membrane):
        raise ValueError("lif's tangent map is linear in the currents' tangent only.")
    spikes_bar = ad.instantiate_zeros(cotangents[0])
    membrane_bar = None
    if with_membrane and type(cotangents[1]) is not ad.Zero:
        membrane_bar = cotangents[1]
    return [None, _cotangent_loop(membrane, spikes_bar, membrane_bar, config)]


def _lif_tangent_jvp(primals, tangents, *, config, with_membrane):
    """Linear in ``currents_dot``; the derivative in the membrane is _tangent_scan's."""
    membrane, currents_dot = primals
    membrane_dot, currents_dot_dot = tangents
    params = {"config": config, "with_membrane": with_membrane}
    out = _lif_tangent_p.bind(membrane, currents_dot, **params)
    out_dot = _lif_tangent_p.bind(membrane, ad.instantiate_zeros(currents_dot_dot), **params)
    if type(membrane_dot) is not ad.Zero:
        _, through_membrane = jax.jvp(
            lambda m: _tangent_map(m, currents_dot, **params), (membrane,), (membrane_dot,)
        )
        out_dot = [a + b for a, b in zip(out_dot, through_membrane, strict=True)]
    return out, out_dot


def _lif_tangent_batch(args, dims, *, config, with_membrane):
    """vmap: the mapped axis goes right after time, where the loop treats it as a neuron."""
    size = next(arg.shape[dim] for arg, dim in zip(args, dims, strict=True) if dim is not None)

    def time_then_mapped(arg, dim):
        if dim is None:
            return jnp.broadcast_to(arg[:, None], (arg.shape[0], size, *arg.shape[1:]))
        return jnp.moveaxis(arg, dim, 1)

    membrane, currents_dot = map(time_then_mapped, args, dims)
    out = _lif_tangent_p.bind(membrane, currents_dot, config=config, with_membrane=with_membrane)
    return out, [1] * len(out)


_lif_tangent_p = jax.extend.core.Primitive("lif_tangent")
_lif_tangent_p.multiple_results = True
_lif_tangent_p.def_impl(_tangent_map)
_lif_tangent_p.def_abstract_eval(_lif_tangent_abstract_eval)
mlir.register_lowering(_lif_tangent_p, mlir.lower_fun(_tangent_map, multiple_results=True))
ad.primitive_jvps[_lif_tangent_p] = _lif_tangent_jvp
ad.primitive_transposes[_lif_tangent_p] = _lif_tangent_transpose
batching.primitive_batchers[_lif_tangent_p] = _lif_tangent_batch


def lif(
    currents: Array,
    config: LIFConfig = LIFConfig(),
    *,
    bias: Array | None = None,
    return_membrane: bool = False,
) -> Array | tuple[Array, Array]:
    """Run LIF neurons over a time-major input current ``(T, ...)``.

    The membrane is carried in float32 whatever the input dtype; spikes come
    back in the input dtype. With ``return_membrane=True`` also returns the
    pre-reset membrane potential ``u_t`` (float32, same shape) for analysis.
    Equal to scanning :func:`lif_step` over T (spikes bit for bit, derivatives
    to rounding), with a sequence-level derivative; see the module docstring.

    ``bias`` (a constant current, broadcastable to one step ``currents.shape[1:]``,
    e.g. a dense layer's bias) is added to every step: ``lif(y, bias=b)`` equals
    ``lif(y + b)``, dtype included. Where ``y + b`` is float32 the addition happens
    inside the loop, so that it is never stored as a ``(T, ...)`` array of its own;
    otherwise (bfloat16 compute) ``y + b`` is formed first.
    """
    if currents.ndim < 1:
        raise ValueError("lif expects a time-major array (T, ...); got a scalar.")
    if bias is not None:
        step_shape = currents.shape[1:]
        try:
            fits = jnp.broadcast_shapes(jnp.shape(bias), step_shape) == step_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"lif's bias must broadcast to one step's shape {step_shape}; "
                f"got shape {jnp.shape(bias)}."
            )
        if jnp.result_type(currents, bias) != jnp.float32:
            return lif(currents + bias, config, return_membrane=return_membrane)
    inputs = (currents.astype(jnp.float32),)
    if bias is not None:
        inputs += (jnp.asarray(bias, jnp.float32),)
    outs = _lif_sequence(inputs, config, return_membrane)
    spikes = outs[0].astype(currents.dtype if bias is None else jnp.float32)
    return (spikes, outs[1]) if return_membrane else spikes
