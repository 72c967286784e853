"""The methods of the SASTC paper (docs/method.md §6, §8): CE alone, logit KD, and KD with a
feature calibration of each strategy (:mod:`sastc_jax.calibration`).

- ``ce``: ``gamma * CE``;
- ``kd``: ``+ alpha_kd * KD`` (``config.loss.kd_target`` says which logits it distils);
- ``layerwise`` / ``spatial`` / ``sastc``: ``+ beta * L_calibration`` with the
  calibration strategy of that name.
"""

from __future__ import annotations

from sastc_jax import calibration
from sastc_jax.methods.registry import Method, register_method
from sastc_jax.methods.terms import CALIBRATION_TERM, CROSS_ENTROPY, KD

register_method(Method("ce", (CROSS_ENTROPY,)))
register_method(Method("kd", (CROSS_ENTROPY, KD)))
for strategy in (calibration.LAYERWISE, calibration.SPATIAL, calibration.SASTC):
    register_method(
        Method(strategy.name, (CROSS_ENTROPY, KD, CALIBRATION_TERM), calibration=strategy)
    )
