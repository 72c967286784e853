"""The CPU form of rematerialisation: recompute a block once its output cotangent exists.

Contract:

- :func:`checkpoint`: ``checkpoint(fun)(params, *args)`` for a pure function; the
  backward pass recomputes ``fun`` instead of keeping its intermediates (only
  ``params`` and ``args`` are saved); values and gradients equal ``fun``'s;
- :func:`remat`: the same for a Flax linen module class (variables lifted like
  ``flax.linen.remat``; mutable collections such as ``batch_stats`` are returned);
- :func:`after`: a tree unchanged in value but computed after another value.

Their computations run inside ``jax.named_scope(NAMED_SCOPE)`` (``tests/test_ops.py``).

Arguments named in ``binary_argnames`` are saved as int8 (a quarter of float32) and
restored exactly, which is right only for values in {0, 1} (spikes): that cannot be
checked inside a traced computation, so callers name only arguments that are binary by
construction (LIF outputs) and the dtype is checked.

Why: ``jax.checkpoint`` guards its recomputation with optimisation barriers on the saved
inputs. XLA's CPU pipeline removes those barriers before common-subexpression
elimination and scheduling, so the recomputed forward pass is merged back into the
original one or scheduled right after it, and the activations stay alive until the
backward pass anyway: on a 2-core CPU ``jax.checkpoint`` of every ResNet-19 block gave
the same (or a larger) temporary buffer as no checkpointing at all, with more FLOPs.
Here the recomputation reads the parameters through ``params + 0 * cotangent_element``:
numerically the same parameters (for a finite cotangent), but a value XLA can neither
merge with the forward pass nor compute before the cotangent of the block's output
arrives. On other backends ``jax.checkpoint`` / ``flax.linen.remat`` do their job and
:func:`sastc_jax.ops.select` uses them instead. The forward pass runs twice, about a
third more FLOPs for a conv net.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift

# Every computation of these forms runs inside this named scope (jaxpr name stacks, HLO
# metadata), so a test can tell that they are, or are not, part of a computation.
NAMED_SCOPE = "cpu_remat"


def named(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function inside ``jax.named_scope(scope)``."""

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fun)
        def scoped(*args, **kwargs):
            with jax.named_scope(scope):
                return fun(*args, **kwargs)

        return scoped

    return decorate


def _is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)


def _zero_from(value: Any) -> jax.Array:
    """A float32 zero computed from one element of ``value`` (0.0 if it has no floats)."""
    floats = [leaf for leaf in jax.tree.leaves(value) if _is_float(leaf) and leaf.size]
    if not floats:
        return jnp.zeros((), jnp.float32)
    return 0.0 * floats[0].ravel()[0].astype(jnp.float32)


def _plus(tree: Any, zero: jax.Array) -> Any:
    return jax.tree.map(
        lambda leaf: leaf + zero.astype(leaf.dtype) if _is_float(leaf) else leaf, tree
    )


@named(NAMED_SCOPE)
def after(tree: Any, value: Any) -> Any:
    """``tree`` unchanged in value, but computed after ``value`` (through a zero read
    from it): XLA can neither merge it with ``tree`` nor schedule it before ``value``."""
    return _plus(tree, _zero_from(value))


def argument_positions(fun: Callable[..., Any], names: Sequence[str], skip: int = 0) -> tuple:
    """Positions of the parameters ``names`` in ``fun``'s signature, less ``skip``
    (the leading parameters not passed, e.g. ``self``); ``ValueError`` for an unknown name."""
    parameters = list(inspect.signature(fun).parameters)[skip:]
    unknown = [name for name in names if name not in parameters]
    if unknown:
        raise ValueError(
            f"{getattr(fun, '__qualname__', fun)} has no argument(s) {unknown}; "
            f"its arguments are {parameters}."
        )
    return tuple(parameters.index(name) for name in names)


def _check_binary_dtype(arg: Any, index: int) -> None:
    if not (hasattr(arg, "dtype") and (_is_float(arg) or arg.dtype == jnp.bool_)):
        raise TypeError(
            f"Binary argument {index} must be a float or bool spike array (values 0/1, saved "
            f"as int8); got {getattr(arg, 'dtype', type(arg).__name__)}."
        )


def checkpoint(fun: Callable[..., Any], binary_argnames: Sequence[str] = ()) -> Callable[..., Any]:
    """``fun(params, *args)`` whose backward pass recomputes ``fun`` instead of keeping
    its intermediates; only ``params`` and ``args`` are saved.

    ``params`` is the pytree the recomputation is tied to the cotangent through (the
    parameters: small, so the added zero costs nothing). ``binary_argnames`` name
    arguments of ``fun`` (not ``params``) that hold only 0 and 1 by construction
    (spikes): they are saved as int8 and restored exactly. Non-array arguments are not
    allowed; bind them with ``functools.partial``.
    """
    positions = argument_positions(fun, binary_argnames)
    if 0 in positions:
        raise ValueError("params (the first argument) cannot be binary.")
    return _checkpoint(fun, tuple(p - 1 for p in positions))


def _checkpoint(fun: Callable[..., Any], binary_argnums: Sequence[int]) -> Callable[..., Any]:
    """:func:`checkpoint` with binary arguments given by their index in ``args``."""

    @jax.custom_vjp
    def rematted(params, *args):
        return fun(params, *args)

    @named(NAMED_SCOPE)
    def forward(params, *args):
        # A binary argument is saved as (int8 values, an empty array of its dtype).
        saved = []
        for i, arg in enumerate(args):
            if i in binary_argnums:
                _check_binary_dtype(arg, i)
                saved.append((arg.astype(jnp.int8), jnp.zeros((0,), arg.dtype)))
            else:
                saved.append(arg)
        return fun(params, *args), (params, tuple(saved))

    @named(NAMED_SCOPE)
    def _remat_backward(saved, cotangent):
        params, args = saved
        zero = _zero_from(cotangent)
        # Restored after the cotangent exists, or XLA converts them back right away.
        args = [
            arg[0].astype(arg[1].dtype) + zero.astype(arg[1].dtype) if i in binary_argnums else arg
            for i, arg in enumerate(args)
        ]
        _, vjp = jax.vjp(fun, _plus(params, zero), *args)
        return vjp(cotangent)

    rematted.defvjp(forward, _remat_backward)
    return rematted


def _lifted_checkpoint(
    scope_fn_body: Callable[..., Any], static_argnums: Sequence[int], binary_argnums: Sequence[int]
):
    """``flax.core.lift`` transform: :func:`checkpoint` over a scope function."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        static = {i: args[i] for i in static_argnums}
        dynamic = [i for i in range(len(args)) if i not in static]
        # checkpoint's args are (rng_groups, *dynamic arguments).
        binary = tuple(1 + dynamic.index(i) for i in binary_argnums)

        def pure(variable_groups, rng_groups, *dynamic_args):
            values = iter(dynamic_args)
            call_args = [static[i] if i in static else next(values) for i in range(len(args))]
            scope = scope_fn(variable_groups, rng_groups)
            return scope_fn_body(scope, *call_args), repack_fn(scope)

        rematted = _checkpoint(pure, binary)
        return rematted(variable_groups, rng_groups, *[args[i] for i in dynamic])

    return lift.pack(inner, (True,), (True,), (True,), name="remat")


def remat(
    module_class: type[nn.Module],
    static_argnames: Sequence[str] = (),
    binary_argnames: Sequence[str] = (),
) -> type[nn.Module]:
    """``module_class`` whose ``__call__`` is rematerialised as :func:`checkpoint`.

    ``static_argnames``: hashable Python arguments of ``__call__`` (e.g. ``train``),
    closed over instead of traced; they must be passed positionally.
    ``binary_argnames``: array arguments holding only 0 and 1 by construction (spikes),
    saved as int8 for the backward pass.
    """
    static = argument_positions(module_class.__call__, static_argnames, skip=1)
    binary = argument_positions(module_class.__call__, binary_argnames, skip=1)
    return nn.transforms.lift_transform(
        lambda fn: _lifted_checkpoint(fn, static, binary), module_class
    )
