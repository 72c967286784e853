"""Rematerialisation that XLA's CPU compiler keeps: recompute once the cotangent exists.

``jax.checkpoint`` guards its recomputation with optimisation barriers on the saved
inputs. XLA's CPU pipeline removes those barriers before common-subexpression
elimination and scheduling, so the recomputed forward pass is merged back into the
original one or scheduled right after it, and the activations stay alive until the
backward pass anyway: on a 2-core CPU ``jax.checkpoint`` of every ResNet-19 block gave
the same (or a larger) temporary buffer as no checkpointing at all, with more FLOPs.

Here the recomputation reads the parameters through ``params + 0 * cotangent_element``:
numerically the same parameters (for a finite cotangent), but a value XLA can neither
merge with the forward pass (it is a different expression) nor compute before the
cotangent of the block's output arrives. So only the inputs are kept, and each block's
activations exist once in the forward pass and once, briefly, in its backward pass.

- :func:`checkpoint`: ``checkpoint(fun)(params, *args)`` for a pure function;
- :func:`remat`: the same for a Flax linen module class (variables lifted like
  ``flax.linen.remat``; mutable collections such as ``batch_stats`` are returned).

The gradients equal the plain ones (``tests/test_remat.py``). The forward pass runs
twice, about a third more FLOPs for a conv net.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import lift


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


def after(tree: Any, value: Any) -> Any:
    """``tree`` unchanged in value, but computed after ``value`` (through a zero read
    from it): XLA can neither merge it with ``tree`` nor schedule it before ``value``."""
    return _plus(tree, _zero_from(value))


def checkpoint(fun: Callable[..., Any], binary_argnums: Sequence[int] = ()) -> Callable[..., Any]:
    """``fun(params, *args)`` whose backward pass recomputes ``fun`` instead of keeping
    its intermediates; only ``params`` and ``args`` are saved.

    ``params`` is the pytree the recomputation is tied to the cotangent through (the
    parameters: small, so the added zero costs nothing). ``binary_argnums`` index
    ``args`` that hold only 0 and 1 (spikes): they are saved as int8, a quarter of
    float32, and restored exactly. Non-array arguments are not allowed; bind them with
    ``functools.partial``.
    """

    @jax.custom_vjp
    def rematted(params, *args):
        return fun(params, *args)

    def forward(params, *args):
        # A binary argument is saved as (int8 values, an empty array of its dtype).
        saved = tuple(
            (arg.astype(jnp.int8), jnp.zeros((0,), arg.dtype)) if i in binary_argnums else arg
            for i, arg in enumerate(args)
        )
        return fun(params, *args), (params, saved)

    def backward(saved, cotangent):
        params, args = saved
        zero = _zero_from(cotangent)
        # Restored after the cotangent exists, or XLA converts them back right away.
        args = [
            arg[0].astype(arg[1].dtype) + zero.astype(arg[1].dtype) if i in binary_argnums else arg
            for i, arg in enumerate(args)
        ]
        _, vjp = jax.vjp(fun, _plus(params, zero), *args)
        return vjp(cotangent)

    rematted.defvjp(forward, backward)
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

        rematted = checkpoint(pure, binary_argnums=binary)
        return rematted(variable_groups, rng_groups, *[args[i] for i in dynamic])

    return lift.pack(inner, (True,), (True,), (True,), name="remat")


def remat(
    module_class: type[nn.Module],
    static_argnums: Sequence[int] = (),
    binary_argnums: Sequence[int] = (),
) -> type[nn.Module]:
    """``module_class`` whose ``__call__`` is rematerialised as :func:`checkpoint`.

    Argument numbers count ``self`` as 0, as in ``flax.linen.remat``.
    ``static_argnums``: hashable Python arguments (e.g. ``train``), closed over instead
    of traced. ``binary_argnums``: array arguments holding only 0 and 1 (spikes), saved
    as int8 for the backward pass.
    """
    static = tuple(i - 1 for i in static_argnums)
    binary = tuple(i - 1 for i in binary_argnums)
    return nn.transforms.lift_transform(
        lambda fn: _lifted_checkpoint(fn, static, binary), module_class
    )
