"""Classification, logit-distillation and total training losses (SPEC §3.6).

Student logits are per time step ``(T, B, classes)``; the prediction is their
mean over T. Teacher logits are ``(B, classes)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
METHODS = ("ce", "kd", "layerwise", "spatial", "sastc")
CALIBRATED_METHODS = ("layerwise", "spatial", "sastc")


class LossWeights(NamedTuple):
    """``L = gamma * CE + alpha_kd * KD + beta * L_calibration``; ``temperature`` is tau_kd."""

    gamma: float = 1.0
    alpha_kd: float = 1.0
    beta: float = 800.0
    temperature: float = 4.0


def cross_entropy(student_logits: Array, labels: Array) -> Array:
    """Batch-mean CE of the time-mean logits. ``(T, B, K)``, ``(B,)`` int -> scalar."""
    mean_logits = jnp.mean(student_logits.astype(jnp.float32), axis=0)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mean_logits, labels))


def kd_loss(student_logits: Array, teacher_logits: Array, temperature: float = 4.0) -> Array:
    """``tau^2 * mean_b KL(softmax(z_a / tau) || softmax(z_bar / tau))``.

    ``student_logits`` ``(T, B, K)`` (averaged over T here), ``teacher_logits`` ``(B, K)``.
    """
    mean_logits = jnp.mean(student_logits.astype(jnp.float32), axis=0)
    student_log_probs = jax.nn.log_softmax(mean_logits / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1
    )
    kl = optax.losses.kl_divergence_with_log_targets(student_log_probs, teacher_log_probs)
    return temperature**2 * jnp.mean(kl)


def total_loss(
    method: str,
    student_logits: Array,
    labels: Array,
    *,
    teacher_logits: Array | None = None,
    calibration: Array | None = None,
    weights: LossWeights = LossWeights(),
) -> tuple[Array, dict[str, Array]]:
    """The training objective of ``method`` and its parts.

    - ``ce``: ``gamma * CE``;
    - ``kd``: ``+ alpha_kd * KD`` (needs ``teacher_logits``);
    - ``layerwise`` / ``spatial`` / ``sastc``: ``+ beta * calibration`` (needs the
      calibration loss from :func:`sastc_jax.calibration.calibration_loss`).

    Returns ``(loss, parts)``; ``parts`` has ``ce``, ``kd``, ``calibration`` (0 when
    unused) and ``loss``.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    zero = jnp.zeros((), jnp.float32)
    parts = {"ce": cross_entropy(student_logits, labels), "kd": zero, "calibration": zero}
    loss = weights.gamma * parts["ce"]
    if method != "ce":
        if teacher_logits is None:
            raise ValueError(f"Method {method!r} distils from a teacher: pass teacher_logits.")
        parts["kd"] = kd_loss(student_logits, teacher_logits, weights.temperature)
        loss = loss + weights.alpha_kd * parts["kd"]
    if method in CALIBRATED_METHODS:
        if calibration is None:
            raise ValueError(f"Method {method!r} needs the calibration loss: pass calibration.")
        parts["calibration"] = calibration.astype(jnp.float32)
        loss = loss + weights.beta * parts["calibration"]
    parts["loss"] = loss
    return loss, parts
