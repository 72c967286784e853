"""Distillation methods, registered by name (:mod:`sastc_jax.methods.registry`).

A method is a composition of loss terms (:mod:`sastc_jax.methods.terms`) with, when it
has one, a feature calibration strategy and its own weights. Adding one is one module
that calls :func:`register_method`, imported below:

- :mod:`~sastc_jax.methods.sastc`: ``ce``, ``kd``, ``layerwise``, ``spatial``, ``sastc``;
- :mod:`~sastc_jax.methods.tdkd`: ``tdkd``, ``sastc_tdkd``.
"""

from sastc_jax.methods import sastc as _sastc  # noqa: F401  (registers its methods)
from sastc_jax.methods import tdkd as _tdkd  # noqa: F401
from sastc_jax.methods.registry import (
    DEFAULT_WEIGHTS,
    REPORTED_PARTS,
    LossWeights,
    Method,
    Term,
    TermInputs,
    WeightSection,
    calibrated_method_names,
    get_method,
    method_names,
    part_names,
    register_method,
    weight_sections,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "REPORTED_PARTS",
    "LossWeights",
    "Method",
    "Term",
    "TermInputs",
    "WeightSection",
    "calibrated_method_names",
    "get_method",
    "method_names",
    "part_names",
    "register_method",
    "weight_sections",
]
