"""Temporally decoupled logit distillation (Yu et al., ICML 2025, arXiv 2501.15925).

With the student's logits ``z_t`` at every time step t = 1..T, the teacher's ``z_a``,
the label y and the temperature tau (every term a mean over the batch):

    L = gamma * (1/T) sum_t CE(z_t, y)
      + alpha * tau^2 * (1/T) sum_t KL(softmax(z_a / tau) || softmax(z_t / tau))
      + beta_self * tau^2 * (1/T) sum_t KL(softmax(e / tau) || softmax(z_t / tau))

where the ensemble target ``e`` of a sample (no gradient flows through it) is the mean of
its ``z_t`` over the time steps whose argmax is y, and the zero vector when none is.
Methods:

- ``tdkd``: the three terms above, parts ``ce``, ``kd`` and ``self_distill``;
- ``sastc_tdkd``: the same plus ``beta * L_sastc``, the SASTC calibration
  (``config.loss.beta``).

Its own weights are ``config.loss.tdkd`` (:class:`TDKDWeights`; the defaults are the
authors' CIFAR settings); ``gamma`` is the shared one (1 by default).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sastc_jax import calibration
from sastc_jax.methods.registry import (
    TEACHER_LOGITS,
    LossWeights,
    Method,
    Term,
    TermInputs,
    WeightSection,
    register_method,
)
from sastc_jax.methods.terms import CALIBRATION_TERM, cross_entropy, distillation_loss, kd_loss

Array = jax.Array


class TDKDWeights(NamedTuple):
    """``config.loss.tdkd``: ``alpha`` (the teacher KD term), ``beta_self`` (the
    self-distillation term) and the temperature tau of both."""

    alpha: float = 0.2
    beta_self: float = 0.5
    temperature: float = 3.0


WEIGHTS = WeightSection("tdkd", TDKDWeights)


def ensemble_target(student_logits: Array, labels: Array) -> Array:
    """``(T, B, K)``, ``(B,)`` -> ``(B, K)``: per sample, the mean of the logits over the
    time steps whose argmax is the label; zeros when no step is right. No gradient."""
    logits = jax.lax.stop_gradient(student_logits.astype(jnp.float32))
    right = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)  # (T, B)
    total = jnp.einsum("tb,tbk->bk", right, logits)
    return total / jnp.maximum(jnp.sum(right, axis=0), 1.0)[:, None]


def self_distillation_loss(student_logits: Array, labels: Array, temperature: float) -> Array:
    """``tau^2 * (1/T) sum_t mean_b KL(softmax(e/tau) || softmax(z_t/tau))`` towards the
    :func:`ensemble_target` ``e``."""
    target = ensemble_target(student_logits, labels)
    return distillation_loss(student_logits.astype(jnp.float32), target, temperature)


def _cross_entropy_per_step(inputs: TermInputs, weights: LossWeights) -> Array:
    return cross_entropy(inputs.logits, inputs.labels, "per_step")


def _kd_per_step(inputs: TermInputs, weights: LossWeights) -> Array:
    own = WEIGHTS.read(weights)
    return kd_loss(inputs.logits, inputs.teacher_logits, own.temperature, "per_step")


def _self_distillation(inputs: TermInputs, weights: LossWeights) -> Array:
    return self_distillation_loss(inputs.logits, inputs.labels, WEIGHTS.read(weights).temperature)


TERMS = (
    Term("ce", _cross_entropy_per_step, lambda weights: weights.gamma),
    Term(
        "kd",
        _kd_per_step,
        lambda weights: WEIGHTS.read(weights).alpha,
        frozenset({TEACHER_LOGITS}),
    ),
    Term("self_distill", _self_distillation, lambda weights: WEIGHTS.read(weights).beta_self),
)

register_method(Method("tdkd", TERMS, own_weights=WEIGHTS))
register_method(
    Method(
        "sastc_tdkd",
        (*TERMS, CALIBRATION_TERM),
        calibration=calibration.SASTC,
        own_weights=WEIGHTS,
    )
)
