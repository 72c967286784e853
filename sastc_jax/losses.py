"""Classification, logit-distillation and total training losses (docs/method.md §6).

Student logits are per time step ``(T, B, classes)``; the prediction is their
mean over T. Teacher logits are ``(B, classes)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
# The values of config.method; the calibrated ones are the Calibration module's methods.
METHODS = ("ce", "kd", "layerwise", "spatial", "sastc")
CALIBRATED_METHODS = ("layerwise", "spatial", "sastc")
# What the KD term distils (docs/method.md §7.2): the time-mean logits (the paper) or every step's.
KD_TARGETS = ("mean", "per_step")


class LossWeights(NamedTuple):
    """``L = gamma * CE + alpha_kd * KD + beta * L_calibration``; ``temperature`` is tau_kd;
    ``kd_target`` is one of :data:`KD_TARGETS` (see :func:`kd_loss`)."""

    gamma: float = 1.0
    alpha_kd: float = 1.0
    beta: float = 800.0
    temperature: float = 4.0
    kd_target: str = "mean"

    @classmethod
    def from_config(cls, loss_config: Mapping[str, Any]) -> LossWeights:
        """The weights of ``config.loss``; its other fields (the attention scale) are not
        weights and are ignored."""
        return cls(**{field: loss_config[field] for field in cls._fields if field in loss_config})


def cross_entropy(student_logits: Array, labels: Array) -> Array:
    """Batch-mean CE of the time-mean logits. ``(T, B, K)``, ``(B,)`` int -> scalar."""
    mean_logits = jnp.mean(student_logits.astype(jnp.float32), axis=0)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mean_logits, labels))


def kd_loss(
    student_logits: Array, teacher_logits: Array, temperature: float = 4.0, target: str = "mean"
) -> Array:
    """Logit distillation, ``student_logits`` ``(T, B, K)``, ``teacher_logits`` ``(B, K)``.

    - ``target='mean'`` (docs/method.md §6):
      ``tau^2 * mean_b KL(softmax(z_a/tau) || softmax(z_bar/tau))`` of the time-mean
      logits ``z_bar``;
    - ``target='per_step'`` (docs/method.md §7.2):
      ``tau^2 * (1/T) sum_t mean_b KL(softmax(z_a/tau) || softmax(z_t/tau))``, every time
      step distilled on its own.

    The two agree at T = 1.
    """
    if target not in KD_TARGETS:
        raise ValueError(f"Unknown KD target {target!r}; choose one of {KD_TARGETS}.")
    logits = student_logits.astype(jnp.float32)
    if target == "mean":
        logits = jnp.mean(logits, axis=0)  # (B, K)
    student_log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature, axis=-1
    )
    teacher_log_probs = jnp.broadcast_to(teacher_log_probs, student_log_probs.shape)
    kl = optax.losses.kl_divergence_with_log_targets(student_log_probs, teacher_log_probs)
    return temperature**2 * jnp.mean(kl)  # the mean over B (and over T for 'per_step')


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
    - ``kd``: ``+ alpha_kd * KD`` (needs ``teacher_logits``; ``weights.kd_target`` says
      which logits it distils, :func:`kd_loss`);
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
        parts["kd"] = kd_loss(
            student_logits, teacher_logits, weights.temperature, weights.kd_target
        )
        loss = loss + weights.alpha_kd * parts["kd"]
    if method in CALIBRATED_METHODS:
        if calibration is None:
            raise ValueError(f"Method {method!r} needs the calibration loss: pass calibration.")
        parts["calibration"] = calibration.astype(jnp.float32)
        loss = loss + weights.beta * parts["calibration"]
    parts["loss"] = loss
    return loss, parts
