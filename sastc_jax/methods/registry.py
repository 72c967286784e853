"""The registry of distillation methods: each method is a named composition of loss terms.

A :class:`Method` declares its :class:`Term` s, the :class:`~sastc_jax.calibration.Strategy`
of its feature calibration (``None`` without one) and, when the shared weights of
:class:`LossWeights` do not fit it, a :class:`WeightSection` of its own
(``config.loss.<section>``, its defaults in the method's module). Every term reads the
student's per-step logits ``(T, B, K)`` and the labels ``(B,)``, and what it declares it
needs: the teacher's logits ``(B, K)``, the calibration loss (a scalar).

:func:`register_method` adds a method; everything that depends on the method (the
distillation set-up, the objective, the config's validation, the comparison) asks
:func:`get_method`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sastc_jax.calibration import Strategy

Array = jax.Array
# The inputs a term may need beyond the logits and the labels.
TEACHER_LOGITS, CALIBRATION = "teacher_logits", "calibration"
# The parts every method reports (0 when it has no such term): runs of different methods
# log the same columns.
REPORTED_PARTS = ("ce", "kd", "calibration")


class LossWeights(NamedTuple):
    """The weights of ``config.loss``.

    The shared ones: ``gamma`` (the cross-entropy term), ``alpha_kd`` and ``temperature``
    (tau_kd) of the KD term, which distils the logits of ``kd_target`` (``'mean'`` or
    ``'per_step'``, :func:`~sastc_jax.methods.terms.kd_loss`), ``beta`` (the calibration
    term). ``sections``: the weights of methods that have their own
    (:class:`WeightSection`), by section name, e.g. ``{'tdkd': {'alpha': 0.5}}``; a field
    not given there takes the method's default.
    """

    gamma: float = 1.0
    alpha_kd: float = 1.0
    beta: float = 800.0
    temperature: float = 4.0
    kd_target: str = "mean"
    sections: Mapping[str, Mapping[str, Any]] = types.MappingProxyType({})

    @classmethod
    def from_config(cls, loss_config: Mapping[str, Any]) -> LossWeights:
        """The weights of ``config.loss``: its shared fields and the sections of the
        registered methods; its other fields (the attention scale) are not weights."""
        shared = [field for field in cls._fields if field != "sections"]
        sections = {
            section.name: dict(loss_config[section.name])
            for section in weight_sections()
            if section.name in loss_config
        }
        return cls(
            **{field: loss_config[field] for field in shared if field in loss_config},
            sections=types.MappingProxyType(sections),
        )


DEFAULT_WEIGHTS = LossWeights()


@dataclasses.dataclass(frozen=True)
class WeightSection:
    """A method's own weights, set in ``config.loss.<name>``: the fields of ``fields`` (a
    ``NamedTuple`` class), whose defaults are the method's."""

    name: str
    fields: type

    def defaults(self) -> dict[str, Any]:
        return self.fields()._asdict()

    def read(self, weights: LossWeights) -> Any:
        """This section's weights: those of ``weights.sections``, else the defaults."""
        return self.fields(**weights.sections.get(self.name, {}))


class TermInputs(NamedTuple):
    """What a term reads: the student's logits ``(T, B, K)``, the labels ``(B,)``, the
    teacher's logits ``(B, K)`` and the calibration loss (both ``None`` when unused)."""

    logits: Array
    labels: Array
    teacher_logits: Array | None
    calibration: Array | None


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted term of a method's loss, reported as ``parts[name]``.

    ``value(inputs, weights)`` is the unweighted scalar, ``weight(weights)`` its factor
    in the loss; ``needs`` names what it reads beyond the logits and the labels
    (:data:`TEACHER_LOGITS`, :data:`CALIBRATION`).
    """

    name: str
    value: Callable[[TermInputs, LossWeights], Array]
    weight: Callable[[LossWeights], float]
    needs: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method: its loss is ``sum_k weight_k * term_k`` over ``terms``, in order.

    ``calibration``: the strategy of its feature calibration (the one term that needs
    :data:`CALIBRATION`); ``own_weights``: its section of ``config.loss``, if it has one.
    """

    name: str
    terms: tuple[Term, ...]
    calibration: Strategy | None = None
    own_weights: WeightSection | None = None

    @property
    def needs_teacher_logits(self) -> bool:
        return any(TEACHER_LOGITS in term.needs for term in self.terms)

    @property
    def needs_teacher(self) -> bool:
        """Whether it distils from a teacher (its logits, or its taps for a calibration)."""
        return self.needs_teacher_logits or self.calibration is not None

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def term_weights(self, weights: LossWeights) -> dict[str, float]:
        """``{part name: its weight in the loss}`` for these weights."""
        return {term.name: term.weight(weights) for term in self.terms}

    def loss(
        self,
        student_logits: Array,
        labels: Array,
        *,
        teacher_logits: Array | None = None,
        calibration: Array | None = None,
        weights: LossWeights = DEFAULT_WEIGHTS,
    ) -> tuple[Array, dict[str, Array]]:
        """``(loss, parts)``: ``parts`` has :data:`REPORTED_PARTS` (0 without such a
        term), every term of the method by name, and ``loss``."""
        if self.needs_teacher_logits and teacher_logits is None:
            raise ValueError(f"Method {self.name!r} distils from a teacher: pass teacher_logits.")
        if self.calibrated and calibration is None:
            raise ValueError(f"Method {self.name!r} needs the calibration loss: pass calibration.")
        inputs = TermInputs(student_logits, labels, teacher_logits, calibration)
        zero = jnp.zeros((), jnp.float32)
        parts = dict.fromkeys(REPORTED_PARTS, zero)
        loss = None
        for term in self.terms:
            parts[term.name] = term.value(inputs, weights)
            weighted = term.weight(weights) * parts[term.name]
            loss = weighted if loss is None else loss + weighted
        parts["loss"] = loss
        return loss, parts


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` under its name; ``ValueError`` for a name taken, terms that share a
    part name, or a calibration term without a strategy (or the reverse)."""
    if method.name in _METHODS:
        raise ValueError(f"A method named {method.name!r} is already registered.")
    names = [term.name for term in method.terms]
    if not names or len(set(names)) != len(names) or "loss" in names:
        raise ValueError(
            f"Method {method.name!r} needs terms with distinct names other than 'loss'; "
            f"got {names}."
        )
    calibration_terms = [term.name for term in method.terms if CALIBRATION in term.needs]
    if bool(calibration_terms) != method.calibrated:
        raise ValueError(
            f"Method {method.name!r} has calibration terms {calibration_terms} and "
            f"calibration strategy {method.calibration}: a calibration term needs a "
            "strategy, and a strategy a term."
        )
    _METHODS[method.name] = method
    return method


def get_method(name: str | Method) -> Method:
    """The registered method of this name (a :class:`Method` is returned as it is)."""
    if isinstance(name, Method):
        return name
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {method_names()}.")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(_METHODS)


def calibrated_method_names() -> tuple[str, ...]:
    """The registered methods that have a feature calibration."""
    return tuple(name for name, method in _METHODS.items() if method.calibrated)


def part_names() -> tuple[str, ...]:
    """Every part a registered method reports: :data:`REPORTED_PARTS`, then the others."""
    names = dict.fromkeys(REPORTED_PARTS)
    for method in _METHODS.values():
        names.update(dict.fromkeys(term.name for term in method.terms))
    return tuple(names)


def weight_sections() -> tuple[WeightSection, ...]:
    """The distinct sections of ``config.loss`` that registered methods read."""
    sections = {m.own_weights.name: m.own_weights for m in _METHODS.values() if m.own_weights}
    return tuple(sections.values())
