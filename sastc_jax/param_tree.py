"""The parameter tree of a distillation run: ``{'student': ..., 'calibration': ...}``.

The train state of the distillation stage holds the student's parameters under
``'student'`` and, for a method with a feature calibration, the calibration module's
under ``'calibration'``; the teacher stage's state holds the teacher's parameters as
they are. The tree is built and read here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STUDENT, CALIBRATION = "student", "calibration"


def distillation_params(student: Any, calibration: Any | None = None) -> dict[str, Any]:
    """The tree of a distillation run (no ``'calibration'`` entry when ``None``)."""
    params = {STUDENT: student}
    if calibration is not None:
        params[CALIBRATION] = calibration
    return params


def student_params(params: Mapping[str, Any]) -> Any:
    return params[STUDENT]


def calibration_params(params: Mapping[str, Any]) -> Any | None:
    """The calibration module's parameters, ``None`` for a method without one."""
    return params.get(CALIBRATION)


def model_params(params: Mapping[str, Any]) -> Any:
    """The trained model's parameters: the student's in a distillation tree, else the
    tree itself (a teacher's)."""
    return params.get(STUDENT, params)


def inference_variables(params: Mapping[str, Any], batch_stats: Any) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of the trained model, as its ``apply`` takes them."""
    return {"params": model_params(params), "batch_stats": batch_stats}
