"""The training guards: a non-finite loss, a parameter norm that blows up, a calibration
term that dwarfs cross-entropy. Each stops (or warns) with the step, the loss parts and
what to change; the last verified checkpoint is kept."""

from __future__ import annotations

import jax
import numpy as np
import optax

from sastc_jax import losses

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf in training; the last verified checkpoint is kept."""


class ParameterNormGrowthError(NonFiniteLossError):
    """The parameter norm grew past ``config.guards.max_param_norm_growth`` within one
    logging interval; the last verified checkpoint is kept."""


@jax.jit
def global_norm(params) -> Array:
    return optax.global_norm(params)


def check_finite(step: int, parts: dict[str, float], last_checkpoint: int | None) -> None:
    """Raise NonFiniteLossError (divergence) unless every loss part is finite.

    ``last_checkpoint``: the newest checkpoint step verified intact (restored after
    verification, or checksummed once written), not merely the last one saved. A
    restored state is checked finite by the checkpoints themselves, so divergence here
    is the training's own.
    """
    if not all(np.isfinite(value) for value in parts.values()):
        described = ", ".join(f"{name}={value:.6g}" for name, value in parts.items())
        kept = (
            f"the last verified checkpoint (step {last_checkpoint}) is kept"
            if last_checkpoint is not None
            else "no checkpoint had been verified yet"
        )
        raise NonFiniteLossError(
            f"Non-finite loss or parameters at step {step}: {described}; {kept}. "
            "Lower the learning rate or the loss weights and rerun."
        )


def check_param_norm_growth(
    step: int,
    param_norm: float,
    reference: tuple[int, float] | None,
    max_growth: float,
    last_checkpoint: int | None,
) -> None:
    """Raise :class:`ParameterNormGrowthError` when ``param_norm`` exceeds ``max_growth``
    times the norm at ``reference = (its step, its norm)``; ``max_growth = 0``: off."""
    if not max_growth or reference is None:
        return
    reference_step, reference_norm = reference
    if param_norm <= max_growth * reference_norm:
        return
    kept = (
        f"the last verified checkpoint (step {last_checkpoint}) is kept"
        if last_checkpoint is not None
        else "no checkpoint had been verified yet"
    )
    raise ParameterNormGrowthError(
        f"The parameter norm grew from {reference_norm:.6g} (step {reference_step}) to "
        f"{param_norm:.6g} at step {step}: x{param_norm / reference_norm:.2f}, more than "
        f"config.guards.max_param_norm_growth = {max_growth} within one logging interval; "
        f"{kept}. Lower the learning rate or the loss weights (or set "
        "config.*.optimizer.clip_grad_norm) and rerun."
    )


def calibration_ratio_warning(
    parts: dict[str, float], weights: losses.LossWeights, max_ratio: float
) -> str | None:
    """The warning when ``beta * calibration`` exceeds ``max_ratio`` times ``gamma * CE``
    (None when it does not, or when ``max_ratio`` is 0)."""
    calibration_term = weights.beta * parts.get("calibration", 0.0)
    ce_term = weights.gamma * parts["ce"]
    if not max_ratio or calibration_term <= max_ratio * abs(ce_term):
        return None
    ratio = calibration_term / abs(ce_term) if ce_term else float("inf")
    return (
        f"warning: at the first step beta * calibration = {weights.beta:g} * "
        f"{parts['calibration']:.6g} = {calibration_term:.6g} is {ratio:.1f}x the CE term "
        f"(gamma * CE = {ce_term:.6g}), more than config.guards.max_calibration_ratio = "
        f"{max_ratio:g}. The calibration term dominates the gradients: consider a lower "
        "config.loss.beta or config.student.optimizer.clip_grad_norm."
    )
