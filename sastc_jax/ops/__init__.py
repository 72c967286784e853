"""The compute forms of convolution and rematerialisation, chosen once per run.

An :class:`Ops` value carries every backend-dependent choice the models and the
calibration make; they take it as a module field (``ops``) and never look at the
backend themselves. :func:`select` builds it:

- ``'xla'``: ``jax.lax.conv_general_dilated``, ``jax.checkpoint`` and
  ``flax.linen.remat``; nothing of :mod:`sastc_jax.ops.cpu` or
  :mod:`sastc_jax.ops.remat` runs;
- ``'cpu_matmul'``: the forms XLA's CPU backend runs faster (:mod:`sastc_jax.ops.cpu`:
  the matmul kernel gradient and the 1x1 convolution as a dot) and the rematerialisation
  its compiler keeps (:mod:`sastc_jax.ops.remat`), whatever the backend;
- ``'auto'``: ``'cpu_matmul'`` on the CPU backend, ``'xla'`` on any other.

The values agree to float32 summation order; only speed and memory differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax import lax

from sastc_jax.ops import cpu, remat

NAMES = ("auto", "xla", "cpu_matmul")


@dataclasses.dataclass(frozen=True)
class Ops:
    """The forms one run computes with (frozen and hashable: a Flax module field).

    Attributes:
      name: ``'xla'`` or ``'cpu_matmul'`` (what ``'auto'`` resolved to).
      conv_general_dilated: drop-in for ``jax.lax.conv_general_dilated``, for the
        ``conv_general_dilated`` field of ``flax.linen.Conv``.
      checkpoint: ``checkpoint(fun, binary_argnames=())`` -> ``fun(params, *args)``
        whose backward pass recomputes it (``binary_argnames``: arguments of ``fun``
        holding only 0/1 by construction, which the CPU form saves as int8).
      remat_module: ``remat_module(module_class, static_argnames=(),
        binary_argnames=())`` -> the class with ``__call__`` rematerialised; static
        arguments are passed positionally.
      after: ``after(tree, value)`` -> ``tree`` unchanged, computed after ``value``
        (orders one rematerialised block's backward pass after the next one's on the
        CPU; the identity under ``'xla'``).
    """

    name: str
    conv_general_dilated: Callable[..., jax.Array]
    checkpoint: Callable[..., Callable[..., Any]]
    remat_module: Callable[..., type[nn.Module]]
    after: Callable[[Any, Any], Any]


def _xla_checkpoint(
    fun: Callable[..., Any], binary_argnames: Sequence[str] = ()
) -> Callable[..., Any]:
    """``jax.checkpoint(fun)``; ``binary_argnames`` are checked and otherwise unused."""
    remat.argument_positions(fun, binary_argnames)
    return jax.checkpoint(fun)


def _xla_remat_module(
    module_class: type[nn.Module],
    static_argnames: Sequence[str] = (),
    binary_argnames: Sequence[str] = (),
) -> type[nn.Module]:
    """``flax.linen.remat`` with static arguments by name (``self`` counts as 0 there)."""
    remat.argument_positions(module_class.__call__, binary_argnames, skip=1)
    static = remat.argument_positions(module_class.__call__, static_argnames)
    return nn.remat(module_class, static_argnums=static)


def _unchanged(tree: Any, value: Any) -> Any:
    del value
    return tree


XLA = Ops("xla", lax.conv_general_dilated, _xla_checkpoint, _xla_remat_module, _unchanged)
CPU_MATMUL = Ops("cpu_matmul", cpu.MatmulConv(), remat.checkpoint, remat.remat, remat.after)


def check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`NAMES`."""
    if name not in NAMES:
        raise ValueError(f"Unknown ops {name!r}; allowed: {', '.join(NAMES)}.")


def select(name: str = "auto", backend: str | None = None) -> Ops:
    """The :class:`Ops` named ``name`` (one of :data:`NAMES`).

    ``backend`` decides ``'auto'`` (default: ``jax.default_backend()``, read once here);
    the other names ignore it.
    """
    check_name(name)
    if name == "auto":
        name = "cpu_matmul" if (backend or jax.default_backend()) == "cpu" else "xla"
    return CPU_MATMUL if name == "cpu_matmul" else XLA


def default() -> Ops:
    """``select('auto')``: the default ``ops`` field of every model and the calibration."""
    return select("auto")


__all__ = ["CPU_MATMUL", "NAMES", "XLA", "Ops", "check_name", "default", "select"]
