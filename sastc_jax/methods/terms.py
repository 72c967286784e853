"""The loss terms methods are made of: pure functions of the student's per-step logits
``(T, B, K)``, the labels ``(B,)`` and the teacher's logits ``(B, K)`` (docs/method.md §6, §7.2),
and the weighted :class:`~sastc_jax.methods.registry.Term` s of the shared weights.

The prediction is the mean of the logits over T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sastc_jax.methods.registry import CALIBRATION, TEACHER_LOGITS, LossWeights, Term, TermInputs

Array = jax.Array
# Which logits a term reads: the time-mean ones (the prediction) or every step's.
TARGETS = ("mean", "per_step")
KD_TARGETS = TARGETS


def _check_target(kind: str, target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"Unknown {kind} target {target!r}; choose one of {TARGETS}.")


def cross_entropy(student_logits: Array, labels: Array, target: str = "mean") -> Array:
    """Batch-mean CE. ``(T, B, K)``, ``(B,)`` int -> scalar.

    - ``target='mean'``: of the time-mean logits;
    - ``target='per_step'``: ``(1/T) sum_t CE(z_t, y)``, every time step classified.
    """
    _check_target("cross-entropy", target)
    logits = student_logits.astype(jnp.float32)
    if target == "mean":
        mean_logits = jnp.mean(logits, axis=0)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mean_logits, labels))
    labels = jnp.broadcast_to(labels, logits.shape[:-1])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def kd_loss(
    student_logits: Array, teacher_logits: Array, temperature: float = 4.0, target: str = "mean"
) -> Array:
    """Logit distillation, ``student_logits`` ``(T, B, K)``, ``teacher_logits`` ``(B, K)``.

    - ``target='mean'`` (docs/method.md §6):
      ``tau^2 * mean_b KL(softmax(z_a/tau) || softmax(z_bar/tau))``
      of the time-mean logits ``z_bar``;
    - ``target='per_step'`` (docs/method.md §7.2):
      ``tau^2 * (1/T) sum_t mean_b KL(softmax(z_a/tau) || softmax(z_t/tau))``, every time
      step distilled on its own.

    The two agree at T = 1. No gradient reaches the teacher's logits.
    """
    _check_target("KD", target)
    logits = student_logits.astype(jnp.float32)
    if target == "mean":
        logits = jnp.mean(logits, axis=0)  # (B, K)
    return distillation_loss(logits, jax.lax.stop_gradient(teacher_logits), temperature)


def distillation_loss(student_logits: Array, target_logits: Array, temperature: float) -> Array:
    """``tau^2 * mean KL(softmax(target/tau) || softmax(student/tau))`` over every axis but
    the classes; ``target_logits`` broadcasts against ``student_logits``."""
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    target_log_probs = jax.nn.log_softmax(target_logits.astype(jnp.float32) / temperature, axis=-1)
    target_log_probs = jnp.broadcast_to(target_log_probs, student_log_probs.shape)
    kl = optax.losses.kl_divergence_with_log_targets(student_log_probs, target_log_probs)
    return temperature**2 * jnp.mean(kl)


# --------------------------------------------------------------------------- weighted terms


def _cross_entropy(inputs: TermInputs, weights: LossWeights) -> Array:
    return cross_entropy(inputs.logits, inputs.labels)


def _kd(inputs: TermInputs, weights: LossWeights) -> Array:
    return kd_loss(inputs.logits, inputs.teacher_logits, weights.temperature, weights.kd_target)


def _calibration(inputs: TermInputs, weights: LossWeights) -> Array:
    return inputs.calibration.astype(jnp.float32)


# gamma * CE of the time-mean logits.
CROSS_ENTROPY = Term("ce", _cross_entropy, lambda weights: weights.gamma)
# alpha_kd * KD at temperature tau_kd on the logits of kd_target.
KD = Term("kd", _kd, lambda weights: weights.alpha_kd, frozenset({TEACHER_LOGITS}))
# beta * the calibration loss (the method's calibration strategy computes it).
CALIBRATION_TERM = Term(
    "calibration", _calibration, lambda weights: weights.beta, frozenset({CALIBRATION})
)
