"""The training objective of a distillation method by name, and the loss terms.

Student logits are per time step ``(T, B, classes)``; the prediction is their mean over
T. Teacher logits are ``(B, classes)``. The methods and their terms are registered in
:mod:`sastc_jax.methods`; :data:`METHODS` and :data:`CALIBRATED_METHODS` are views of
that registry as the package registers it.
"""

from __future__ import annotations

import jax

from sastc_jax import methods
from sastc_jax.methods import LossWeights
from sastc_jax.methods.terms import KD_TARGETS, cross_entropy, kd_loss

Array = jax.Array
METHODS = methods.method_names()
CALIBRATED_METHODS = methods.calibrated_method_names()


def total_loss(
    method: str | methods.Method,
    student_logits: Array,
    labels: Array,
    *,
    teacher_logits: Array | None = None,
    calibration: Array | None = None,
    weights: LossWeights = methods.DEFAULT_WEIGHTS,
) -> tuple[Array, dict[str, Array]]:
    """The training objective of ``method`` (a registered name) and its parts.

    - ``ce``: ``gamma * CE``;
    - ``kd``: ``+ alpha_kd * KD`` (needs ``teacher_logits``; ``weights.kd_target`` says
      which logits it distils, :func:`kd_loss`);
    - ``layerwise`` / ``spatial`` / ``sastc``: ``+ beta * calibration`` (needs the
      calibration loss from :func:`sastc_jax.calibration.calibration_loss`);
    - any other registered method: its terms (:class:`sastc_jax.methods.Method`).

    Returns ``(loss, parts)``; ``parts`` has ``ce``, ``kd``, ``calibration`` (0 when
    unused), the method's other terms and ``loss``.
    """
    return methods.get_method(method).loss(
        student_logits,
        labels,
        teacher_logits=teacher_logits,
        calibration=calibration,
        weights=weights,
    )


__all__ = [
    "CALIBRATED_METHODS",
    "KD_TARGETS",
    "METHODS",
    "LossWeights",
    "cross_entropy",
    "kd_loss",
    "total_loss",
]
